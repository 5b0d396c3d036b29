"""INT4 weight-only (w4a16) linear layers: AutoAWQ GEMM and compressed-tensors pack-quantized.

Runtime layout (both formats convert to it at load; the Triton kernel reads it):
    qweight  int32 [N, K // 8]   nibble j (bits 4j..4j+3) of word i = code of k = 8i + j
    scales   [N, K // G]         activation dtype
    qzeros   uint8 [N, K // G]   zero code per group (8 for a symmetric format)
    w[n, k] = (code - qzeros[n, k // G]) * scales[n, k // G]

AutoAWQ GEMM checkpoints store qweight int32 [K, N // 8] and qzeros int32 [K // G, N // 8],
eight output columns per word in the interleaved order AWQ_ORDER (nibble i holds column
8c + AWQ_ORDER[i]), scales [K // G, N] fp16, zero codes unsigned 0..15. compressed-tensors
``pack-quantized`` stores weight_packed int32 [N, K // 8] with signed values + 8, low nibble
first along K, weight_scale [N, K // G], and for asymmetric schemes weight_zero_point
packed the same way along N: [N // 8, K // G].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from inflight import env
from inflight.errors import ConfigError
from inflight.model.quant.base import KernelGuard, Parts, expect, part_sizes, set_buffer

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # nibble i of a packed word holds column 8c + AWQ_ORDER[i]
AWQ_REVERSE_ORDER = (0, 4, 1, 5, 2, 6, 3, 7)  # column j sits in nibble AWQ_REVERSE_ORDER[j]
_SHIFTS = torch.arange(0, 32, 4, dtype=torch.int64)


def pack_nibbles(codes: torch.Tensor) -> torch.Tensor:
    """codes [R, C] (0..15, C % 8 == 0) -> int32 [R, C // 8], code 8i + j in nibble j of word i."""
    r, c = codes.shape
    v = (codes.reshape(r, c // 8, 8).to(torch.int64) << _SHIFTS.to(codes.device)).sum(-1)
    return torch.where(v >= 2**31, v - 2**32, v).to(torch.int32)


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, W] -> uint8 codes [R, 8W] (inverse of :func:`pack_nibbles`)."""
    r, w = packed.shape
    return ((packed.to(torch.int64)[..., None] >> _SHIFTS.to(packed.device)) & 0xF).to(
        torch.uint8).reshape(r, 8 * w)


def awq_pack(codes: torch.Tensor) -> torch.Tensor:
    """codes [R, C] -> AutoAWQ int32 [R, C // 8] (interleaved column order)."""
    r, c = codes.shape
    return pack_nibbles(codes.reshape(r, c // 8, 8)[..., list(AWQ_ORDER)].reshape(r, c))


def awq_unpack(packed: torch.Tensor) -> torch.Tensor:
    """AutoAWQ int32 [R, C // 8] -> codes [R, C]."""
    r, w = packed.shape
    return unpack_nibbles(packed).reshape(r, w, 8)[..., list(AWQ_REVERSE_ORDER)].reshape(r, 8 * w)


def rtn_int4(w: torch.Tensor, group: int, symmetric: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest 4-bit, one scale (and zero) per group of ``group`` inputs.

    w [N, K] -> (codes uint8 [N, K], scales fp32 [N, K // G], zeros uint8 [N, K // G]).
    Asymmetric (AutoAWQ): codes 0..15 span [min, max] of the group; symmetric: zero 8,
    codes 8 +- round(w / s) with s = absmax / 7.
    """
    n, k = w.shape
    g = w.float().reshape(n, k // group, group)
    if symmetric:
        scales = (g.abs().amax(-1) / 7.0).clamp(min=1e-10)
        zeros = torch.full_like(scales, 8.0)
    else:
        lo, hi = g.amin(-1).clamp(max=0.0), g.amax(-1).clamp(min=0.0)
        scales = ((hi - lo) / 15.0).clamp(min=1e-10)
        zeros = (-lo / scales).round().clamp(0, 15)
    scales = scales.half().float()  # representable in fp16, as AutoAWQ stores them
    codes = (g / scales[..., None]).round() + zeros[..., None]
    codes = codes.clamp(0, 15).to(torch.uint8).reshape(n, k)
    return codes, scales, zeros.to(torch.uint8)


def dequantize_int4(qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor,
                    group: int) -> torch.Tensor:
    """Runtime layout -> w [N, K] in scales.dtype (the CPU path and the references)."""
    codes = unpack_nibbles(qweight).reshape(qweight.shape[0], -1, group)  # [N, K/G, G]
    w = (codes.to(scales.dtype) - qzeros.to(scales.dtype)[..., None]) * scales[..., None]
    return w.reshape(qweight.shape[0], -1)


def int4_linear_path(m: int, gemm: str = "") -> str:
    """The GPU implementation for an input of ``m`` rows: ``"gemv"`` (the Triton w4a16 GEMV,
    dequantizing in registers) up to the kernel's GEMV rows (4), else ``"dense"`` (the layer
    dequantized to bf16 by one Triton launch, then cuBLAS), or ``"triton"`` (the w4a16 tl.dot
    kernel) when ``gemm`` (the layer's, read at model load; else ``INFLIGHT_INT4_GEMM``) says so. Why dense: on the H200 the tl.dot kernel took
    3x bf16's time at M = 16 and 5-10x at M >= 128 (97 TF/s); writing and re-reading the bf16
    weights costs ~2x bf16's GEMM at worst (docs/quantization.md)."""
    from inflight.kernels.w4a16 import GEMV_MAX_M

    if m <= GEMV_MAX_M:
        return "gemv"
    return "triton" if (gemm or env.int4_gemm()) == "triton" else "dense"


def int4_linear_cuda(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                     qzeros: torch.Tensor, group: int, path: str | None = None) -> torch.Tensor:
    """x [M, K] -> [M, N] in x.dtype through the Triton kernels (and cuBLAS), by ``path``
    (default :func:`int4_linear_path`); a kernel that fails on the device falls back to the
    torch dequantization once and for all (``KernelGuard``)."""
    from inflight import kernels as K

    def eager() -> torch.Tensor:
        return F.linear(x, dequantize_int4(qweight, scales, qzeros, group).to(x.dtype))

    path = path or int4_linear_path(x.shape[0])
    if path == "dense":
        return KernelGuard.run("w4a16_dense", lambda: F.linear(
            x, K.w4a16_dense(qweight, scales, qzeros, group).to(x.dtype)), eager)
    if path not in ("gemv", "triton"):
        raise ValueError(f"unknown INT4 linear path {path!r}")
    return KernelGuard.run("w4a16", lambda: K.w4a16_matmul(x, qweight, scales, qzeros, group), eager)


class Int4LinearMethod:
    """w4a16 from an AutoAWQ (``fmt="awq"``) or compressed-tensors (``fmt="ct"``) checkpoint,
    or quantized round-to-nearest on load (``from_checkpoint=False``)."""

    def __init__(self, name: str, fmt: str, group_size: int, zero_point: bool,
                 from_checkpoint: bool = True) -> None:
        self.name, self.fmt, self.group = name, fmt, group_size
        self.zero_point, self.from_checkpoint = zero_point, from_checkpoint
        self.gemm = env.int4_gemm()  # at model load: a bad INFLIGHT_INT4_GEMM fails here, once

    def required(self) -> tuple[str, ...]:
        if not self.from_checkpoint:
            return ("weight",)
        if self.fmt == "awq":
            return ("qweight", "qzeros", "scales")
        return ("weight_packed", "weight_scale") + (("weight_zero_point",) if self.zero_point else ())

    def optional(self) -> tuple[str, ...]:
        return ("weight_shape",) if self.fmt == "ct" and self.from_checkpoint else ()

    def _check_k(self, layer: nn.Module) -> None:
        k = layer.in_features
        if k % self.group or k % 8:
            raise ConfigError(f"{self.name}: group_size {self.group} must divide the layer's "
                              f"input size {k} (and 8 must too)")

    def _set(self, layer: nn.Module, codes: torch.Tensor, scales: torch.Tensor,
             zeros: torch.Tensor) -> None:
        dev, dtype = layer.quant_device, layer.quant_dtype
        set_buffer(layer, "qweight", pack_nibbles(codes.to(dev)).contiguous())
        set_buffer(layer, "scales", scales.to(device=dev, dtype=dtype).contiguous())
        set_buffer(layer, "qzeros", zeros.to(device=dev, dtype=torch.uint8).contiguous())

    def from_float(self, layer: nn.Module, weight: torch.Tensor) -> None:
        self._check_k(layer)
        codes, scales, zeros = rtn_int4(weight, self.group, symmetric=not self.zero_point)
        self._set(layer, codes, scales, zeros)

    def load(self, layer: nn.Module, parts: Parts, names: dict[str | None, str]) -> None:
        self._check_k(layer)
        sizes = part_sizes(layer)
        k, g = layer.in_features, self.group
        if not self.from_checkpoint:
            for p, n in sizes.items():
                expect(f"{names[p]}.weight", parts[p]["weight"], (n, k), "float")
            self.from_float(layer, torch.cat([parts[p]["weight"] for p in sizes]).to(layer.quant_device))
            return
        codes, scales, zeros = [], [], []
        for p, n in sizes.items():
            t, pre = parts[p], names[p]
            if n % 8:
                raise ConfigError(f"{self.name}: {pre} has {n} outputs, not a multiple of 8")
            if self.fmt == "awq":
                expect(f"{pre}.qweight", t["qweight"], (k, n // 8), self.name, (torch.int32,))
                expect(f"{pre}.qzeros", t["qzeros"], (k // g, n // 8), self.name, (torch.int32,))
                expect(f"{pre}.scales", t["scales"], (k // g, n), self.name)
                codes.append(awq_unpack(t["qweight"]).t())  # [n, K]
                zeros.append(awq_unpack(t["qzeros"]).t())  # [n, K/G]
                scales.append(t["scales"].t())
            else:
                expect(f"{pre}.weight_packed", t["weight_packed"], (n, k // 8), self.name, (torch.int32,))
                expect(f"{pre}.weight_scale", t["weight_scale"], (n, k // g), self.name)
                codes.append(unpack_nibbles(t["weight_packed"]))
                scales.append(t["weight_scale"])
                if self.zero_point:
                    zp = t["weight_zero_point"]
                    expect(f"{pre}.weight_zero_point", zp, (n // 8, k // g), self.name, (torch.int32,))
                    zeros.append(unpack_nibbles(zp.t().contiguous()).t())  # packed along N
                else:
                    zeros.append(torch.full((n, k // g), 8, dtype=torch.uint8))
        self._set(layer, torch.cat(codes), torch.cat(scales), torch.cat(zeros))

    def input_quantizer(self, layer: nn.Module, m: int, dtype: torch.dtype, device: torch.device,
                        ) -> None:
        """Weight-only: the 16-bit activations as they are."""
        return None

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x.is_cuda:
            out = int4_linear_cuda(x2, layer.qweight, layer.scales, layer.qzeros, self.group,
                                   int4_linear_path(x2.shape[0], self.gemm))
        else:
            w = dequantize_int4(layer.qweight, layer.scales, layer.qzeros, self.group)
            out = F.linear(x2, w.to(x.dtype))
        if bias is not None:
            out = out + bias
        return out.reshape(*shape[:-1], out.shape[-1])
