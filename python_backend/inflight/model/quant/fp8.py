"""FP8 (e4m3) W8A8 linear layers: per-output-channel weight scales, per-token dynamic or
static per-tensor activation scales.

Runtime layout (one per layer, whatever the checkpoint): ``qweight`` e4m3 [N, K],
``weight_scale`` fp32 [N] (a per-tensor scale of a fused part is repeated over its rows:
per-part scales kept exactly, no requantization), ``input_scale`` fp32 [] or None
(dynamic). A fused layer with static per-part input scales takes their max, as the
activation is shared.

GPU, chosen per call by :func:`fp8_linear_path` from the number of input rows M and the
weight's shape:
- M <= ``INFLIGHT_FP8_GEMV_MAX_M`` (16; 4 with ``gemv``): ``INFLIGHT_FP8_DECODE_KERNEL`` picks the
  kernel: ``gemv``, the Triton register GEMV ``fp8_gemv`` (on weights up to 64 Mi elements;
  reads the e4m3 weights and the unquantized activations: W8A16, no activation
  quantization), or the tensor-core kernel ``fp8_skinny_mm`` (any weight size), as W8A16
  (``tc-w8a16``: activations in fp16) or W8A8 (``tc-w8a8``: the fused per-token
  quantization first);
- otherwise: the fused per-token quantization kernel (one launch) feeds ``torch._scaled_mm``
  (cuBLASLt FP8 GEMM, row-wise scales: per-token x per-channel, bf16 out); shapes cuBLASLt
  cannot run (N or K not a multiple of 16: tiny test models) take the GEMV up to 16 rows,
  the emulation beyond.
CPU and the reference: the same quantization of x and W, then the product in the activation
dtype (emulation).

On the W8A8 paths (``tc8``, ``scaled_mm``) the activations usually arrive quantized already:
:meth:`Fp8LinearMethod.input_quantizer` tells the RMSNorm / SiLU-and-mul producing a layer's
input to write e4m3 and per-row scales in its own launch (model/quant/fp8_activation.py;
``INFLIGHT_FP8_FUSED_QUANT=0`` turns that off), and the layer takes the
:class:`~inflight.model.quant.fp8_activation.Fp8Activation` instead of quantizing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from inflight import env
from inflight.errors import ConfigError
from inflight.model.quant.base import KernelGuard, Parts, expect, part_sizes, set_buffer
from inflight.model.quant.fp8_activation import Fp8Activation, Fp8Quantizer

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
_MIN_SCALE = 1e-12


def amax_scale(amax: torch.Tensor) -> torch.Tensor:
    """max(amax / 448, 1e-12) with one IEEE division on every device: PyTorch's CUDA
    ``tensor / python_number`` multiplies by the rounded reciprocal instead (its source: "may
    lose one bit of precision"; ~55 % of fp32 scales differ by an ulp), so the GPU would
    quantize unlike the CPU, the Triton kernel and a checkpoint written on another device.
    Dividing by a tensor of 448s is a true division (and capture-safe: a fill, no copy)."""
    return (amax / torch.full_like(amax, FP8_MAX)).clamp(min=_MIN_SCALE)


def quantize_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale, saturated to the e4m3 range, as e4m3 (scale broadcasts)."""
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8)


def per_channel_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] -> (e4m3 [N, K], fp32 scales [N])."""
    scale = amax_scale(w.float().abs().amax(dim=1))
    return quantize_fp8(w, scale[:, None]), scale


def per_token_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (e4m3 [M, K], fp32 scales [M, 1])."""
    scale = amax_scale(x.float().abs().amax(dim=1, keepdim=True))
    return quantize_fp8(x, scale), scale


def fp8_linear_ref(x: torch.Tensor, qweight: torch.Tensor, weight_scale: torch.Tensor,
                   input_scale: torch.Tensor | None) -> torch.Tensor:
    """Emulated W8A8: x [M, K] -> [M, N] in x.dtype (the CPU path and the GPU tests' reference)."""
    if input_scale is None:
        xq, sx = per_token_fp8(x)
    else:
        xq, sx = quantize_fp8(x, input_scale), input_scale
    return fp8_matmul_ref(xq, sx, x.dtype, qweight, weight_scale)


def fp8_matmul_ref(xq: torch.Tensor, sx: torch.Tensor, dtype: torch.dtype, qweight: torch.Tensor,
                   weight_scale: torch.Tensor) -> torch.Tensor:
    """The emulated product of quantized activations xq [M, K] * sx ([M, 1] or []) and the
    e4m3 weights, in ``dtype``: [M, N]."""
    w = qweight.to(dtype) * weight_scale.to(dtype)[:, None]
    return F.linear((xq.float() * sx).to(dtype), w)


