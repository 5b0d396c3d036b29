"""Which quantization a model runs with: the ``quantization=`` option and the checkpoint.

Detected from the checkpoint directory, never from extra flags:
- ``config.json`` ``quantization_config.quant_method == "compressed-tensors"``:
  ``format`` ``float-quantized`` (FP8, weight strategy tensor/channel, static or dynamic input
  activations) or ``pack-quantized`` (INT4 W4A16, group strategy); ``ignore`` lists layers
  kept in the checkpoint dtype; ``kv_cache_scheme`` turns on the FP8 KV cache.
- ``hf_quant_config.json`` (NVIDIA ModelOpt): ``quantization.quant_algo == "FP8"``,
  ``kv_cache_quant_algo``, ``exclude_modules``.
- ``config.json`` ``quantization_config.quant_method == "awq"`` (AutoAWQ GEMM, 4 bits).
``quantization=fp8`` / ``awq`` on a float checkpoint quantizes while loading.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from inflight.errors import ConfigError
from inflight.model.quant.base import LinearMethod
from inflight.model.quant.fp8 import Fp8LinearMethod
from inflight.model.quant.int4 import Int4LinearMethod

SUPPORTED_METHODS = ("compressed-tensors (float-quantized FP8, pack-quantized W4A16)",
                     "modelopt (FP8)", "awq (4-bit GEMM)")
DEFAULT_GROUP = 128
_NAMES = {("compressed-tensors", "fp8"): "compressed-tensors FP8", ("modelopt", "fp8"): "ModelOpt FP8",
          ("awq", "int4"): "AutoAWQ INT4", ("compressed-tensors", "int4"): "compressed-tensors W4A16",
          ("float", "fp8"): "FP8 (quantized on load)", ("float", "int4"): "AWQ INT4 (quantized on load)"}


@dataclass(frozen=True)
class QuantSpec:
    """The resolved quantization of one model (None in the runner means unquantized)."""

    option: str  # the quantization= value it satisfies: fp8 | awq | compressed-tensors | modelopt
    kind: str  # fp8 | int4
    source: str  # "checkpoint" or "on load"
    checkpoint_format: str  # float | compressed-tensors | modelopt | awq
    static_input: bool = False  # fp8: per-tensor input scales from the checkpoint
    weight_strategy: str = "channel"
    group_size: int = DEFAULT_GROUP
    zero_point: bool = True
    ignore: tuple[str, ...] = ()
    kv_cache_fp8: bool = False  # the checkpoint asks for an FP8 KV cache (and may carry scales)

    def method(self) -> LinearMethod:
        name = _NAMES[(self.checkpoint_format, self.kind)]
        from_ckpt = self.source == "checkpoint"
        if self.kind == "fp8":
            return Fp8LinearMethod(name, from_ckpt, self.static_input, self.weight_strategy)
        fmt = "awq" if self.checkpoint_format in ("awq", "float") else "ct"
        return Int4LinearMethod(name, fmt, self.group_size, self.zero_point, from_ckpt)

    def ignored(self, checkpoint_names: list[str]) -> bool:
        """Whether the layer(s) (checkpoint module names, e.g. ``model.layers.0.self_attn.q_proj``)
        stay unquantized. Parts of one fused layer must agree."""
        hits = [any(_matches(n, pat) for pat in self.ignore) for n in checkpoint_names]
        if any(hits) and not all(hits):
            raise ConfigError(
                f"the checkpoint quantizes only some of {checkpoint_names}, which inflight fuses "
                "into one layer; quantize all of them or none")
        return bool(hits and hits[0])


def _matches(name: str, pattern: str) -> bool:
    """compressed-tensors: a module name, ``re:REGEX`` or a class name (Linear); ModelOpt:
    fnmatch wildcards."""
    if pattern.startswith("re:"):
        return re.match(pattern[3:], name) is not None
    return name == pattern or name.endswith("." + pattern) or fnmatch.fnmatchcase(name, pattern)


def _read_json(path: str) -> dict[str, Any] | None:
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    return data if isinstance(data, dict) else None


def detect(model_dir: str) -> QuantSpec | None:
    """The checkpoint's own quantization, or None for a float checkpoint."""
    modelopt = _read_json(os.path.join(model_dir, "hf_quant_config.json"))
    if modelopt is not None:
        return _modelopt(modelopt)
    raw = (_read_json(os.path.join(model_dir, "config.json")) or {}).get("quantization_config")
    if not raw:
        return None
    method = str(raw.get("quant_method", ""))
    if method == "compressed-tensors":
        return _compressed_tensors(raw)
    if method == "awq":
        return _awq(raw)
    if method == "modelopt":  # transformers copies hf_quant_config.json into config.json
        return _modelopt({"quantization": raw})
    raise ConfigError(f"config.json quantization_config.quant_method {method!r} is not supported; "
                      f"supported: {', '.join(SUPPORTED_METHODS)}")


def _modelopt(raw: dict[str, Any]) -> QuantSpec:
    q = raw.get("quantization", raw)
    algo = str(q.get("quant_algo") or "")
    if algo.upper() != "FP8":
        raise ConfigError(f"hf_quant_config.json quant_algo {algo!r} is not supported; "
                          "supported: FP8 (per-tensor weight and input scales)")
    kv = q.get("kv_cache_quant_algo")
    if kv not in (None, "FP8", "fp8"):
        raise ConfigError(f"hf_quant_config.json kv_cache_quant_algo {kv!r} is not supported; "
                          "supported: FP8 or none")
    return QuantSpec(option="modelopt", kind="fp8", source="checkpoint",
                     checkpoint_format="modelopt", static_input=True, weight_strategy="tensor",
                     ignore=tuple(q.get("exclude_modules") or ()), kv_cache_fp8=kv is not None)


