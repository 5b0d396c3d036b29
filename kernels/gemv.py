"""Skinny matmul for decode: y = x @ w.T with few rows (M <= 4), as a memory-bound GEMV.

At batch 1-4 every linear layer streams its whole weight once per step, so the step time is
weight bytes / achieved bandwidth. cuBLAS picks tiles that leave SMs idle on some decode
shapes (e.g. 96 CTAs for 4096 -> 6144 on a 132-SM H100); this kernel gives each program
BLOCK_N output columns over the full K (fp32 accumulation), so the grid is N / BLOCK_N
programs, each streaming contiguous rows of w.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check, check_devices, check_tensor, is_interpreted

MAX_M = 4


def _configs() -> list[triton.Config]:
    return [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w)
            for bn, bk, w in ((4, 512, 4), (8, 512, 4), (16, 512, 4), (8, 256, 4), (8, 1024, 4),
                              (16, 256, 8))]


@triton.jit
def _gemv_body(x_ptr, w_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # grid: (cdiv(N, BLOCK_N),); program: y[:, n0:n0+BLOCK_N] over the whole of K
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    n_mask = offs_n < N
    m_mask = offs_m < M
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn  # int64: N * K may pass 2**31
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        w = tl.load(w_rows + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        acc += tl.sum(x.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])


_gemv_tuned = triton.autotune(configs=_configs(), key=["M", "N", "K"])(_gemv_body)


def gemv(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x: [M, K] with 1 <= M <= 4, w: [N, K] (row-major, as nn.Linear.weight), same float
    dtype -> out [M, N] = x @ w.T of x.dtype (optionally preallocated). Returns out."""
    check_tensor("x", x, (None, None))
    m, k = x.shape
    check(1 <= m <= MAX_M, f"gemv takes 1..{MAX_M} rows of x, got {m}; use a GEMM")
    check_tensor("w", w, (None, k), (x.dtype,))
    n = w.shape[0]
    if out is None:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    check_tensor("out", out, (m, n), (x.dtype,))
    check_devices(_gemv_body, x=x, w=w, out=out)
    block_m = triton.next_power_of_2(m)
    if is_interpreted(_gemv_body):  # the interpreter: one small fixed config, no tuning runs
        _gemv_body[(triton.cdiv(n, 16),)](x, w, out, m, n, k, x.stride(0), w.stride(0),
                                          out.stride(0), BLOCK_M=block_m, BLOCK_N=16, BLOCK_K=32)
    else:
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
        _gemv_tuned[grid](x, w, out, m, n, k, x.stride(0), w.stride(0), out.stride(0),
                          BLOCK_M=block_m)
    return out


def gemv_ref(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.linear(x, w)
