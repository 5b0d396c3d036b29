"""Split-K for the skinny matmuls (``fp8_gemv``, ``fp8_skinny_mm``): K divided over
``SPLIT_K`` programs per row block, each writing fp32 partial sums to its own slice, summed in
order after the launch (deterministic, no atomics). Narrow layers get more programs, so more
loads in flight per SM.

Grid (cdiv(N, BLOCK_N), SPLIT_K): program (i, s) owns rows [i * BLOCK_N, (i + 1) * BLOCK_N) of
the weight over K [s * k_per, (s + 1) * k_per).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check


@triton.jit
def program_tile(M, N, k_per, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """(offs_n, offs_m, n_mask, m_mask, split, k_lo): this program's weight rows, the rows of
    x, its split index and where its K range starts."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    split = tl.program_id(1)
    return offs_n, offs_m, offs_n < N, offs_m < M, split, split * k_per


def plan(out: torch.Tensor, k: int, block_k: int, split: int
         ) -> tuple[torch.Tensor, int, int, int]:
    """(y, k_per, split, stride_ys) for ``split`` requested splits of K in whole BLOCK_K
    steps: y is ``out`` itself without a split, else fp32 partials [split, M, N]."""
    check(split >= 1, f"config SPLIT_K must be >= 1, got {split}")
    k_per = triton.cdiv(triton.cdiv(k, split), block_k) * block_k
    split = triton.cdiv(k, k_per)
    if split == 1:
        return out, k_per, 1, 0
    y = torch.empty((split, *out.shape), dtype=torch.float32, device=out.device)
    return y, k_per, split, y.stride(0)


def finish(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Sum the partials of :func:`plan` into ``out`` (nothing to do without a split)."""
    if y is not out:
        out.copy_(y.sum(dim=0))
    return out