GEMV_MAX_M = env.fp8_gemv_max_m()
DECODE_KERNEL = env.fp8_decode_kernel()
FUSED_QUANT = env.fp8_fused_quant()  # W8A8 inputs quantized by the norm / SiLU that makes them
# Activation dtypes the fusion serves. bf16 only: on the H200 (2026-12-01) the fused kernels
# matched the unfused pair byte for byte in bf16 at every size, but one fp16 case (300 rows)
# did not, cause not found (the CPU interpreter matches): fp16 models keep the separate launch.
FUSED_DTYPES = (torch.bfloat16,)
# path names of the tensor-core decode kernels (kernels/fp8_skinny_mm.py)
_TC_PATHS = {"tc-w8a16": "tc16", "tc-w8a8": "tc8"}
# The W8A16 GEMV streams the weights at ~1.7-2.0 TB/s on the H200; per-token quantization +
# cuBLASLt pays ~6 us of fixed cost but streams large layers faster (2.4 TB/s): at M = 1 the
# GEMV won on Llama-3.1-8B's qkv (14.2 vs 20.8 us), o (10.3 vs 14.7) and down (34.0 vs 50.8)
# and lost on gate_up, 28672 x 4096 (58.8 vs 48.3): benchmarks/quant_kernel_bench.py,
# benchmarks/results/2026-12-01-h200-quant. Weights above this many elements take _scaled_mm.
GEMV_MAX_WEIGHT = 64 << 20
_GEMV_ROWS = 16  # the most rows kernels/fp8_gemv.py and fp8_skinny_mm.py take (MAX_M)


def scaled_mm_fits(n: int, k: int) -> bool:
    """cuBLASLt's FP8 GEMM (``torch._scaled_mm``) needs K and N multiples of 16."""
    return n % 16 == 0 and k % 16 == 0


def fp8_linear_path(m: int, on_gpu: bool, gemv_max_m: int = GEMV_MAX_M, n: int = 0, k: int = 0,
                    decode_kernel: str = DECODE_KERNEL) -> str:
    """The FP8 linear implementation for an input of ``m`` rows and an ``n`` x ``k`` weight:
    ``"emulate"`` off the GPU (:func:`fp8_linear_ref`); for 1 <= m <= gemv_max_m the decode
    kernel: ``"tc16"`` / ``"tc8"`` (``decode_kernel`` ``tc-w8a16`` / ``tc-w8a8``: the
    tensor-core kernel, any weight) or ``"gemv"`` (the W8A16 Triton GEMV: a decode step
    streams the weights once, with no activation quantization) on weights up to
    ``GEMV_MAX_WEIGHT`` elements; the GEMV also for any m it takes (<= 16) when cuBLASLt
    cannot run the shape; else ``"scaled_mm"`` (fused quantization + cuBLASLt), or
    ``"emulate"`` for a shape neither kernel takes."""
    if not on_gpu:
        return "emulate"
    if decode_kernel in _TC_PATHS and 1 <= m <= min(gemv_max_m, _GEMV_ROWS):
        return _TC_PATHS[decode_kernel]
    fits = scaled_mm_fits(n, k)
    small = 1 <= m <= _GEMV_ROWS
    if small and m <= gemv_max_m and n * k <= GEMV_MAX_WEIGHT or not fits and small:
        return "gemv"
    return "scaled_mm" if fits else "emulate"


def takes_fp8_input(path: str, dtype: torch.dtype) -> bool:
    """Whether the FP8 linear of ``path`` multiplies e4m3 activations (W8A8): ``scaled_mm``,
    and ``tc8`` on 16-bit activations (fp32 ones take the W8A16 GEMV)."""
    return path == "scaled_mm" or (path == "tc8" and dtype != torch.float32)


def gpu_dispatch(device: torch.device) -> bool:
    """Whether activations on ``device`` go through :func:`fp8_linear_cuda` (CUDA) rather
    than the emulation; the tests send CPU tensors there too, kernels in Triton's interpreter."""
    return device.type == "cuda"


def as_fp8(x: torch.Tensor | Fp8Activation, input_scale: torch.Tensor | None) -> Fp8Activation:
    """x as the W8A8 kernels take it: quantized here (one launch) unless its producer did."""
    return x if isinstance(x, Fp8Activation) else Fp8Quantizer(input_scale).quantize(x)


