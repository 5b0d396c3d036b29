"""Neox-style rotary position embedding (``rotate_half``, as Hugging Face Llama).

The model precomputes one fp32 table cos_sin_cache [max_pos, D] holding cos in its first
half and sin in its second (vLLM's layout; llama3/linear scaling already applied); this
kernel only applies it: x' = x * cos + rotate_half(x) * sin, with the first and second halves of
the head dim forming the rotated pairs. Math is fp32 with one rounding at the end.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check, check_devices, check_tensor


@triton.jit
def _rotate_heads(
    src_ptr, dst_ptr, t, stride_st, stride_sh, stride_dt, stride_dh, num_heads, cos, sin,
    half, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    # src/dst rows of [T, H, D]; cos/sin: [1, BLOCK_HALF] fp32 for this token.
    h = tl.arange(0, BLOCK_H)[:, None]
    j = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (h < num_heads) & (j < half)
    src = src_ptr + t * stride_st + h * stride_sh + j
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + half, mask=mask, other=0.0).to(tl.float32)
    dst = dst_ptr + t * stride_dt + h * stride_dh + j
    ty = dst_ptr.dtype.element_ty
    tl.store(dst, (x1 * cos - x2 * sin).to(ty), mask=mask)
    tl.store(dst + half, (x2 * cos + x1 * sin).to(ty), mask=mask)


@triton.jit
def _rotary_kernel(
    q_ptr, k_ptr, q_out_ptr, k_out_ptr,  # q: [T, Hq, D], k: [T, Hkv, D]
    pos_ptr, cs_ptr,  # pos: [T]; cos_sin_cache: [max_pos, D] fp32 (cos | sin)
    stride_qt, stride_qh, stride_kt, stride_kh,
    stride_qot, stride_qoh, stride_kot, stride_koh, stride_cs,
    num_q_heads, num_kv_heads, half,
    BLOCK_HQ: tl.constexpr, BLOCK_HKV: tl.constexpr, BLOCK_HALF: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    j = tl.arange(0, BLOCK_HALF)[None, :]
    cos = tl.load(cs_ptr + pos * stride_cs + j, mask=j < half, other=0.0).to(tl.float32)
    sin = tl.load(cs_ptr + pos * stride_cs + half + j, mask=j < half, other=0.0).to(tl.float32)
    _rotate_heads(q_ptr, q_out_ptr, t, stride_qt, stride_qh, stride_qot, stride_qoh,
                  num_q_heads, cos, sin, half, BLOCK_HQ, BLOCK_HALF)
    _rotate_heads(k_ptr, k_out_ptr, t, stride_kt, stride_kh, stride_kot, stride_koh,
                  num_kv_heads, cos, sin, half, BLOCK_HKV, BLOCK_HALF)


def rotary_embedding(
    positions: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    inplace: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply neox rotary embedding to q and k.

    positions: [T] int64/int32, each < max_pos (not checked on the device);
    q: [T, Hq, D], k: [T, Hkv, D] (any token/head strides, unit stride in D; same dtype,
    fp32/fp16/bf16); cos_sin_cache: [max_pos, D] float32, cos in [:, :D/2], sin in
    [:, D/2:]. Returns (q_out, k_out): q and k themselves when ``inplace``, else new
    contiguous tensors.
    """
    check_tensor("q", q, (None, None, None))
    t, hq, d = q.shape
    check(d % 2 == 0, f"head_dim must be even, got {d}")
    check_tensor("k", k, (t, None, d), (q.dtype,))
    check_tensor("positions", positions, (t,), (torch.int64, torch.int32), False)
    check_tensor("cos_sin_cache", cos_sin_cache, (None, d), (torch.float32,))
    check_devices(_rotary_kernel, q=q, k=k, positions=positions, cos_sin_cache=cos_sin_cache)
    q_out = q if inplace else torch.empty_like(q, memory_format=torch.contiguous_format)
    k_out = k if inplace else torch.empty_like(k, memory_format=torch.contiguous_format)
    if t == 0:
        return q_out, k_out
    hkv = k.shape[1]
    _rotary_kernel[(t,)](
        q, k, q_out, k_out, positions, cos_sin_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1),
        cos_sin_cache.stride(0),
        hq, hkv, d // 2,
        BLOCK_HQ=triton.next_power_of_2(hq), BLOCK_HKV=triton.next_power_of_2(hkv),
        BLOCK_HALF=triton.next_power_of_2(d // 2), num_warps=4 if hq * d >= 2048 else 1,
    )
    return q_out, k_out


def rotary_embedding_ref(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, cos_sin_cache: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference (fp32 math, one rounding): returns new (q_out, k_out)."""
    cos, sin = cos_sin_cache[positions.long()][:, None, :].chunk(2, dim=-1)  # [T, 1, D/2]

    def rotate(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)

    return rotate(q), rotate(k)
