"""Quantized linear methods (FP8 W8A8, INT4 w4a16) and the FP8 KV cache: one method object per
weight format, chosen at load from ``quantization=`` and the checkpoint (docs/quantization.md)."""

from __future__ import annotations

from inflight.model.quant.base import LinearMethod
from inflight.model.quant.config import QuantSpec, check_device, detect, resolve
from inflight.model.quant.setup import KV_SCALE_SUFFIXES, kv_scale_target, quantize_model

__all__ = ["KV_SCALE_SUFFIXES", "LinearMethod", "QuantSpec", "check_device", "detect",
           "kv_scale_target", "quantize_model", "resolve"]