def fp8_linear_scaled_mm(x: torch.Tensor | Fp8Activation, qweight: torch.Tensor,
                         weight_scale: torch.Tensor, input_scale: torch.Tensor | None) -> torch.Tensor:
    """W8A8: per-token (or static) quantization of x in one Triton launch (unless x arrives
    quantized), then cuBLASLt's FP8 GEMM with row-wise scales: x [M, K] -> [M, N] in x.dtype."""
    xa = as_fp8(x, input_scale)
    out = torch._scaled_mm(xa.q, qweight.t(), scale_a=xa.scale, scale_b=weight_scale.view(1, -1),
                           out_dtype=torch.bfloat16)  # row-wise scaling writes bf16
    return out if xa.dtype == torch.bfloat16 else out.to(xa.dtype)


def fp8_linear_tensor_cores(x: torch.Tensor | Fp8Activation, qweight: torch.Tensor,
                            weight_scale: torch.Tensor, input_scale: torch.Tensor | None,
                            a8: bool) -> torch.Tensor:
    """M <= 16 rows of 16-bit x through ``fp8_skinny_mm``: W8A8 (``a8``: x quantized per token,
    or with the static ``input_scale``, by the quantization kernel, unless it arrives
    quantized) or W8A16 (x as it is; ``input_scale`` unused); falls back to the emulation if a
    kernel fails."""
    from inflight import kernels as K

    if not a8:
        if isinstance(x, Fp8Activation):
            raise ValueError("the W8A16 tensor-core path takes 16-bit activations, got them quantized")
        return KernelGuard.run("fp8_skinny_mm", lambda: K.fp8_skinny_mm(x, qweight, weight_scale),
                               lambda: fp8_linear_ref(x, qweight, weight_scale, input_scale))
    xa = as_fp8(x, input_scale)
    return KernelGuard.run(
        "fp8_skinny_mm",
        lambda: K.fp8_skinny_mm(xa.q, qweight, weight_scale, x_scale=xa.scale, out_dtype=xa.dtype),
        lambda: fp8_matmul_ref(xa.q, xa.scale, xa.dtype, qweight, weight_scale))


def fp8_linear_cuda(x: torch.Tensor | Fp8Activation, qweight: torch.Tensor,
                    weight_scale: torch.Tensor, input_scale: torch.Tensor | None,
                    path: str | None = None) -> torch.Tensor:
    """x [M, K] -> [M, N] in x.dtype through the Triton kernels and cuBLASLt, by ``path``
    (default :func:`fp8_linear_path` for a GPU). ``"gemv"`` ignores ``input_scale``: the
    activations stay unquantized. An :class:`Fp8Activation` (quantized by its producer) is
    only taken by the W8A8 paths (:func:`takes_fp8_input`)."""
    n, k = qweight.shape
    path = path or fp8_linear_path(x.shape[0], True, n=n, k=k)
    if takes_fp8_input(path, x.dtype):
        if path == "tc8":
            return fp8_linear_tensor_cores(x, qweight, weight_scale, input_scale, True)
        return fp8_linear_scaled_mm(x, qweight, weight_scale, input_scale)
    if isinstance(x, Fp8Activation):
        raise ValueError(f"FP8 linear path {path!r} takes 16-bit activations, got them quantized "
                         "(Fp8LinearMethod.input_quantizer and fp8_linear_path disagree)")
    if path == "tc16" and x.dtype != torch.float32:
        return fp8_linear_tensor_cores(x, qweight, weight_scale, input_scale, False)
    if path in ("gemv", "tc16", "tc8"):  # fp32 activations: the tensor-core kernel takes 16-bit
        from inflight.kernels import fp8_gemv

        def fallback() -> torch.Tensor:
            if scaled_mm_fits(n, k):
                return fp8_linear_scaled_mm(x, qweight, weight_scale, input_scale)
            return fp8_linear_ref(x, qweight, weight_scale, input_scale)

        return KernelGuard.run("fp8_gemv", lambda: fp8_gemv(x, qweight, weight_scale), fallback)
    if path != "emulate":
        raise ValueError(f"unknown FP8 linear path {path!r}")
    return fp8_linear_ref(x, qweight, weight_scale, input_scale)


