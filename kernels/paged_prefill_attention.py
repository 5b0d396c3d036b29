"""Paged varlen causal attention for prefill chunks (with a cached prefix).

Request b owns query rows [qsl[b], qsl[b+1]) of q; its Lq queries sit at positions
seq_len - Lq .. seq_len - 1 of a context whose keys/values (the chunk's own included) are
already in the paged cache. Grid [cdiv(max_query_len, BLOCK_Q), Hkv, B]: a program takes
BLOCK_Q query tokens times the G = Hq // Hkv query heads of one kv head as the BLOCK_M
rows of its tile (GQA: each K/V tile is loaded once for the whole group), walks the
visible keys in BLOCK_N tiles (unmasked up to the tile's first query position, then the
causal diagonal with a mask), and keeps an fp32 online softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._common import check, check_devices, check_tensor
from ._paged import (
    LOG2E,
    attend_tiles,
    check_paged_inputs,
    dot_config,
    dot_operand_q,
    fp8_dot_flags,
)


# Variants fixed per model (see _decode_split_kernel): the block table's row stride is the
# step's width, and the prefill requests' metadata starts num_decodes entries in.
@triton.jit(do_not_specialize=["stride_bt", "qsl_ptr", "seq_lens_ptr", "bt_ptr"])  # pointers: alignment
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr,  # q, out: [T, Hq, D]; caches paged
    qsl_ptr, seq_lens_ptr, bt_ptr,  # [B+1], [B], [B, max_blocks] int32
    scale_log2, v_scale,  # scale_log2 includes k_scale (FP8 caches); v_scale scales the output
    stride_qt, stride_qh, stride_ot, stride_oh, stride_cb, stride_cs, stride_ch, stride_bt,
    group, head_dim,
    BLOCK_SIZE: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, F16: tl.constexpr,
    V_T: tl.constexpr,
):
    tile = tl.program_id(0)
    kvh = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    q_start = tl.load(qsl_ptr + b)
    q_len = tl.load(qsl_ptr + b + 1) - q_start
    if tile * BLOCK_Q >= q_len:
        return
    ctx = tl.load(seq_lens_ptr + b) - q_len  # position of the request's first query

    r = tl.arange(0, BLOCK_M)
    tok = tile * BLOCK_Q + r // group  # [BLOCK_M] query index within the request
    heads = kvh * group + r % group
    d = tl.arange(0, BLOCK_D)
    row_mask = (r < BLOCK_Q * group) & (tok < q_len)
    qd_mask = row_mask[:, None] & (d < head_dim)[None, :]
    tok64 = (q_start + tok).to(tl.int64)
    q = tl.load(q_ptr + tok64[:, None] * stride_qt + heads[:, None] * stride_qh + d[None, :],
                mask=qd_mask, other=0.0)
    q = dot_operand_q(q, F16)
    pos = ctx + tok  # [BLOCK_M]; padded rows get positions past the tile: never all-masked

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    bt_row = bt_ptr + b * stride_bt
    # keys below the tile's first query position are visible to every row: no mask.
    full_end = (ctx + tile * BLOCK_Q) // BLOCK_N * BLOCK_N
    kv_end = ctx + tl.minimum((tile + 1) * BLOCK_Q, q_len)
    m_i, l_i, acc = attend_tiles(q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row, pos, 0,
                                 full_end, kvh, d, BLOCK_SIZE, stride_cb, stride_cs, stride_ch,
                                 head_dim, scale_log2, "none", BLOCK_N, DOT_PRECISION, UPCAST, V_T)
    m_i, l_i, acc = attend_tiles(q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row, pos,
                                 full_end, kv_end, kvh, d, BLOCK_SIZE, stride_cb, stride_cs,
                                 stride_ch, head_dim, scale_log2, "causal", BLOCK_N,
                                 DOT_PRECISION, UPCAST, V_T)
    acc = acc * (v_scale / l_i)[:, None]
    o_ptrs = out_ptr + tok64[:, None] * stride_ot + heads[:, None] * stride_oh + d[None, :]
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=qd_mask)


def _tile_sizes(group: int, d: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for a GPU; BLOCK_M rows hold BLOCK_M // G
    tokens."""
    if dtype == torch.float32 or d > 128:
        return max(32, triton.next_power_of_2(group)), 32, 4, 2
    return max(128, triton.next_power_of_2(group)), 64, 8, 2


