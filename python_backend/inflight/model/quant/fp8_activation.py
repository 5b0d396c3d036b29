"""The input of an FP8 W8A8 linear, quantized by the op that produces it.

A W8A8 layer multiplies e4m3 activations: per token (scale = absmax / 448) or with the
checkpoint's static ``input_scale``. Asked before its input is computed
(``Fp8LinearMethod.input_quantizer``, the one place that decides), a layer on a W8A8 path
answers with an :class:`Fp8Quantizer`; the RMSNorm or SiLU-and-mul producing that input then
writes the e4m3 rows and their scales in its own launch (kernels/rms_norm.py
``rms_norm_fp8``, kernels/silu_and_mul.py ``silu_and_mul_fp8``) and hands the layer an
:class:`Fp8Activation` instead of the 16-bit tensor: one launch instead of two, the same bytes
(the fused kernels round to the activation dtype first, as the 16-bit output would be). A
fused kernel that fails on the device falls back to the unfused pair (``KernelGuard``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from inflight.model.quant.base import KernelGuard


@dataclass(frozen=True)
class Fp8Activation:
    """An activation [M, K] as a W8A8 linear consumes it: x ~= q * scale. Filled by
    :class:`Fp8Quantizer` (a fused producer kernel or the quantization kernel alone)."""

    q: torch.Tensor  # e4m3 [M, K]
    scale: torch.Tensor  # fp32 [M, 1]: per token, or the static scale repeated per row
    dtype: torch.dtype  # the activation's own dtype: the linear's output dtype

    @property
    def shape(self) -> torch.Size:
        return self.q.shape


def quantize_activations(x: torch.Tensor, input_scale: torch.Tensor | None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (e4m3 [M, K], fp32 scales [M, 1]): per token, or the static ``input_scale``
    repeated per row; the Triton kernel, its eager formula (the kernel's torch reference) if
    that kernel failed."""
    from inflight import kernels as K

    return KernelGuard.run("fp8_quant", lambda: K.per_token_quant_fp8(x, input_scale),
                           lambda: K.per_token_quant_fp8_ref(x, input_scale))


@dataclass(frozen=True)
class Fp8Quantizer:
    """A W8A8 layer's request to the op producing its input: hand it over quantized, with the
    layer's static ``input_scale`` (fp32 []) or per-token scales (None)."""

    static_scale: torch.Tensor | None

    def quantize(self, x: torch.Tensor) -> Fp8Activation:
        """x [M, K] -> its quantization by the separate kernel (the unfused way)."""
        q, scale = quantize_activations(x, self.static_scale)
        return Fp8Activation(q, scale, x.dtype)

    def rms_norm(self, x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                 eps: float, unfused: Callable[[], torch.Tensor | tuple[torch.Tensor, torch.Tensor]],
                 fuse: bool = True) -> Fp8Activation | tuple[Fp8Activation, torch.Tensor]:
        """RMSNorm of x [T, H] (of x + residual: then also returns that sum, as
        ``add_rms_norm``) quantized in the same launch; ``unfused`` computes the 16-bit norm
        the layer would return otherwise, quantized afterwards when ``fuse`` is False or the
        fused kernel failed."""
        from inflight import kernels as K

        def fused() -> Fp8Activation | tuple[Fp8Activation, torch.Tensor]:
            if residual is None:
                return Fp8Activation(*K.rms_norm_fp8(x, weight, eps, self.static_scale), x.dtype)
            q, scale, res = K.add_rms_norm_fp8(x, residual, weight, eps, self.static_scale)
            return Fp8Activation(q, scale, x.dtype), res

        def pair() -> Fp8Activation | tuple[Fp8Activation, torch.Tensor]:
            out = unfused()
            if isinstance(out, tuple):
                return self.quantize(out[0]), out[1]
            return self.quantize(out)

        return KernelGuard.run("rms_norm_fp8", fused, pair) if fuse else pair()

    def silu_and_mul(self, x: torch.Tensor, unfused: Callable[[], torch.Tensor],
                     fuse: bool = True) -> Fp8Activation:
        """silu(gate) * up of x [T, 2I] quantized in the same launch (``unfused``: the 16-bit
        product, quantized afterwards when ``fuse`` is False or the fused kernel failed)."""
        from inflight import kernels as K

        def fused() -> Fp8Activation:
            return Fp8Activation(*K.silu_and_mul_fp8(x, self.static_scale), x.dtype)

        def pair() -> Fp8Activation:
            return self.quantize(unfused())

        return KernelGuard.run("silu_and_mul_fp8", fused, pair) if fuse else pair()
