"""Triton helpers shared by the paged attention kernels."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check, check_tensor, is_interpreted

FP8 = torch.float8_e4m3fn

LOG2E = 1.4426950408889634


@triton.jit
def token_offsets(bt_row_ptr, n, n_mask, BLOCK_SIZE: tl.constexpr, stride_b, stride_s):
    """Context positions n: [BLOCK_N] -> int64 element offsets [BLOCK_N] of their cache rows.

    The block id is widened to int64 before the multiply: block * stride_b overflows
    int32 for caches over 2^31 elements. BLOCK_SIZE (tokens per cache block) is a
    constexpr, fixed per engine: a division by a run-time value took ~90 of the 560
    instructions of the decode kernel's loop (bf16 cache, sm_90 SASS).
    """
    phys = tl.load(bt_row_ptr + n // BLOCK_SIZE, mask=n_mask, other=0).to(tl.int64)
    return phys * stride_b + (n % BLOCK_SIZE).to(tl.int64) * stride_s


@triton.jit
def dot_operand_q(q, F16: tl.constexpr):
    """The query as the dots take it. F16 (an FP8 cache read by bf16 queries, ``fp8_kv_dots``
    fp16 or fp16-vt):
    q in fp16, clamped to fp16's range (no inf), so that every e4m3 K/V element converts to
    the dots' dtype in one instruction per two values (fp16 holds every e4m3 value exactly;
    to bf16 the compiler goes through fp16 and needs three more) and the probabilities keep
    fp16's 10 mantissa bits."""
    if F16:
        q = tl.minimum(tl.maximum(q.to(tl.float32), -65504.0), 65504.0).to(tl.float16)
    return q


@triton.jit
def load_v(v_cache_ptr, rows, kv_col, d, n_mask, head_dim, dtype: tl.constexpr,
           V_T: tl.constexpr):
    """The [BLOCK_N, BLOCK_D] V tile of cache rows ``rows`` (element offsets), kv head column
    ``kv_col``, as ``dtype``. V_T (FP8 caches, ``fp8_kv_dots="fp16-vt"``) loads it as
    [BLOCK_D, BLOCK_N] and transposes in registers: in the sm_90 SASS of the plain load the
    e4m3 tile goes through shared memory and comes back one byte per instruction (64
    ``LDS.U8`` per tile) to form the dot's operand; the transposed load has none (byte
    permutes in registers instead; the load is then not software-pipelined)."""
    if V_T:
        off_t = rows[None, :] + kv_col + d[:, None]  # [BLOCK_D, BLOCK_N]
        mask_t = (d < head_dim)[:, None] & n_mask[None, :]
        return tl.trans(tl.load(v_cache_ptr + off_t, mask=mask_t, other=0.0).to(dtype))
    off = rows[:, None] + kv_col + d[None, :]
    return tl.load(v_cache_ptr + off, mask=n_mask[:, None] & (d < head_dim)[None, :],
                   other=0.0).to(dtype)


@triton.jit
def _e4m3_bits_to_f16(b):
    """e4m3 codes b (int32, 0..255) -> fp16 values, exactly: s.eeee.mmm placed at fp16's bits
    15 and 13..7 is the value * 2**-8 (subnormals included), * 256 restores it."""
    h = ((b & 0x80) << 8) | ((b & 0x7F) << 7)
    return (h.to(tl.uint16).to(tl.float16, bitcast=True) * 256.0).to(tl.float16)


@triton.jit
def e4m3_pairs(x, SOFT: tl.constexpr):
    """x: int16 words of two e4m3 codes (element 2j in the low byte, 2j + 1 in the high one) ->
    (even, odd) fp16 tensors of x's shape. On the GPU one ``cvt.rn.f16x2.e4m3x2`` per word;
    SOFT (Triton's interpreter, which runs no PTX): the same values by bit arithmetic."""
    if SOFT:
        u = x.to(tl.int32) & 0xFFFF
        return _e4m3_bits_to_f16(u & 0xFF), _e4m3_bits_to_f16(u >> 8)
    return tl.inline_asm_elementwise(
        "{ .reg .b32 t; cvt.rn.f16x2.e4m3x2 t, $2; mov.b32 {$0, $1}, t; }", "=h,=h,h", [x],
        dtype=(tl.float16, tl.float16), is_pure=True, pack=1)


FP8_KV_DOTS = ("bf16", "fp16", "fp16-vt", "fp16-pairs")