def _compressed_tensors(raw: dict[str, Any]) -> QuantSpec:
    fmt = raw.get("format")
    groups = list((raw.get("config_groups") or {}).values())
    if len(groups) != 1:
        raise ConfigError(f"compressed-tensors: {len(groups)} config_groups; inflight supports "
                          "exactly one scheme for all Linear layers")
    weights = groups[0].get("weights") or {}
    acts = groups[0].get("input_activations")
    bits, wtype, strategy = weights.get("num_bits"), weights.get("type"), weights.get("strategy")
    kv = raw.get("kv_cache_scheme") is not None
    ignore = tuple(raw.get("ignore") or ())
    if fmt == "float-quantized" and bits == 8 and wtype == "float":
        if strategy not in ("tensor", "channel"):
            raise ConfigError(f"compressed-tensors float-quantized weight strategy {strategy!r} is "
                              "not supported; supported: tensor, channel")
        static = bool(acts) and not acts.get("dynamic", False)
        if acts and acts.get("dynamic") and acts.get("strategy") not in ("token", "tensor", None):
            raise ConfigError(f"compressed-tensors input_activations strategy "
                              f"{acts.get('strategy')!r} is not supported; supported: token, tensor")
        return QuantSpec(option="compressed-tensors", kind="fp8", source="checkpoint",
                         checkpoint_format="compressed-tensors", static_input=static,
                         weight_strategy=strategy, ignore=ignore, kv_cache_fp8=kv)
    if fmt == "pack-quantized" and bits == 4 and wtype == "int" and not acts:
        if strategy != "group":
            raise ConfigError(f"compressed-tensors pack-quantized weight strategy {strategy!r} is "
                              "not supported; supported: group")
        if weights.get("actorder"):
            raise ConfigError("compressed-tensors pack-quantized with actorder is not supported")
        return QuantSpec(option="compressed-tensors", kind="int4", source="checkpoint",
                         checkpoint_format="compressed-tensors",
                         group_size=int(weights.get("group_size") or DEFAULT_GROUP),
                         zero_point=not weights.get("symmetric", True), ignore=ignore,
                         weight_strategy="group", kv_cache_fp8=kv)
    raise ConfigError(
        f"compressed-tensors format {fmt!r} with {bits}-bit {wtype} weights is not supported; "
        "supported: float-quantized (8-bit float weights, FP8) and pack-quantized (4-bit int "
        "weights, 16-bit activations)")


def _awq(raw: dict[str, Any]) -> QuantSpec:
    bits = raw.get("bits", raw.get("w_bit"))
    version = str(raw.get("version", "gemm")).lower()
    if bits != 4 or version != "gemm":
        raise ConfigError(f"awq with bits={bits} version={version!r} is not supported; "
                          "supported: 4 bits, GEMM packing")
    return QuantSpec(option="awq", kind="int4", source="checkpoint", checkpoint_format="awq",
                     group_size=int(raw.get("group_size", raw.get("q_group_size", DEFAULT_GROUP))),
                     zero_point=bool(raw.get("zero_point", True)), weight_strategy="group",
                     ignore=tuple(raw.get("modules_to_not_convert") or ()))


def resolve(option: str, model_dir: str, load_format: str = "auto") -> QuantSpec | None:
    """``quantization=`` (EngineConfig) + the checkpoint -> the spec, or None (unquantized)."""
    found = detect(model_dir)
    if found is not None:
        if option in ("auto", found.option) or (option == "fp8" and found.kind == "fp8") or (
                option == "awq" and found.kind == "int4" and found.checkpoint_format == "awq"):
            return found
        raise ConfigError(
            f"quantization={option} conflicts with the checkpoint in {model_dir!r}, which is "
            f"{found.checkpoint_format} {found.kind}; use quantization=auto (or {found.option})")
    if option in ("auto", "none"):
        return None
    if option == "fp8":
        return QuantSpec(option="fp8", kind="fp8", source="on load", checkpoint_format="float")
    if option == "awq":
        return QuantSpec(option="awq", kind="int4", source="on load", checkpoint_format="float")
    raise ConfigError(f"quantization={option} needs a {option} checkpoint, but {model_dir!r} "
                      "declares no quantization_config; use fp8 or awq to quantize while loading")


def check_device(spec: QuantSpec | None, kv_fp8: bool, device_type: str,
                 capability: tuple[int, int] | None) -> None:
    """FP8 math (weights/activations, the FP8 KV cache kernels) needs FP8 tensor cores:
    compute capability >= 8.9 (Ada, Hopper, Blackwell). The CPU emulates it."""
    if device_type != "cuda" or capability is None or capability >= (8, 9):
        return
    what = [w for w, on in (("quantization=fp8", spec is not None and spec.kind == "fp8"),
                            ("kv_cache_dtype=fp8", kv_fp8)) if on]
    if what:
        raise ConfigError(
            f"{' and '.join(what)} needs a GPU with FP8 tensor cores (compute capability >= 8.9: "
            f"Ada, Hopper, Blackwell); this GPU is sm_{capability[0]}{capability[1]}. Supported "
            "here: quantization=awq (INT4 weight-only) or no quantization")
