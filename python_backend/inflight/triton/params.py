"""config.pbtxt parameters -> engine and serving settings.

Names follow the TensorRT-LLM backend where one exists; an unfilled ``${...}`` or an empty
value means "use the default".
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from ..config import EngineConfig
from ..errors import ConfigError

# TensorRT-LLM backend names that differ from EngineConfig fields
_RENAMES = {"gpt_model_path": "model", "model_path": "model", "tokenizer_dir": "tokenizer",
            "tokens_per_block": "block_size"}
SERVING_KEYS = {"stream_interval": int, "exclude_input_in_output": bool, "max_beam_width": int,
                "default_max_tokens": int, "allow_trust_remote_code": bool,
                "max_inflight_requests": int, "fault_injection_step": int,
                "fault_injection_step_delay_ms": int}
IGNORED_KEYS = {"FORCE_CPU_ONLY_INPUT_TENSORS", "add_special_tokens", "skip_special_tokens",
                "executor_worker_path", "gpt_model_type", "decoupled_mode"}


def raw_parameters(model_config: dict[str, Any]) -> dict[str, str]:
    """{'key': 'value'} from model_config['parameters'], dropping unfilled ${...} values."""
    out = {}
    for k, v in (model_config.get("parameters") or {}).items():
        s = v.get("string_value", "") if isinstance(v, dict) else str(v)
        if s and not (s.startswith("${") and s.endswith("}")):
            out[k] = s
    return out


def _parse(key: str, typ: Any, s: str) -> Any:
    t = str(typ)
    try:
        if "bool" in t:
            if s.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(s)
            return s.lower() in ("true", "1", "yes")
        if "int" in t:
            return int(s)
        if "float" in t:
            return float(s)
        return s
    except ValueError:
        raise ConfigError(f"config.pbtxt parameter {key!r}: cannot parse {s!r} as {t}") from None


@dataclass(frozen=True)
class ServingConfig:
    stream_interval: int = 1
    exclude_input_in_output: bool = True
    max_beam_width: int = 1
    default_max_tokens: int | None = None
    allow_trust_remote_code: bool = False
    max_inflight_requests: int = 0
    fault_injection_step: int = 0  # tests: honoured only with INFLIGHT_ALLOW_FAULT_INJECTION=1
    fault_injection_step_delay_ms: int = 0  # likewise


def engine_fields() -> dict[str, Any]:
    return {f.name: f.type for f in dataclasses.fields(EngineConfig)}


def known_keys() -> list[str]:
    return sorted(set(engine_fields()) | set(_RENAMES) | set(SERVING_KEYS))


def parse_parameters(params: dict[str, str], repo_dir: str | None = None
                     ) -> tuple[dict[str, Any], ServingConfig]:
    """-> (EngineConfig kwargs incl. 'model', ServingConfig). Unknown keys are errors."""
    fields = engine_fields()
    eng: dict[str, Any] = {}
    srv: dict[str, Any] = {}
    for key, s in params.items():
        if key in IGNORED_KEYS:
            continue
        name = _RENAMES.get(key, key)
        if name in SERVING_KEYS:
            srv[name] = _parse(key, SERVING_KEYS[name], s)
        elif name in fields:
            eng[name] = _parse(key, fields[name], s)
        else:
            raise ConfigError(f"unknown config.pbtxt parameter {key!r}; known: {', '.join(known_keys())}")
    if "model" not in eng:
        raise ConfigError("config.pbtxt parameter 'model_path' (the HF checkpoint directory) is required")
    for key in ("model", "tokenizer"):
        if key in eng:
            eng[key] = _safe_path(key, eng[key], repo_dir)
    if eng.get("trust_remote_code") and not srv.get("allow_trust_remote_code"):
        raise ConfigError("trust_remote_code requires the operator to also set allow_trust_remote_code=true")
    return eng, ServingConfig(**srv)


def _safe_path(key: str, path: str, repo_dir: str | None) -> str:
    """Model paths: absolute, or relative to the repository; must be an existing directory."""
    if not os.path.isabs(path) and repo_dir:
        path = os.path.join(repo_dir, path)
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        raise ConfigError(f"config.pbtxt parameter {key!r}: {path!r} is not a directory")
    return real
