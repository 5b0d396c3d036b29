"""Scatter new keys/values into the paged KV cache.

k_cache/v_cache: [num_blocks, block_size, Hkv, D]; token slot s lives at block
s // block_size, offset s % block_size. A slot of -1 marks a padding token (CUDA-graph
padding) and is skipped.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import CACHE_DTYPES, check, check_devices, check_tensor


@triton.jit
def _kv_cache_write_kernel(
    k_ptr, v_ptr,  # [T, Hkv, D]
    k_cache_ptr, v_cache_ptr,  # [num_blocks, block_size, Hkv, D]
    slot_ptr,  # [T] int64
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kcb, stride_kcs, stride_kch,
    stride_vcb, stride_vcs, stride_vch,
    num_heads, head_dim, block_size, inv_k_scale, inv_v_scale,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, FP8: tl.constexpr,
):
    # One program per token writes all of its heads: [BLOCK_H, BLOCK_D].
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot < 0:  # padding token
        return
    block = slot // block_size  # int64: block * stride must not wrap at 2^31
    offset = slot % block_size
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_D)[None, :]
    mask = (h < num_heads) & (d < head_dim)
    k = tl.load(k_ptr + t * stride_kt + h * stride_kh + d, mask=mask)
    v = tl.load(v_ptr + t * stride_vt + h * stride_vh + d, mask=mask)
    if FP8:  # e4m3 cache: x / scale, saturated (a cast would turn overflow into NaN)
        k = tl.clamp(k.to(tl.float32) * inv_k_scale, -448.0, 448.0)
        v = tl.clamp(v.to(tl.float32) * inv_v_scale, -448.0, 448.0)
    kc = k_cache_ptr + block * stride_kcb + offset * stride_kcs + h * stride_kch + d
    vc = v_cache_ptr + block * stride_vcb + offset * stride_vcs + h * stride_vch + d
    tl.store(kc, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(vc, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def kv_cache_write(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Write ``k``/``v`` into the caches at ``slot_mapping`` (in place).

    A float8_e4m3fn cache stores k / k_scale and v / v_scale saturated to +-448 (the
    scales are ignored for other cache dtypes).

    k, v: [T, Hkv, D] (any token/head stride, unit stride in D), fp32/fp16/bf16.
    k_cache, v_cache: [num_blocks, block_size, Hkv, D]; values are cast to the cache dtype.
    slot_mapping: [T] int64 (or int32); -1 skips the token. Slots must be < num_blocks *
    block_size (not checked on the device: it would need a host sync).
    """
    check_tensor("k", k, (None, None, None))
    t, hkv, d = k.shape
    check_tensor("v", v, (t, hkv, d))
    check_tensor("k_cache", k_cache, (None, None, hkv, d), CACHE_DTYPES)
    check_tensor("v_cache", v_cache, k_cache.shape, CACHE_DTYPES)
    check(k_cache.dtype == v_cache.dtype, "k_cache and v_cache must share a dtype")
    check_tensor("slot_mapping", slot_mapping, (t,), (torch.int64, torch.int32), True)
    check_devices(_kv_cache_write_kernel, k=k, v=v, k_cache=k_cache, v_cache=v_cache,
                  slot_mapping=slot_mapping)
    check(k_cache.stride(-1) == 1 and v_cache.stride(-1) == 1, "caches need unit stride in D")
    if t == 0:
        return
    _kv_cache_write_kernel[(t,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        hkv, d, k_cache.shape[1], 1.0 / k_scale, 1.0 / v_scale,
        BLOCK_H=triton.next_power_of_2(hkv), BLOCK_D=triton.next_power_of_2(d),
        FP8=k_cache.dtype == torch.float8_e4m3fn,
    )


def kv_cache_write_ref(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> None:
    """Torch reference of :func:`kv_cache_write` (same shapes; slots of -1 skipped)."""
    nb, bs, h, d = k_cache.shape
    keep = slot_mapping >= 0  # [T] bool
    slots = slot_mapping[keep].long()
    for x, cache, s in ((k, k_cache, k_scale), (v, v_cache, v_scale)):
        if cache.dtype == torch.float8_e4m3fn:  # CPU index_copy_ has no fp8 kernel: bytes
            vals = (x[keep].float() / s).clamp(-448.0, 448.0).to(cache.dtype).view(torch.uint8)
            cache.view(torch.uint8).view(nb * bs, h, d).index_copy_(0, slots, vals)
        else:
            cache.view(nb * bs, h, d).index_copy_(0, slots, x[keep].to(cache.dtype))
