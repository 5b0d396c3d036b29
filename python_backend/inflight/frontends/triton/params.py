"""config.pbtxt parameters -> engine and serving settings.

Names follow the TensorRT-LLM backend where one exists; an unfilled ``${...}`` or an empty
value means "use the default".
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from inflight.config import EngineConfig, parse_bool
from inflight.errors import ConfigError, did_you_mean

# TensorRT-LLM backend names that differ from EngineConfig fields
# EngineConfig field -> its parameter name (the TensorRT-LLM backend's, where it differs)
PARAMETER_NAMES = {"model": "model_path", "tokenizer": "tokenizer_dir", "block_size": "tokens_per_block"}
# parameter name -> EngineConfig field (gpt_model_path: the peer's older name of model_path)
_RENAMES = {"gpt_model_path": "model", "tp_size": "tensor_parallel_size", **{v: k for k, v in PARAMETER_NAMES.items()}}
# ServingConfig fields that are test-only knobs: accepted, never written into a template
TEST_ONLY_KEYS = ("fault_injection_step", "fault_injection_step_delay_ms")
IGNORED_KEYS = {"FORCE_CPU_ONLY_INPUT_TENSORS", "add_special_tokens", "skip_special_tokens",
                "executor_worker_path", "gpt_model_type", "decoupled_mode", "profile", "engine_model",
                "REPORT_CUSTOM_METRICS"}  # the last: read by triton/metric_families.py


def _peer_only_keys() -> set[str]:
    """tensorrtllm_backend parameters with no meaning here (docs/compatibility.md): a config
    filled by that project's tools still loads."""
    from inflight.frontends.triton.trtllm_contract import PEER_ONLY_ENGINE_PARAMS

    return set(PEER_ONLY_ENGINE_PARAMS)


def raw_parameters(model_config: dict[str, Any]) -> dict[str, str]:
    """{'key': 'value'} from model_config['parameters'], dropping unfilled ${...} values.
    A Triton queue policy's ``max_queue_size`` (``dynamic_batching { default_queue_policy
    {...} }``, where tensorrtllm_backend keeps it) is the engine's ``max_queue_size`` too."""
    out = {}
    for k, v in (model_config.get("parameters") or {}).items():
        s = v.get("string_value", "") if isinstance(v, dict) else str(v)
        if s and not (s.startswith("${") and s.endswith("}")):
            out[k] = s
    queued = queue_policy_size(model_config)
    if queued is not None:
        if out.get("max_queue_size", queued) != queued:
            raise ConfigError(f"config.pbtxt parameter 'max_queue_size' ({out['max_queue_size']}) "
                              f"differs from dynamic_batching.default_queue_policy.max_queue_size "
                              f"({queued}); set one of them")
        out["max_queue_size"] = queued
    return out


def queue_policy_size(model_config: dict[str, Any]) -> str | None:
    """``dynamic_batching.default_queue_policy.max_queue_size`` as a string (Triton enforces
    it on its own queue; the engine holds its waiting requests to the same cap), or None."""
    policy = (model_config.get("dynamic_batching") or {}).get("default_queue_policy") or {}
    size = policy.get("max_queue_size")
    return None if size is None else str(int(size))


def param_bool(params: dict[str, str], key: str, default: bool) -> bool:
    """A boolean model parameter (``raw_parameters`` output); unset means ``default``."""
    raw = params.get(key)
    return default if raw is None else parse_bool(raw, key, "config.pbtxt parameter")


def trust_remote_code(params: dict[str, str]) -> bool:
    """Both keys must say yes: the model's wish and the operator's permission."""
    return param_bool(params, "trust_remote_code", False) and param_bool(
        params, "allow_trust_remote_code", False)