def fp8_dot_flags(fp8_kv_dots: str, q: torch.Tensor, k_cache: torch.Tensor) -> dict[str, bool]:
    """Constexprs F16 / V_T for ``fp8_kv_dots`` (bf16 | fp16 | fp16-vt | fp16-pairs); they
    apply to bf16 queries over an FP8 cache only. ``fp16-pairs`` is a decode-kernel choice
    (paged_decode_attention.py): the prefill kernel keeps bf16 dots with it."""
    if fp8_kv_dots not in FP8_KV_DOTS:
        raise ValueError(f"fp8_kv_dots must be one of {FP8_KV_DOTS}, got {fp8_kv_dots!r}")
    on = q.dtype == torch.bfloat16 and k_cache.dtype == torch.float8_e4m3fn
    return {"F16": on and fp8_kv_dots in ("fp16", "fp16-vt"), "V_T": on and fp8_kv_dots == "fp16-vt"}


@triton.jit
def mma(a, b, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """tl.dot(a, b) -> fp32; UPCAST computes it in fp32 (the interpreter's bf16 dot is wrong:
    it multiplies the raw uint16 bit patterns)."""
    if UPCAST:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        c = tl.dot(a, b, input_precision=DOT_PRECISION)
    return c


@triton.jit
def attend_tiles(
    q, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, bt_row, pos, lo, hi, kvh, d,
    BLOCK_SIZE: tl.constexpr, stride_cb, stride_cs, stride_ch, head_dim, scale_log2,
    MASK: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
    UPCAST: tl.constexpr, V_T: tl.constexpr,
):
    """The online-softmax loop of both attention kernels over the keys [lo, hi) of one request's
    paged cache, in BLOCK_N tiles: q [BLOCK_M, BLOCK_D] (the dots' dtype); m_i, l_i, acc the
    running max, sum and output; returns them updated. MASK: ``"none"`` (every key in range is
    visible: prefill's tiles below the first query), ``"end"`` (keys past ``hi`` masked in the
    last tile: decode) or ``"causal"`` (also keys after each row's position ``pos``
    [BLOCK_M]; None otherwise)."""
    for n0 in range(lo, hi, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_mask = n < hi
        rows = token_offsets(bt_row, n, n_mask, BLOCK_SIZE, stride_cb, stride_cs)
        kv_off = rows[:, None] + kvh * stride_ch + d[None, :]  # [BLOCK_N, BLOCK_D]
        kv_mask = n_mask[:, None] & (d < head_dim)[None, :]
        k = tl.load(k_cache_ptr + kv_off, mask=kv_mask, other=0.0).to(q.dtype)  # fp8 -> q's
        s = mma(q, tl.trans(k), DOT_PRECISION, UPCAST) * scale_log2
        if MASK == "causal":  # [BLOCK_M, BLOCK_N]
            s = tl.where((n[None, :] <= pos[:, None]) & n_mask[None, :], s, float("-inf"))
        elif MASK == "end":
            s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = load_v(v_cache_ptr, rows, kvh * stride_ch, d, n_mask, head_dim, q.dtype, V_T)
        acc = acc * alpha[:, None] + mma(p.to(v.dtype), v, DOT_PRECISION, UPCAST)
        m_i = m_new
    return m_i, l_i, acc


def dot_config(kernel: object, dtype: torch.dtype) -> dict[str, object]:
    """Constexprs for :func:`mma`: exact fp32 dots for fp32 (Triton's default is tf32),
    fp32 emulation of bf16 dots in the interpreter."""
    return {
        "DOT_PRECISION": "ieee" if dtype == torch.float32 else "tf32",
        "UPCAST": is_interpreted(kernel) and dtype == torch.bfloat16,
    }


def check_paged_inputs(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    block_tables: torch.Tensor, seq_lens: torch.Tensor, num_reqs: int,
) -> tuple[int, int, int]:
    """Shared checks; returns (num_kv_heads, head_dim, group = Hq // Hkv)."""
    check_tensor("q", q, (None, None, None))
    _, hq, d = q.shape
    check_tensor("k_cache", k_cache, (None, None, None, d), (q.dtype, FP8))
    hkv = k_cache.shape[2]
    check_tensor("v_cache", v_cache, k_cache.shape, (k_cache.dtype,))
    check(k_cache.stride() == v_cache.stride(), "k_cache and v_cache must share strides")
    check(hq % hkv == 0, f"q heads ({hq}) must be a multiple of kv heads ({hkv})")
    check(d % 16 == 0, f"head_dim must be a multiple of 16 (tl.dot), got {d}")
    check_tensor("block_tables", block_tables, (num_reqs, None), (torch.int32,))
    check_tensor("seq_lens", seq_lens, (num_reqs,), (torch.int32,))
    return hkv, d, hq // hkv
