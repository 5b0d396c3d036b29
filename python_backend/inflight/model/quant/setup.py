"""Attach linear methods to a built model, and route KV-cache scale tensors.

Every Linear inside the decoder layers gets the spec's method unless the checkpoint's ignore
list names it; ``lm_head`` and the embeddings keep the checkpoint dtype. A quantized layer
drops its float ``weight`` (the method registers its own tensors when the loader hands them
over), so the loader's bookkeeping sees exactly what the checkpoint must provide.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from inflight.model.layers import Linear
from inflight.model.quant.config import QuantSpec

# checkpoint suffixes of per-layer KV-cache scales: vLLM/compressed-tensors write
# self_attn.{k,v}_scale, ModelOpt self_attn.{k,v}_proj.{k,v}_scale, older exports kv_scale
KV_SCALE_SUFFIXES = ("k_scale", "v_scale", "kv_scale")


def kv_scale_target(name: str) -> tuple[str, str] | None:
    """``model.layers.3.self_attn.k_proj.k_scale`` -> (``model.layers.3.self_attn``, ``k``)."""
    head, _, leaf = name.rpartition(".")
    if leaf not in KV_SCALE_SUFFIXES or ".self_attn" not in head:
        return None
    attn = head[: head.index(".self_attn") + len(".self_attn")]
    return attn, leaf[: -len("_scale")]


def checkpoint_parts(model: nn.Module, module_name: str) -> dict[str | None, str]:
    """Fused module -> {part id: checkpoint module name}; an unfused one -> {None: its name}."""
    from inflight.model.llama import STACKED_PARAMS

    prefix, _, leaf = module_name.rpartition(".")
    if leaf in STACKED_PARAMS:
        return {shard: f"{prefix}.{ckpt}" for ckpt, shard in STACKED_PARAMS[leaf]}
    return {None: module_name}


def quantize_model(model: nn.Module, spec: QuantSpec, device: torch.device,
                   dtype: torch.dtype) -> dict[str, Linear]:
    """Give each quantized Linear its method; returns {module name: layer}."""
    if spec.kind == "int4" and spec.source == "on load":
        spec = dataclasses.replace(spec, group_size=fit_group(
            spec.group_size, [m.in_features for n, m in model.named_modules()
                              if isinstance(m, Linear) and ".layers." in f".{n}"]))
    out: dict[str, Linear] = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, Linear) or ".layers." not in f".{name}":
            continue
        names = checkpoint_parts(model, name)
        if spec.ignored(list(names.values())):
            continue
        owner = model.get_submodule(name.rpartition(".")[0])
        mod.parts = owner.shard_offsets() if None not in names else None  # type: ignore[operator]
        mod.quant = spec.method()
        mod.quant_device, mod.quant_dtype = device, dtype
        mod.weight = None  # type: ignore[assignment]  # the method's buffers replace it
        out[name] = mod
    return out


def fit_group(group: int, in_features: list[int]) -> int:
    """The largest power of two <= ``group`` dividing every input size (one group size per
    model, as the AWQ format has): 128 for real models, smaller for tiny test models."""
    while group > 8 and any(k % group for k in in_features):
        group //= 2
    return group
