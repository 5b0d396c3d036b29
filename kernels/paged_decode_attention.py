"""Paged attention for decode: one query token per request (flash-decoding).

Pass 1 (grid [B, Hkv, S]): each program takes the G = Hq // Hkv query heads that share a
kv head and one of S contiguous splits of the request's context, and keeps an online
softmax over BLOCK_N-token tiles gathered through the block table. Each request splits
its own seq_len (read on the device), so correctness never depends on a host-side
max_seq_len: S only trades parallelism against the reduce pass. Pass 2 (grid [B, Hq])
merges the S partial results by their log-sum-exp. With S == 1 pass 1 writes the output.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check, check_devices, is_interpreted, num_sms
from ._paged import (
    LOG2E,
    attend_tiles,
    check_paged_inputs,
    dot_config,
    dot_operand_q,
    e4m3_pairs,
    fp8_dot_flags,
    mma,
    token_offsets,
)
from .paged_prefill_attention import attention_ref

MIN_TOKENS_PER_SPLIT = 256
MAX_SPLITS = 64
# GPU launch configs per cache dtype. bf16: from a sweep on an H100 (bf16, D=128,
# B=1..256, contexts 1k..32k). The H200 sweep of 2026-12-01 (benchmarks/decode_attention_sweep.py,
# 12 configs x 6 shapes) found the same config best or within 2 % at the large shapes for both
# caches; BLOCK_N 32 / 2 stages wins 10-15 % on short contexts and loses 7 % on long ones.
LAUNCH = {"block_n": 64, "num_warps": 4, "num_stages": 3}
LAUNCH_FP8 = {"block_n": 64, "num_warps": 4, "num_stages": 3}


def launch_config(cache_dtype: torch.dtype) -> dict[str, int]:
    """BLOCK_N, num_warps and num_stages of the decode kernel for a cache of ``cache_dtype``."""
    return dict(LAUNCH_FP8 if cache_dtype == torch.float8_e4m3fn else LAUNCH)


@triton.jit
def _attend_pairs(q, m_i, l_i, k_cache_ptr, v_cache_ptr, bt_row, start, end, kvh, scale_log2,
                  stride_cb, stride_cs, stride_ch, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr,
                  UPCAST: tl.constexpr, SOFT: tl.constexpr):
    """The decode loop over an e4m3 cache read as int16 pairs (``fp8_kv_dots="fp16-pairs"``;
    strides in int16 units, head_dim == BLOCK_D): each pair converts to two fp16 values with
    one instruction, the even and odd head dims form two dots each (q split the same way), and
    the 16-bit tiles reach the dots' operands through ldmatrix instead of the byte-wise
    shared-memory loads an e4m3 tile needs. Returns (m_i, l_i, acc [BLOCK_G, BLOCK_D])."""
    HD: tl.constexpr = BLOCK_D // 2
    q_e, q_o = tl.split(tl.reshape(q, (BLOCK_G, HD, 2)))  # head dims 2j, 2j + 1
    acc_e = tl.zeros([BLOCK_G, HD], tl.float32)
    acc_o = tl.zeros([BLOCK_G, HD], tl.float32)
    dh = tl.arange(0, HD)
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_mask = n < end
        rows = token_offsets(bt_row, n, n_mask, BLOCK_SIZE, stride_cb, stride_cs)
        off = rows[:, None] + kvh * stride_ch + dh[None, :]  # [BLOCK_N, HD] int16 words
        k_e, k_o = e4m3_pairs(tl.load(k_cache_ptr + off, mask=n_mask[:, None], other=0), SOFT)
        s = mma(q_e, tl.trans(k_e), DOT_PRECISION, UPCAST) + mma(q_o, tl.trans(k_o), DOT_PRECISION, UPCAST)
        s = tl.where(n_mask[None, :], s * scale_log2, float("-inf"))  # [BLOCK_G, BLOCK_N]
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v_e, v_o = e4m3_pairs(tl.load(v_cache_ptr + off, mask=n_mask[:, None], other=0), SOFT)
        p16 = p.to(tl.float16)
        acc_e = acc_e * alpha[:, None] + mma(p16, v_e, DOT_PRECISION, UPCAST)
        acc_o = acc_o * alpha[:, None] + mma(p16, v_o, DOT_PRECISION, UPCAST)
        m_i = m_new
    return m_i, l_i, tl.reshape(tl.join(acc_e, acc_o), (BLOCK_G, BLOCK_D))


# Nothing that changes from step to step may pick a compiled variant: a new variant compiles
# while serving and stalls that step (a TTFT p99 of 0.8 s on the H200, 2026-12-01). The
# block table's row stride is its step-dependent width, the split count varies with the
# batch and context (it is the grid's third axis here, never a constant), and a request
# slice moves the metadata pointers off 16-byte alignment. The cache's block size is fixed per
# engine: a constexpr.
@triton.jit(do_not_specialize=["stride_bt", "bt_ptr", "seq_lens_ptr"])  # pointers: alignment
def _decode_split_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, bt_ptr, seq_lens_ptr,  # see paged_decode_attention
    out_ptr, mid_o_ptr, mid_lse_ptr,  # out: [B, Hq, D]; mid_o: [B, Hq, S, D]; mid_lse: [B, Hq, S]
    scale_log2, v_scale,  # scale_log2 includes k_scale (FP8 caches); v_scale scales the output
    stride_qb, stride_qh, stride_cb, stride_cs, stride_ch, stride_bt, stride_ob, stride_oh,
    num_q_heads, group, head_dim,
    BLOCK_SIZE: tl.constexpr, SPLIT: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, F16: tl.constexpr,
    V_T: tl.constexpr, PAIRS: tl.constexpr, SOFT: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    num_splits = tl.num_programs(2)  # SPLIT: num_splits > 1
    seq_len = tl.load(seq_lens_ptr + b)
    per_split = tl.cdiv(tl.cdiv(seq_len, num_splits), BLOCK_N) * BLOCK_N
    start = split * per_split
    end = tl.minimum(start + per_split, seq_len)

    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    heads = kvh * group + g  # [BLOCK_G] query heads of this kv head
    gd_mask = (g < group)[:, None] & (d < head_dim)[None, :]
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + d[None, :],
                mask=gd_mask, other=0.0)  # [BLOCK_G, BLOCK_D]
    q = dot_operand_q(q, F16)

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    bt_row = bt_ptr + b * stride_bt
    if PAIRS:
        m_i, l_i, acc = _attend_pairs(q, m_i, l_i, k_cache_ptr, v_cache_ptr, bt_row, start, end,
                                      kvh, scale_log2, stride_cb, stride_cs, stride_ch, BLOCK_SIZE,
                                      BLOCK_N, BLOCK_G, BLOCK_D, DOT_PRECISION, UPCAST, SOFT)
    else:
        m_i, l_i, acc = attend_tiles(q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row, None,
                                     start, end, kvh, d, BLOCK_SIZE, stride_cb, stride_cs,
                                     stride_ch, head_dim, scale_log2, "end", BLOCK_N,
                                     DOT_PRECISION, UPCAST, V_T)

    acc = acc * (v_scale / tl.where(l_i > 0.0, l_i, 1.0))[:, None]  # empty split: acc = 0
    if not SPLIT:
        o_ptrs = out_ptr + b * stride_ob + heads[:, None] * stride_oh + d[None, :]
        tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=gd_mask)
    else:
        row = (b * num_q_heads + heads) * num_splits + split  # [BLOCK_G] int64
        tl.store(mid_o_ptr + row[:, None] * head_dim + d[None, :], acc, mask=gd_mask)
        lse = tl.where(l_i > 0.0, m_i + tl.log2(tl.where(l_i > 0.0, l_i, 1.0)), float("-inf"))
        tl.store(mid_lse_ptr + row, lse, mask=g < group)


@triton.jit(do_not_specialize=["num_splits"])
def _decode_reduce_kernel(
    mid_o_ptr, mid_lse_ptr, out_ptr,  # mid_o: [B, Hq, S, D]; mid_lse: [B, Hq, S] (log2)
    stride_ob, stride_oh, num_q_heads, head_dim, num_splits,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,  # BLOCK_S: MAX_SPLITS, one variant
):
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    sp = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    row = (b * num_q_heads + h) * num_splits + sp  # [BLOCK_S]
    lse = tl.load(mid_lse_ptr + row, mask=sp < num_splits, other=float("-inf"))
    m = tl.max(lse, 0)
    w = tl.exp2(lse - tl.where(m == float("-inf"), 0.0, m))  # [BLOCK_S], 0 for empty splits
    o = tl.load(mid_o_ptr + row[:, None] * head_dim + d[None, :],
                mask=(sp < num_splits)[:, None] & (d < head_dim)[None, :], other=0.0)
    denom = tl.sum(w, 0)
    res = tl.sum(o * w[:, None], 0) / tl.where(denom > 0.0, denom, 1.0)  # [BLOCK_D]
    tl.store(out_ptr + b * stride_ob + h * stride_oh + d, res.to(out_ptr.dtype.element_ty),
             mask=d < head_dim)


def choose_num_splits(
    num_reqs: int, num_kv_heads: int, max_seq_len: int | None, device: torch.device,
) -> int:
    """Enough (b, kv head, split) programs for about two waves of SMs, a power of 2, with at
    least MIN_TOKENS_PER_SPLIT tokens per split when max_seq_len is known."""
    want = triton.cdiv(2 * num_sms(device), max(1, num_reqs * num_kv_heads))
    if max_seq_len is not None:
        want = min(want, triton.cdiv(max_seq_len, MIN_TOKENS_PER_SPLIT))
    return min(MAX_SPLITS, triton.next_power_of_2(max(1, want)))


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    scale: float,
    max_seq_len: int | None = None,
    out: torch.Tensor | None = None,
    num_splits: int | None = None,
    block_n: int | None = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    fp8_kv_dots: str = "bf16",
    launch: dict[str, int] | None = None,
) -> torch.Tensor:
    """Attention of one new query per request over its whole paged context.

    An FP8 (float8_e4m3fn) cache holds k / k_scale and v / v_scale: the scales are folded
    into the softmax scale and the output. ``fp8_kv_dots`` (bf16 q over an FP8 cache):
    ``bf16`` dots, ``fp16`` dots (``_paged.dot_operand_q``), ``fp16-vt`` (also V loaded
    transposed, ``_paged.load_v``) or ``fp16-pairs`` (the cache read as int16 pairs,
    :func:`_attend_pairs`; a power-of-two head_dim, else bf16 dots).

    q: [B, Hq, D] (token/head strides free, unit stride in D), fp32/fp16/bf16.
    k_cache, v_cache: [num_blocks, block_size, Hkv, D] of q.dtype or float8_e4m3fn, same
    strides; Hq % Hkv == 0 (q head i reads kv head i // (Hq // Hkv)); D a multiple of 16.
    block_tables: [B, max_blocks] int32; seq_lens: [B] int32 (context incl. the new token).
    max_seq_len: host-side bound used only to pick the split count (no host sync).
    out: optional [B, Hq, D] of q.dtype. num_splits / block_n override the heuristics;
    ``launch`` (block_n, num_warps, num_stages) overrides :func:`launch_config`.
    Returns out [B, Hq, D].
    """
    nreq = q.shape[0] if q.dim() == 3 else -1
    hkv, d, group = check_paged_inputs(q, k_cache, v_cache, block_tables, seq_lens, nreq)
    if k_cache.dtype != torch.float8_e4m3fn:  # the scales belong to an FP8 cache only
        k_scale = v_scale = 1.0
    if out is None:
        out = torch.empty_like(q)
    if out.shape != q.shape or out.dtype != q.dtype or out.stride(-1) != 1:
        raise ValueError(f"out must be {tuple(q.shape)} {q.dtype} with unit stride in D")
    dev = check_devices(_decode_split_kernel, q=q, k_cache=k_cache, v_cache=v_cache,
                        block_tables=block_tables, seq_lens=seq_lens, out=out)
    if nreq == 0:
        return out
    splits = num_splits or choose_num_splits(nreq, hkv, max_seq_len, dev)
    check(1 <= splits <= MAX_SPLITS, f"num_splits must be 1..{MAX_SPLITS}, got {splits}")
    cfg = launch_config(k_cache.dtype) | (launch or {})
    block_n = block_n or cfg["block_n"]
    flags = fp8_dot_flags(fp8_kv_dots, q, k_cache)
    pairs = (fp8_kv_dots == "fp16-pairs" and q.dtype == torch.bfloat16
             and k_cache.dtype == torch.float8_e4m3fn and d == triton.next_power_of_2(d))
    kc, vc = (k_cache.view(torch.int16), v_cache.view(torch.int16)) if pairs else (k_cache, v_cache)
    if pairs:
        flags["F16"] = True  # q in fp16 (clamped), as the fp16 dots take it
    hq = q.shape[1]
    if splits > 1:
        mid_o = torch.empty((nreq, hq, splits, d), dtype=torch.float32, device=dev)
        mid_lse = torch.empty((nreq, hq, splits), dtype=torch.float32, device=dev)
    else:
        mid_o = mid_lse = out  # unused
    _decode_split_kernel[(nreq, hkv, splits)](
        q, kc, vc, block_tables, seq_lens, out, mid_o, mid_lse,
        scale * LOG2E * k_scale, v_scale,
        q.stride(0), q.stride(1), kc.stride(0), kc.stride(1), kc.stride(2),
        block_tables.stride(0), out.stride(0), out.stride(1),
        hq, group, d,
        BLOCK_SIZE=k_cache.shape[1], SPLIT=splits > 1, BLOCK_G=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n,
        BLOCK_D=triton.next_power_of_2(d), **dot_config(_decode_split_kernel, q.dtype),
        **flags, PAIRS=pairs, SOFT=is_interpreted(_decode_split_kernel),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    if splits > 1:
        _decode_reduce_kernel[(nreq, hq)](
            mid_o, mid_lse, out, out.stride(0), out.stride(1), hq, d, splits,
            BLOCK_S=MAX_SPLITS,
            BLOCK_D=triton.next_power_of_2(d), num_warps=1 if d <= 64 else 2,
        )
    return out


def paged_decode_attention_ref(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    block_tables: torch.Tensor, seq_lens: torch.Tensor, scale: float, k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """Torch reference of :func:`paged_decode_attention` (fp32 math): [B, Hq, D]."""
    qsl = torch.arange(q.shape[0] + 1, dtype=torch.int32, device=q.device)
    return attention_ref(q, k_cache, v_cache, qsl, seq_lens, block_tables, scale, k_scale, v_scale)