class Fp8LinearMethod:
    """FP8 weights from a checkpoint (``weight`` e4m3 + ``weight_scale`` [+ ``input_scale``])
    or quantized on load from float weights (``from_checkpoint=False``: ``weight`` only)."""

    def __init__(self, name: str, from_checkpoint: bool, static_input: bool,
                 weight_strategy: str = "channel") -> None:
        self.name = name
        self.from_checkpoint = from_checkpoint
        self.static_input = static_input
        self.weight_strategy = weight_strategy  # tensor | channel (checkpoint layout)

    def required(self) -> tuple[str, ...]:
        if not self.from_checkpoint:
            return ("weight",)
        return ("weight", "weight_scale", "input_scale") if self.static_input else (
            "weight", "weight_scale")

    def optional(self) -> tuple[str, ...]:
        return ("input_scale", "weight_zero_point", "input_zero_point") if self.from_checkpoint else ()

    def from_float(self, layer: nn.Module, weight: torch.Tensor) -> None:
        q, s = per_channel_fp8(weight)
        set_buffer(layer, "qweight", q)
        set_buffer(layer, "weight_scale", s)
        set_buffer(layer, "input_scale", None)

    def load(self, layer: nn.Module, parts: Parts, names: dict[str | None, str]) -> None:
        sizes = part_sizes(layer)
        k = layer.in_features
        dev = layer.quant_device
        if not self.from_checkpoint:
            for p, n in sizes.items():
                expect(f"{names[p]}.weight", parts[p]["weight"], (n, k), "float")
            w = torch.cat([parts[p]["weight"] for p in sizes]).to(dev)
            self.from_float(layer, w)
            return
        qs, scales, in_scales = [], [], []
        for p, n in sizes.items():
            t = parts[p]
            expect(f"{names[p]}.weight", t["weight"], (n, k), self.name, (FP8,))
            s = t["weight_scale"].float()
            if s.numel() == 1:  # per-tensor: repeat over the part's rows
                s = s.reshape(1).expand(n)
            elif s.numel() == n:  # per-channel: [N] or [N, 1]
                s = s.reshape(n)
            else:
                raise ConfigError(
                    f"checkpoint tensor {names[p]}.weight_scale has shape {tuple(t['weight_scale'].shape)};"
                    f" {self.name} needs one scale per tensor [] / [1] or per output channel [{n}] / [{n}, 1]")
            if "input_scale" in t and self.static_input:
                if t["input_scale"].numel() != 1:
                    raise ConfigError(
                        f"checkpoint tensor {names[p]}.input_scale has shape "
                        f"{tuple(t['input_scale'].shape)}; static FP8 activations take one scale per tensor")
                in_scales.append(t["input_scale"].float().reshape(()))
            qs.append(t["weight"])
            scales.append(s)
        set_buffer(layer, "qweight", torch.cat(qs).to(dev))
        set_buffer(layer, "weight_scale", torch.cat(scales).contiguous().to(dev))
        # one activation feeds every part of a fused layer: the largest scale covers them all
        set_buffer(layer, "input_scale",
                   torch.stack(in_scales).max().to(dev) if in_scales else None)

    def input_quantizer(self, layer: nn.Module, m: int, dtype: torch.dtype, device: torch.device,
                        ) -> Fp8Quantizer | None:
        """How ``layer`` wants its next input (m rows of ``dtype`` on ``device``) handed over,
        asked before the op producing it runs: an :class:`Fp8Quantizer` when the layer will
        multiply e4m3 activations anyway (W8A8: :func:`fp8_linear_path` gives ``tc8`` or
        ``scaled_mm``, :func:`takes_fp8_input`), so that op quantizes its output in its own
        launch; None (the 16-bit tensor) on the W8A16 paths, the emulation, for activations
        other than bf16 (``FUSED_DTYPES``), and with ``INFLIGHT_FP8_FUSED_QUANT=0``. The one place that decides: :meth:`apply` takes the
        same path for the same m."""
        if not FUSED_QUANT or dtype not in FUSED_DTYPES or not gpu_dispatch(device):
            return None
        n, k = layer.qweight.shape
        if not takes_fp8_input(fp8_linear_path(m, True, n=n, k=k), dtype):
            return None
        return Fp8Quantizer(layer.input_scale)

    def apply(self, layer: nn.Module, x: torch.Tensor | Fp8Activation,
              bias: torch.Tensor | None) -> torch.Tensor:
        if isinstance(x, Fp8Activation):  # [M, K], quantized by its producer: a W8A8 path
            out = fp8_linear_cuda(x, layer.qweight, layer.weight_scale, layer.input_scale)
            return out if bias is None else out + bias
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if gpu_dispatch(x.device):
            out = fp8_linear_cuda(x2, layer.qweight, layer.weight_scale, layer.input_scale)
        else:
            out = fp8_linear_ref(x2, layer.qweight, layer.weight_scale, layer.input_scale)
        if bias is not None:
            out = out + bias
        return out.reshape(*shape[:-1], out.shape[-1])
