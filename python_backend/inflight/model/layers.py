"""Building blocks shared by every decoder family.

Hot ops dispatch to the OpenAI-Triton kernels on CUDA when they are available and fall back
to the torch reference otherwise (CPU, or ``INFLIGHT_ATTENTION_BACKEND=torch``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from inflight.config import RopeConfig

if TYPE_CHECKING:  # model.quant imports this module (its linear methods attach to Linear)
    from inflight.model.quant.fp8_activation import Fp8Activation, Fp8Quantizer


def _triton_ops(x: torch.Tensor):  # type: ignore[no-untyped-def]
    """The kernels module when x lives on CUDA and kernels import; else None."""
    if not x.is_cuda or not KernelSwitch.enabled:
        return None
    try:
        from inflight import kernels
    except Exception:  # pragma: no cover - triton missing on a CUDA box
        return None
    return kernels


class KernelSwitch:
    """Process-wide switch: the torch reference path stays selectable for debugging."""

    enabled = True


class _GemvChoice:
    """Per (rows, out, in, dtype): whether the GEMV kernel beats cuBLAS, timed once on the
    first such call outside CUDA-graph capture (the engine's warm-up runs make that call)."""

    faster: dict[tuple[int, int, int, torch.dtype], bool] = {}

    @classmethod
    def use(cls, x: torch.Tensor, weight: torch.Tensor, kernels) -> bool:  # type: ignore[no-untyped-def]
        key = (x.shape[0], weight.shape[0], weight.shape[1], x.dtype)
        hit = cls.faster.get(key)
        if hit is not None:
            return hit
        if torch.cuda.is_current_stream_capturing():
            return False  # never time inside a capture; graphs are captured after warm-up
        times = []
        for fn in (lambda: kernels.gemv(x, weight), lambda: F.linear(x, weight)):
            fn()  # warm up (the GEMV autotunes on its first call)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(10):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        cls.faster[key] = times[0] < 0.97 * times[1]
        return cls.faster[key]


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear, except decode-sized calls (<= 4 rows, fp16/bf16, CUDA, no bias) run the GEMV
    kernel for the shapes where it is faster than cuBLAS on this GPU."""
    k = _triton_ops(x)
    if (k is not None and bias is None and x.dim() == 2 and x.shape[0] <= 4
            and x.dtype in (torch.float16, torch.bfloat16) and x.stride(1) == 1
            and _GemvChoice.use(x, weight, k)):
        return k.gemv(x, weight)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear through :func:`linear` (same parameters and checkpoint names), or through a
    quantized linear method (``quant``, set at load by ``model.quant.quantize_model``), which
    then owns the layer's weight tensors."""

    quant: Any = None  # a model.quant LinearMethod, or None: the float weight
    parts: dict[str, tuple[int, int]] | None = None  # fused parts: id -> (first row, rows)

    def forward(self, x: torch.Tensor | Fp8Activation) -> torch.Tensor:
        """x: [..., in], or an Fp8Activation this layer asked for (:meth:`input_quantizer`)."""
        if self.quant is not None:
            return self.quant.apply(self, x, self.bias)  # type: ignore[no-any-return]
        assert isinstance(x, torch.Tensor), "a float Linear never asks for FP8 input"
        return linear(x, self.weight, self.bias)

    def input_quantizer(self, x: torch.Tensor) -> Fp8Quantizer | None:
        """How this layer wants its next input handed over, asked before the op producing it
        runs (x: that op's input, [M, ...] with the rows, dtype and device of this layer's
        input): None for the 16-bit tensor, or (FP8 W8A8) a quantizer the producer applies
        in its own launch. The linear method decides."""
        if self.quant is None:
            return None
        return self.quant.input_quantizer(  # type: ignore[no-any-return]
            self, x.shape[0], x.dtype, x.device)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # same op order as transformers' LlamaRMSNorm: fp32 statistics, cast, then scale
    dtype = x.dtype
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None,
        quant: Fp8Quantizer | None = None,
    ) -> (torch.Tensor | tuple[torch.Tensor, torch.Tensor] | Fp8Activation
          | tuple[Fp8Activation, torch.Tensor]):
        """x: [T, H]. With ``residual``: returns (norm(x + residual), x + residual). With
        ``quant`` (the consumer's request, :meth:`Linear.input_quantizer`) the norm comes back
        as an Fp8Activation, quantized in the norm kernel's launch."""
        if quant is None:
            return self._norm(x, residual)
        fuse = _triton_ops(x) is not None and x.dim() == 2
        return quant.rms_norm(x, residual, self.weight, self.eps,
                              lambda: self._norm(x, residual), fuse)

    def _norm(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        k = _triton_ops(x)
        if residual is None:
            if k is not None and x.dim() == 2:
                return k.rms_norm(x, self.weight, self.eps)
            return rms_norm_ref(x, self.weight, self.eps)
        if k is not None:
            return k.add_rms_norm(x, residual, self.weight, self.eps)
        residual = x + residual
        return rms_norm_ref(residual, self.weight, self.eps), residual


def silu_and_mul(x: torch.Tensor, quant: Fp8Quantizer | None = None
                 ) -> torch.Tensor | Fp8Activation:
    """x: [T, 2I] -> [T, I]; with ``quant`` (the consumer's request) an Fp8Activation,
    quantized in the kernel's launch."""
    if quant is not None:
        return quant.silu_and_mul(x, lambda: _silu_and_mul(x), _triton_ops(x) is not None)
    return _silu_and_mul(x)


def _silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    k = _triton_ops(x)
    if k is not None:
        return k.silu_and_mul(x)
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def rope_inv_freq(cfg: RopeConfig, head_dim: int) -> torch.Tensor:
    """Inverse frequencies [D/2] (float32), with llama3 / linear scaling as transformers does."""
    inv = 1.0 / (cfg.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if cfg.rope_type == "linear":
        return inv / cfg.factor
    if cfg.rope_type != "llama3":
        return inv
    low_wavelen = cfg.original_max_position / cfg.low_freq_factor
    high_wavelen = cfg.original_max_position / cfg.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / cfg.factor, inv)
    smooth = (cfg.original_max_position / wavelen - cfg.low_freq_factor) / (
        cfg.high_freq_factor - cfg.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / cfg.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Neox-style rotary embedding (rotate_half), as Hugging Face Llama/Qwen/Mistral."""

    def __init__(self, cfg: RopeConfig, head_dim: int, max_positions: int) -> None:
        super().__init__()
        self.head_dim = head_dim
        inv = rope_inv_freq(cfg, head_dim)
        t = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(t, inv)  # [P, D/2]
        # cos_sin_cache: [P, D] = cos half | sin half. A plain attribute, not a buffer, so
        # model.to(bfloat16) leaves it in fp32 (it is built on the model's device).
        self.cos_sin_cache = torch.cat([freqs.cos(), freqs.sin()], -1)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [T]; q [T, Hq, D]; k [T, Hkv, D] -> rotated (q, k)."""
        kern = _triton_ops(q)
        if kern is not None:
            return kern.rotary_embedding(positions, q, k, self.cos_sin_cache)
        cos, sin = self.cos_sin_cache[positions].chunk(2, dim=-1)  # [T, D/2] each
        cos = torch.cat([cos, cos], -1)[:, None, :]
        sin = torch.cat([sin, sin], -1)[:, None, :]
        return _apply(q, cos, sin), _apply(k, cos, sin)


def _apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # transformers casts cos/sin to the activation dtype before multiplying
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], -1) * sin