def paged_prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    block_tables: torch.Tensor,
    scale: float,
    max_query_len: int,
    out: torch.Tensor | None = None,
    block_m: int | None = None,
    block_n: int | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    fp8_kv_dots: str = "bf16",
) -> torch.Tensor:
    """Causal attention of each request's new queries over its paged context.

    An FP8 (float8_e4m3fn) cache holds k / k_scale and v / v_scale. ``fp8_kv_dots`` (bf16 q
    over an FP8 cache): ``bf16`` dots, ``fp16`` dots (``_paged.dot_operand_q``), or
    ``fp16-vt`` (also V loaded transposed, ``_paged.load_v``).

    q: [T, Hq, D] (token/head strides free, unit stride in D), fp32/fp16/bf16.
    k_cache, v_cache: [num_blocks, block_size, Hkv, D] of q.dtype (or float8_e4m3fn) with
    the new keys already written; Hq % Hkv == 0; D a multiple of 16.
    query_start_loc: [B+1] int32 into q's rows (qsl[0] may be > 0); seq_lens: [B] int32
    with seq_lens[b] >= qsl[b+1] - qsl[b] > 0; block_tables: [B, max_blocks] int32.
    max_query_len: host-side max of Lq (sizes the grid; smaller would skip queries).
    out: optional [T, Hq, D] of q.dtype; rows outside the requests are left untouched.
    block_m (query rows = tokens * G per tile, power of 2) / block_n override the tiles.
    Returns out.
    """
    check_tensor("query_start_loc", query_start_loc, (None,), (torch.int32,))
    nreq = query_start_loc.shape[0] - 1
    hkv, d, group = check_paged_inputs(q, k_cache, v_cache, block_tables, seq_lens, nreq)
    if k_cache.dtype != torch.float8_e4m3fn:  # the scales belong to an FP8 cache only
        k_scale = v_scale = 1.0
    if out is None:
        out = torch.empty_like(q)
    if out.shape != q.shape or out.dtype != q.dtype or out.stride(-1) != 1:
        raise ValueError(f"out must be {tuple(q.shape)} {q.dtype} with unit stride in D")
    check_devices(_prefill_kernel, q=q, k_cache=k_cache, v_cache=v_cache, out=out,
                  query_start_loc=query_start_loc, seq_lens=seq_lens,
                  block_tables=block_tables)
    if nreq <= 0 or max_query_len <= 0:
        return out
    bm, bn, warps, stages = _tile_sizes(group, d, q.dtype)
    bm, bn = block_m or bm, block_n or bn
    check(bm >= group and bm == triton.next_power_of_2(bm), f"bad block_m {bm}")
    block_q = bm // group
    grid = (triton.cdiv(max_query_len, block_q), hkv, nreq)
    _prefill_kernel[grid](
        q, k_cache, v_cache, out, query_start_loc, seq_lens, block_tables,
        scale * LOG2E * k_scale, v_scale,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        group, d,
        BLOCK_SIZE=k_cache.shape[1], BLOCK_Q=block_q, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=triton.next_power_of_2(d),
        **dot_config(_prefill_kernel, q.dtype), **fp8_dot_flags(fp8_kv_dots, q, k_cache),
        num_warps=warps, num_stages=stages,
    )
    return out


def attention_ref(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    query_start_loc: torch.Tensor, seq_lens: torch.Tensor, block_tables: torch.Tensor,
    scale: float, k_scale: float = 1.0, v_scale: float = 1.0,
) -> torch.Tensor:
    """Torch reference (fp32 math, host loop) for both paged attention kernels.

    Same arguments as :func:`paged_prefill_attention`; returns [T, Hq, D] with rows
    outside the requests zero.
    """
    out = torch.zeros_like(q)
    bs, group = k_cache.shape[1], q.shape[1] // k_cache.shape[2]
    qsl, lens = query_start_loc.tolist(), seq_lens.tolist()
    for b, seq_len in enumerate(lens):
        s, e = qsl[b], qsl[b + 1]
        blocks = block_tables[b, : triton.cdiv(seq_len, bs)].long()
        k = k_cache[blocks].flatten(0, 1)[:seq_len].float().repeat_interleave(group, dim=1)
        v = v_cache[blocks].flatten(0, 1)[:seq_len].float().repeat_interleave(group, dim=1)
        if k_cache.dtype == torch.float8_e4m3fn:
            k, v = k * k_scale, v * v_scale
        pos_q = torch.arange(seq_len - (e - s), seq_len, device=q.device)[:, None]
        mask = torch.arange(seq_len, device=q.device)[None, :] <= pos_q  # [Lq, L]
        o = F.scaled_dot_product_attention(
            q[s:e].transpose(0, 1).float(), k.transpose(0, 1).float(),
            v.transpose(0, 1).float(), attn_mask=mask, scale=scale)
        out[s:e] = o.transpose(0, 1).to(q.dtype)
    return out
