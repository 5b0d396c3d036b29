"""`inflight repo build|fill`: write a ready Triton model repository from the templates.

Layouts: ``ensemble`` (preprocessing, engine, postprocessing, ensemble and bls) or ``llm``
(one model, tokenizer inside). Parameters use the TensorRT-LLM backend names; a ``${key}``
left unfilled means "default"; an unknown key is an error listing the known ones.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import re
import shutil
import sys
from typing import Any

from inflight.config import ModelConfig, parse_bool
from inflight.errors import ConfigError, did_you_mean
from inflight.frontends.triton.contract import ENGINE_PARAMS, shim_text
from inflight.frontends.triton.params import load_config, raw_parameters
from inflight.model_source import resolve_model

LAYOUTS = {"ensemble": ["preprocessing", "engine", "postprocessing", "ensemble", "bls", "ensemble_unary"],
           "llm": ["llm"]}
# --profile: whose names and defaults the repository speaks (docs/compatibility.md)
PROFILES = {"inflight": {"ensemble", "llm"}, "trtllm": {"ensemble"}, "vllm": {"llm"}}
DEFAULT_LAYOUT = {"inflight": "ensemble", "trtllm": "ensemble", "vllm": "llm"}
TRTLLM_MODELS = ["preprocessing", "tensorrt_llm", "postprocessing", "ensemble", "tensorrt_llm_bls",
                 "ensemble_unary"]
# a profile's defaults where they differ from inflight's (the user's --set wins)
# (the trtllm queue policy's values default as the peer's fill_template.py fills them: 0, 0)
PROFILE_DEFAULTS = {"trtllm": {"exclude_input_in_output": "false", "engine_model": "tensorrt_llm",
                               "max_queue_size": "0", "max_queue_delay_microseconds": "0"}}
SERVER_KEYS = ["triton_max_batch_size", "instance_count", "preprocessing_model", "engine_model",
               "postprocessing_model", "add_special_tokens", "skip_special_tokens",
               "REPORT_CUSTOM_METRICS", "max_queue_delay_microseconds"]
DEFAULTS = {"triton_max_batch_size": "64", "instance_count": "1", "decoupled_mode": "true"}
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


def known_keys() -> list[str]:
    return sorted(set(ENGINE_PARAMS) | set(SERVER_KEYS))


def templates_dir() -> str:
    return str(importlib.resources.files("inflight.model_repository"))


# TensorRT-LLM's spellings accepted by `--set`, written into the repository under ours
ALIASES = {"tp_size": "tensor_parallel_size", "gpt_model_path": "model_path"}


def canonical(values: dict[str, str]) -> dict[str, str]:
    """``tp_size`` -> ``tensor_parallel_size`` (and the other :data:`ALIASES`)."""
    return {ALIASES.get(k, k): v for k, v in values.items()}


def parse_sets(pairs: list[str]) -> dict[str, str]:
    """``--set key=value`` pairs -> {key: value}; keys are checked, values by :func:`validate`."""
    out = {}
    for p in pairs:
        if "=" not in p:
            raise ConfigError(f"--set expects key=value, got {p!r}")
        k, v = p.split("=", 1)
        k = ALIASES.get(k, k)
        _check_key(k)
        out[k] = v
    return out


def _check_key(key: str) -> None:
    if key not in known_keys():
        raise ConfigError(f"unknown --set parameter {key!r}{did_you_mean(key, known_keys())}")


def validate(values: dict[str, str]) -> None:
    """The checks model load makes (types, ranges, choices, paths that must exist) on the
    values a repository will carry, so a bad one fails now rather than at server start."""
    for key in values:
        _check_key(key)
    for key in ("triton_max_batch_size", "instance_count"):  # Triton's own, not ours
        if key in values and not (values[key].isdigit() and int(values[key]) >= 1):
            raise ConfigError(f"--set {key}={values[key]}: expected an integer >= 1")
    for key in ("max_queue_size", "max_queue_delay_microseconds"):  # also in a queue policy
        if key in values and not values[key].isdigit():
            raise ConfigError(f"--set {key}={values[key]}: expected an integer >= 0")
    engine = {k: {"string_value": v} for k, v in values.items() if k in ENGINE_PARAMS}
    load_config(raw_parameters({"parameters": engine}), source="--set")


def fill_text(text: str, values: dict[str, str]) -> str:
    """Replace ${key} with values[key]; unknown placeholders stay (= default)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def _drop_unfilled_params(text: str) -> str:
    """Remove `parameters { ... "${key}" ... }` blocks that stayed unfilled (tidier configs)."""
    return re.sub(r'parameters \{\n  key: "\w+"\n  value: \{ string_value: "\$\{\w+\}" \}\n\}\n', "", text)


def _models(profile: str, layout: str) -> dict[str, tuple[str, str | None]]:
    """{model name: (config template, shim line or None for a file to copy)}."""
    if profile == "vllm":
        from inflight.frontends.triton.contract import VLLM_SHIM, vllm_template

        return {"llm": (vllm_template(), VLLM_SHIM)}
    if profile == "trtllm":
        from inflight.frontends.triton import trtllm_contract

        tpl = trtllm_contract.templates()
        return {n: (tpl[n], trtllm_contract.SHIMS.get(n)) for n in TRTLLM_MODELS}
    src = templates_dir()
    out = {}
    for name in LAYOUTS[layout]:
        with open(os.path.join(src, name, "config.pbtxt"), encoding="utf-8") as f:
            out[name] = (f.read(), None)
    return out