def _parse(key: str, typ: Any, s: str, source: str) -> Any:
    """One parameter string -> the field's type; errors quote what the user wrote."""
    t = str(typ)
    kind = next((k for k in ("bool", "int", "float") if k in t), "str")
    if kind == "bool":
        return parse_bool(s, key, source)
    try:
        return int(s) if kind == "int" else float(s) if kind == "float" else s
    except ValueError:
        what = "an integer" if kind == "int" else "a number"
        raise ConfigError(f"{source} {key}={s}: expected {what}") from None


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
    # issue 13: the engine core in its own process (auto = on: the Triton models' default)
    engine_process: str = "auto"  # auto | on | off (off: the engine thread in the stub)
    # dummy steps before ready, so kernels compile before serving: auto = on for CUDA
    warmup: str = "auto"  # auto | on | off

    def __post_init__(self) -> None:
        for name in ("engine_process", "warmup"):
            if getattr(self, name) not in ("auto", "on", "off"):
                raise ConfigError(f"{name} must be auto, on or off, got {getattr(self, name)!r}")
        for name, low in (("stream_interval", 1), ("max_beam_width", 1), ("default_max_tokens", 1),
                          ("max_inflight_requests", 0)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise ConfigError(f"{name} must be >= {low}, got {value}")


# parameter -> type, from the dataclass (types are strings: _parse reads bool/int/float in them)
SERVING_KEYS: dict[str, Any] = {f.name: f.type for f in dataclasses.fields(ServingConfig)}


def engine_fields() -> dict[str, Any]:
    return {f.name: f.type for f in dataclasses.fields(EngineConfig)}


def template_keys() -> list[str]:
    """The engine model's parameters, as a repository template lists them: every EngineConfig
    field under its parameter name, then the serving keys (test-only knobs left out). A new
    field of either dataclass appears in the templates without another edit."""
    engine = [PARAMETER_NAMES.get(f, f) for f in engine_fields()]
    serving = [k for k in SERVING_KEYS if k not in TEST_ONLY_KEYS and k not in engine]
    return engine + serving


def known_keys() -> list[str]:
    return sorted(set(engine_fields()) | set(_RENAMES) | set(SERVING_KEYS))


def parse_parameters(params: dict[str, str], repo_dir: str | None = None,
                     source: str = "config.pbtxt parameter") -> tuple[dict[str, Any], ServingConfig]:
    """-> (EngineConfig kwargs incl. 'model', ServingConfig). Unknown keys are errors;
    ``source`` names where the values came from in error messages."""
    fields = engine_fields()
    eng: dict[str, Any] = {}
    srv: dict[str, Any] = {}
    for key, s in params.items():
        if key in IGNORED_KEYS or key in _peer_only_keys():
            continue
        name = _RENAMES.get(key, key)
        if name in SERVING_KEYS:
            srv[name] = _parse(key, SERVING_KEYS[name], s, source)
        elif name in fields:
            eng[name] = _parse(key, fields[name], s, source)
        else:
            raise ConfigError(f"unknown {source} {key!r}{did_you_mean(key, known_keys())}")
    if "model" not in eng:
        raise ConfigError(f"{source} 'model_path' (the HF checkpoint directory) is required")
    for key in ("model", "tokenizer"):
        if key in eng:
            eng[key] = _safe_path(key, eng[key], repo_dir, source)
    if eng.get("trust_remote_code") and not srv.get("allow_trust_remote_code"):
        raise ConfigError("trust_remote_code requires the operator to also set allow_trust_remote_code=true")
    return eng, ServingConfig(**srv)


def load_config(params: dict[str, str], repo_dir: str | None = None,
                source: str = "config.pbtxt parameter") -> tuple[EngineConfig, ServingConfig]:
    """Every rule model load applies to the parameters, without loading anything: parse
    them, then build the (validated) EngineConfig and ServingConfig."""
    engine_kwargs, serving = parse_parameters(params, repo_dir, source)
    return EngineConfig.from_kwargs(**engine_kwargs), serving


def _safe_path(key: str, path: str, repo_dir: str | None, source: str) -> str:
    """Model paths: absolute, or relative to the repository; must be an existing directory."""
    if not os.path.isabs(path) and repo_dir:
        path = os.path.join(repo_dir, path)
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        what = "is not a directory" if os.path.exists(real) else "does not exist"
        raise ConfigError(f"{source} {PARAMETER_NAMES.get(key, key)!r}: {path!r} {what}")
    return real
