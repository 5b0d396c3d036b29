"""INT4 weight-only matmul (w4a16): y = x @ dequant(W).T, dequantized in registers.

W is stored as inflight's runtime INT4 layout (model/quant/int4.py; AutoAWQ and
compressed-tensors checkpoints convert to it at load):
    qweight int32 [N, K // 8]: nibble j of word i holds the 4-bit code of k = 8i + j
    scales  [N, K // G] (x.dtype); qzeros uint8 [N, K // G]
    W[n, k] = (code - qzeros[n, k // G]) * scales[n, k // G]
At batch 1 the step streams 0.5 byte per weight instead of 2 (bf16), so decode is about
4x less memory-bound. Two launch shapes of one kernel: M <= 4 (decode) gives each program
BLOCK_N output columns over the whole of K and reduces with tl.sum (no tensor-core tile
wasted on 1 row); larger M uses tl.dot tiles. Launch configs are fixed per M bucket (no
autotuning: the first call may happen inside a CUDA-graph capture).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check, check_devices, check_tensor, is_interpreted
from ._paged import mma

GEMV_MAX_M = 4


@triton.jit
def _w4a16_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, y_ptr,  # x [M, K]; qw [N, K/8] int32; s, z [N, K/G]; y [M, N]
    M, N, K, stride_xm, stride_qn, stride_sn, stride_zn, stride_ym,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    USE_DOT: tl.constexpr, UPCAST: tl.constexpr,
):
    # grid (cdiv(N, BLOCK_N), cdiv(M, BLOCK_M)); BLOCK_K divides GROUP, and GROUP divides K,
    # so a K tile lies in one quantization group and needs no mask.
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    n_mask = offs_n < N
    m_mask = offs_m < M
    n64 = offs_n.to(tl.int64)  # N * K / 8 may pass 2**31 for lm_head-sized layers
    shifts = tl.arange(0, 8) * 4  # [8]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        words = tl.load(qw_ptr + n64[:, None] * stride_qn + (k0 // 8 + tl.arange(0, BLOCK_K // 8))[None, :],
                        mask=n_mask[:, None], other=0)  # [BLOCK_N, BLOCK_K / 8]
        codes = (words[:, :, None] >> shifts[None, None, :]) & 0xF  # [BLOCK_N, BLOCK_K / 8, 8]
        codes = tl.reshape(codes, (BLOCK_N, BLOCK_K))
        g = k0 // GROUP
        scale = tl.load(s_ptr + n64 * stride_sn + g, mask=n_mask, other=0.0).to(tl.float32)
        zero = tl.load(z_ptr + n64 * stride_zn + g, mask=n_mask, other=0).to(tl.float32)
        w = (codes.to(tl.float32) - zero[:, None]) * scale[:, None]  # [BLOCK_N, BLOCK_K]
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=m_mask[:, None],
                    other=0.0)  # [BLOCK_M, BLOCK_K]
        if USE_DOT:
            acc += mma(x, tl.trans(w.to(x.dtype)), "ieee" if x.dtype == tl.float32 else "tf32",
                       UPCAST)
        else:
            acc += tl.sum(x.to(tl.float32)[:, None, :] * w[None, :, :], axis=2)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])


def _launch_config(m: int, group: int, interpreted: bool) -> dict[str, int | bool]:
    """BLOCK_M/N/K, warps and stages per M bucket (fixed: capture-safe)."""
    if interpreted:  # small tiles keep the numpy interpreter quick
        bk = min(group, 32)
        return {"BLOCK_M": 16 if m > GEMV_MAX_M else triton.next_power_of_2(m), "BLOCK_N": 16,
                "BLOCK_K": bk, "USE_DOT": m > GEMV_MAX_M, "num_warps": 4, "num_stages": 1}
    if m <= GEMV_MAX_M:
        return {"BLOCK_M": triton.next_power_of_2(m), "BLOCK_N": 16, "BLOCK_K": min(group, 128),
                "USE_DOT": False, "num_warps": 4, "num_stages": 3}
    if m <= 16:
        return {"BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": min(group, 128), "USE_DOT": True,
                "num_warps": 4, "num_stages": 3}
    if m <= 64:
        return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": min(group, 64), "USE_DOT": True,
                "num_warps": 4, "num_stages": 3}
    return {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": min(group, 64), "USE_DOT": True,
            "num_warps": 8, "num_stages": 3}


def w4a16_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                 qzeros: torch.Tensor, group_size: int, out: torch.Tensor | None = None
                 ) -> torch.Tensor:
    """x: [M, K] fp16/bf16/fp32 (unit stride in K); qweight: int32 [N, K // 8];
    scales: [N, K // G] of x.dtype; qzeros: uint8 [N, K // G]; group_size G: a power of two
    >= 8 dividing K. Returns out [M, N] of x.dtype (optionally preallocated)."""
    check_tensor("x", x, (None, None))
    m, k = x.shape
    check(group_size >= 8 and group_size & (group_size - 1) == 0 and k % group_size == 0,
          f"group_size must be a power of two >= 8 dividing K={k}, got {group_size}")
    check_tensor("qweight", qweight, (None, k // 8), (torch.int32,))
    n = qweight.shape[0]
    check_tensor("scales", scales, (n, k // group_size), (x.dtype,))
    check_tensor("qzeros", qzeros, (n, k // group_size), (torch.uint8,))
    if out is None:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    check_tensor("out", out, (m, n), (x.dtype,))
    check_devices(_w4a16_kernel, x=x, qweight=qweight, scales=scales, qzeros=qzeros, out=out)
    if m == 0:
        return out
    interp = is_interpreted(_w4a16_kernel)
    cfg = _launch_config(m, group_size, interp)
    grid = (triton.cdiv(n, int(cfg["BLOCK_N"])), triton.cdiv(m, int(cfg["BLOCK_M"])))
    _w4a16_kernel[grid](
        x, qweight, scales, qzeros, out, m, n, k, x.stride(0), qweight.stride(0),
        scales.stride(0), qzeros.stride(0), out.stride(0), GROUP=group_size,
        UPCAST=interp and x.dtype == torch.bfloat16, **cfg)
    return out


def w4a16_dequantize(qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor,
                     group_size: int) -> torch.Tensor:
    """Runtime INT4 layout -> W [N, K] in scales.dtype."""
    n = qweight.shape[0]
    shifts = torch.arange(0, 32, 4, device=qweight.device)
    codes = (qweight[..., None].to(torch.int64) >> shifts) & 0xF  # [N, K/8, 8]
    codes = codes.reshape(n, -1, group_size).to(torch.float32)  # [N, K/G, G]
    w = (codes - qzeros.float()[..., None]) * scales.float()[..., None]
    return w.reshape(n, -1).to(scales.dtype)


def w4a16_ref(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
              qzeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """Torch reference: dequantize, then F.linear in x.dtype."""
    return torch.nn.functional.linear(x, w4a16_dequantize(qweight, scales, qzeros, group_size))