def _unary(name: str, text: str) -> tuple[str, str | None]:
    """decoupled_mode=false: the model becomes unary (the engine gathers its sequences; bls
    becomes the unary front model, which calls the unary engine)."""
    text = text.replace("model_transaction_policy {\n  decoupled: true\n}\n", "")
    if name in ("bls", "tensorrt_llm_bls"):
        return text, "from inflight.frontends.triton.unary_model import TritonPythonModel"
    return text, None


def build(model: str, out: str, layout: str | None = None, values: dict[str, str] | None = None,
          force: bool = False, profile: str = "inflight") -> str:
    if profile not in PROFILES:
        raise ConfigError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    layout = layout or DEFAULT_LAYOUT[profile]
    if layout not in PROFILES[profile]:
        raise ConfigError(f"profile {profile!r} has layout(s) {sorted(PROFILES[profile])}, not {layout!r}")
    model = os.path.abspath(resolve_model(model))
    ModelConfig.from_hf(model)  # the checkpoint as model load will read it
    vals = {**DEFAULTS, **PROFILE_DEFAULTS.get(profile, {}), "model_path": model,
            "tokenizer_dir": model, "profile": profile, **canonical(values or {})}
    validate({k: v for k, v in vals.items() if k != "profile"})
    decoupled = parse_bool(vals["decoupled_mode"], "decoupled_mode", "--set")
    if os.path.exists(out) and os.listdir(out) and not force:
        raise ConfigError(f"{out!r} exists and is not empty; pass --force to overwrite")
    src = templates_dir()
    for name, (template, shim_line) in _models(profile, layout).items():
        if not decoupled and name == "ensemble_unary":
            continue  # every model is unary already
        if not decoupled:
            template, unary_shim = _unary(name, template)
            shim_line = unary_shim or shim_line
        dst = os.path.join(out, name)
        os.makedirs(os.path.join(dst, "1"), exist_ok=True)
        text = _drop_unfilled_params(fill_text(template, vals))
        with open(os.path.join(dst, "config.pbtxt"), "w", encoding="utf-8") as f:
            f.write(text)
        shim = os.path.join(src, name, "1", "model.py")
        if shim_line is not None:
            with open(os.path.join(dst, "1", "model.py"), "w", encoding="utf-8") as f:
                f.write(shim_text(shim_line))
        elif os.path.isfile(shim):
            shutil.copyfile(shim, os.path.join(dst, "1", "model.py"))
    return out


def fill_file(path: str, values: dict[str, str], in_place: bool = True) -> str:
    with open(path, encoding="utf-8") as f:
        text = fill_text(f.read(), values)
    if in_place:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    return text


def _cmd_build(a: argparse.Namespace) -> int:
    try:
        out = build(a.model, a.out, a.layout, parse_sets(a.set), a.force, a.profile)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.profile} {a.layout or DEFAULT_LAYOUT[a.profile]} repository to {out}\nstart it with: inflight serve {out}")
    return 0


def _cmd_fill(a: argparse.Namespace) -> int:
    try:
        text = fill_file(a.config, parse_sets(a.set), in_place=not a.stdout)
    except (ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.stdout:
        sys.stdout.write(text)
    return 0


def add_repo_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("repo", help="build or fill a Triton model repository",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    rs = p.add_subparsers(dest="repo_command", metavar="SUBCOMMAND", required=True)
    b = rs.add_parser("build", help="write a ready repository for a checkpoint")
    b.add_argument("--model", required=True, help="HF checkpoint directory or tiny:FAMILY")
    b.add_argument("--out", required=True, help="repository directory to write")
    b.add_argument("--layout", default=None, choices=sorted(LAYOUTS),
                   help="ensemble (the default of the inflight and trtllm profiles) or llm (one "
                   "model, tokenizer inside; the vllm profile's)")
    b.add_argument("--profile", default="inflight", choices=sorted(PROFILES),
                   help="whose contract the repository speaks: inflight (its own names and "
                   "defaults), trtllm (tensorrtllm_backend's model and tensor names, defaults "
                   "and parameters: preprocessing, tensorrt_llm, postprocessing, ensemble, "
                   "tensorrt_llm_bls), vllm (vllm_backend's llm contract and defaults: request "
                   "parameters, echo of the prompt when not streaming, max_tokens 16, return_* "
                   "outputs on every response, vllm:* metrics with REPORT_CUSTOM_METRICS=true); "
                   "docs/compatibility.md")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"fill a parameter (repeatable); known: {', '.join(known_keys())}")
    b.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    b.set_defaults(func=_cmd_build)
    f = rs.add_parser("fill", help="fill ${...} placeholders of your own config.pbtxt in place")
    f.add_argument("config", help="path to a config.pbtxt")
    f.add_argument("set", nargs="*", metavar="KEY=VALUE")
    f.add_argument("--stdout", action="store_true", help="print instead of writing in place")
    f.set_defaults(func=_cmd_fill)
    return p
