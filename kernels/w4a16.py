"""INT4 weight-only matmul (w4a16): y = x @ dequant(W).T, dequantized in registers.

W is stored as inflight's runtime INT4 layout (model/quant/int4.py; AutoAWQ and
compressed-tensors checkpoints convert to it at load):
    qweight int32 [N, K // 8]: nibble j of word i holds the 4-bit code of k = 8i + j
    scales  [N, K // G] (x.dtype); qzeros uint8 [N, K // G]
    W[n, k] = (code - qzeros[n, k // G]) * scales[n, k // G]
At batch 1 the step streams 0.5 byte per weight instead of 2 (bf16), so decode is about
4x less memory-bound. Two kernels:
- M <= 4 (decode), ``_w4a16_gemv_kernel``: each program owns BLOCK_N rows of W over the whole
  of K and loads a contiguous [BLOCK_N, BLOCK_K / 8] block of words per step (8 KiB: 8 rows
  x 2048 K on the GPU, ``gemv_config``). A nibble becomes an fp32 without
  a conversion instruction: ``code | 0x4B000000`` is the float 2**23 + code, so one
  subtraction of 2**23 + zero gives code - zero exactly. Scales apply per group, after the
  group's products are summed (one multiply per 128 weights, not per weight). Rows of x are
  unrolled (tl.static_range), so the dequantized tile is shared by all M rows. Each nibble
  position is its own tensor in the words' layout (a per-nibble axis made by broadcasting
  could spread one word over several threads, each loading it); x comes either as 8
  strided loads, one per nibble tensor (X_VEC=False), or as one vector load of 8 values per
  word against the nibble tensors joined (tl.join) into a trailing axis (X_VEC=True, the
  GPU default: 1.3-3.3x faster on the H200 at M=1, benchmarks/quant_kernel_bench.py --sweep).
- larger M, ``_w4a16_kernel``: tl.dot tiles, the weight tile dequantized in registers; and
  ``w4a16_dense``: the whole layer dequantized to W [N, K] in one launch, for a dense GEMM
  (model/quant/int4.py picks; on the H200 the tl.dot kernel ran 3-10x slower than bf16).
Launch configs are pure functions of the shape (no autotuning: the first call may happen
inside a CUDA-graph capture's warm-up).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check, check_devices, check_tensor, is_interpreted, num_sms
from ._paged import mma

GEMV_MAX_M = 4


@triton.jit
def _w4a16_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, y_ptr,  # x [M, K]; qw [N, K/8] int32; s, z [N, K/G]; y [M, N]
    M, N, K, stride_xm, stride_qn, stride_sn, stride_zn, stride_ym,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
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
        acc += mma(x, tl.trans(w.to(x.dtype)), "ieee" if x.dtype == tl.float32 else "tf32",
                   UPCAST)
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _nibble(words, j: tl.constexpr, zz):
    """Nibble j of each word as fp32 minus the zero: float(2**23 + code) is the bit pattern
    ``code | 0x4B000000``, so subtracting zz = 2**23 + zero leaves code - zero exactly."""
    return (((words >> (4 * j)) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) - zz


@triton.jit
def _w4a16_gemv_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, y_ptr,  # x [M, K]; qw [N, K/8] int32; s, z [N, K/G]; y [M, N]
    M, N, K, stride_xm, stride_qn, stride_sn, stride_zn, stride_ym,
    GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    X_VEC: tl.constexpr, ACC_K: tl.constexpr,
):
    # ACC_K (BLOCK_M == 1): the scaled per-word sums stay per lane across K steps and are
    # reduced once after the loop (the default reduces across lanes every step); offered to
    # the sweep, not measured yet.
    # grid (cdiv(N, BLOCK_N),). A K step covers NG whole groups (or part of one group when
    # BLOCK_K < GROUP); GROUP divides K, so tiles are masked by whole groups only. The words
    # stay [BLOCK_N, NG, WPG] and each nibble position j is its own tensor of that layout
    # (no per-nibble axis whose threads would each load the same word).
    NG: tl.constexpr = BLOCK_K // GROUP if BLOCK_K >= GROUP else 1
    WPG: tl.constexpr = BLOCK_K // NG // 8  # words per group (chunk) in a tile
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    n_mask = offs_n < N
    n64 = offs_n.to(tl.int64)  # N * K / 8 may pass 2**31 for lm_head-sized layers
    offs_g = tl.arange(0, NG)
    offs_w = offs_g[:, None] * WPG + tl.arange(0, WPG)[None, :]  # [NG, WPG] word in the tile
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    AN: tl.constexpr = BLOCK_N if ACC_K else 1
    AG: tl.constexpr = NG if ACC_K else 1
    AW: tl.constexpr = WPG if ACC_K else 1
    acc3 = tl.zeros((AN, AG, AW), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        g_mask = k0 + offs_g * (WPG * 8) < K  # [NG]
        words = tl.load(qw_ptr + n64[:, None, None] * stride_qn + (k0 // 8 + offs_w)[None, :, :],
                        mask=n_mask[:, None, None] & g_mask[None, :, None], other=0)
        g = k0 // GROUP + offs_g  # [NG] group index (one group when BLOCK_K < GROUP)
        sz_mask = n_mask[:, None] & g_mask[None, :]
        scale = tl.load(s_ptr + n64[:, None] * stride_sn + g[None, :], mask=sz_mask,
                        other=0.0).to(tl.float32)  # [BLOCK_N, NG]
        zz = tl.load(z_ptr + n64[:, None] * stride_zn + g[None, :], mask=sz_mask,
                     other=0).to(tl.float32)[:, :, None] + 8388608.0  # 2**23 + zero
        w0, w1 = _nibble(words, 0, zz), _nibble(words, 1, zz)
        w2, w3 = _nibble(words, 2, zz), _nibble(words, 3, zz)
        w4, w5 = _nibble(words, 4, zz), _nibble(words, 5, zz)
        w6, w7 = _nibble(words, 6, zz), _nibble(words, 7, zz)
        if X_VEC:  # the 8 nibble tensors joined into [BN, NG, WPG, 8] (new axes in-thread)
            wv = tl.join(tl.join(tl.join(w0, w4), tl.join(w2, w6)),
                         tl.join(tl.join(w1, w5), tl.join(w3, w7)))
            wv = tl.reshape(wv, (BLOCK_N, NG, WPG, 8))  # [..., j] = nibble j
        for r in tl.static_range(BLOCK_M):  # every row reuses the dequantized tile
            xp = x_ptr + r * stride_xm + k0 + offs_w * 8  # [NG, WPG]: nibble 0 of each word
            xm = g_mask[:, None] & (tl.full((1, 1), r, tl.int32) < M)
            if X_VEC:  # x as 8 consecutive values per word: one vector load
                xv = tl.load(xp[:, :, None] + tl.arange(0, 8)[None, None, :], mask=xm[:, :, None],
                             other=0.0).to(tl.float32)
                t = tl.sum(wv * xv[None, :, :, :], axis=3)
            else:  # x as 8 strided loads, one per nibble tensor
                t = w0 * tl.load(xp, mask=xm, other=0.0).to(tl.float32)[None, :, :]
                t += w1 * tl.load(xp + 1, mask=xm, other=0.0).to(tl.float32)[None, :, :]
                t += w2 * tl.load(xp + 2, mask=xm, other=0.0).to(tl.float32)[None, :, :]
                t += w3 * tl.load(xp + 3, mask=xm, other=0.0).to(tl.float32)[None, :, :]
                t += w4 * tl.load(xp + 4, mask=xm, other=0.0).to(tl.float32)[None, :, :]
                t += w5 * tl.load(xp + 5, mask=xm, other=0.0).to(tl.float32)[None, :, :]
                t += w6 * tl.load(xp + 6, mask=xm, other=0.0).to(tl.float32)[None, :, :]
                t += w7 * tl.load(xp + 7, mask=xm, other=0.0).to(tl.float32)[None, :, :]
            if ACC_K:  # one row: per-lane sums, reduced after the loop
                acc3 += t * scale[:, :, None]
            else:
                row = tl.sum(tl.sum(t, axis=2) * scale, axis=1)  # group sums, then scales: [BN]
                acc = tl.where(offs_m[:, None] == r, acc + row[None, :], acc)
    if ACC_K:
        acc += tl.sum(tl.sum(acc3, axis=2), axis=1)[None, :]
    tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=(offs_m < M)[:, None] & n_mask[None, :])


def gemv_config(m: int, n: int, k: int, group: int, sms: int, interpreted: bool
                ) -> dict[str, int]:
    """BLOCK_M/N/K and warps of the M <= 4 kernel (pure function of the shape)."""
    bm = triton.next_power_of_2(m)
    if interpreted:  # small tiles keep the numpy interpreter quick; 2 groups per step
        return {"BLOCK_M": bm, "BLOCK_N": 8, "BLOCK_K": min(2 * group, 64), "X_VEC": False,
                "ACC_K": False, "num_warps": 4}
    # 8 rows of W per program, 2048 K (8 KiB of packed weights) per step, x as one vector
    # load per word: the fastest of the sweep (benchmarks/quant_kernel_bench.py --sweep) or
    # within 3% of it on all four Llama-3.1-8B layers on the H200 at M=1 (down 74.5 -> 22.4
    # us, o 22.3 -> 7.3 against the earlier 4 rows x 4096, per-nibble x loads)
    bn = 8
    bk = max(min(16384 // bn, triton.next_power_of_2(k)), min(group, 128))
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "X_VEC": True, "ACC_K": False,
            "num_warps": 8, "num_stages": 2}


def _launch_config(m: int, group: int, interpreted: bool) -> dict[str, int | bool]:
    """BLOCK_M/N/K, warps and stages of the tl.dot kernel per M bucket (M > GEMV_MAX_M)."""
    if interpreted:  # small tiles keep the numpy interpreter quick
        return {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": min(group, 32), "num_warps": 4, "num_stages": 1}
    if m <= 16:  # N / 16 programs: 256 for a 4096-wide layer, ~2 per SM
        return {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": min(group, 128), "num_warps": 4, "num_stages": 4}
    if m <= 64:
        return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": min(group, 64), "num_warps": 4, "num_stages": 3}
    return {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": min(group, 64),
            "num_warps": 8, "num_stages": 3}


def w4a16_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                 qzeros: torch.Tensor, group_size: int, out: torch.Tensor | None = None,
                 config: dict[str, int] | None = None) -> torch.Tensor:
    """x: [M, K] fp16/bf16/fp32 (unit stride in K); qweight: int32 [N, K // 8];
    scales: [N, K // G] of x.dtype; qzeros: uint8 [N, K // G]; group_size G: a power of two
    >= 8 dividing K. Returns out [M, N] of x.dtype (optionally preallocated). ``config``
    overrides launch settings of the kernel M selects (BLOCK_N, BLOCK_K: powers of two,
    BLOCK_K >= 8; num_warps, num_stages): tests and the benchmark's sweep."""
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
    if config:
        bk = config.get("BLOCK_K", 8)
        check(bk >= 8 and bk & (bk - 1) == 0 and (m <= GEMV_MAX_M or bk <= group_size),
              f"config BLOCK_K must be a power of two >= 8 (<= group_size above "
              f"{GEMV_MAX_M} rows), got {bk}")
    if m <= GEMV_MAX_M:
        gcfg = gemv_config(m, n, k, group_size, num_sms(x.device), interp) | (config or {})
        gcfg["ACC_K"] = bool(gcfg.get("ACC_K")) and m == 1  # per-lane sums: one row only
        _w4a16_gemv_kernel[(triton.cdiv(n, gcfg["BLOCK_N"]),)](
            x, qweight, scales, qzeros, out, m, n, k, x.stride(0), qweight.stride(0),
            scales.stride(0), qzeros.stride(0), out.stride(0), GROUP=group_size, **gcfg)
        return out
    cfg = _launch_config(m, group_size, interp) | (config or {})
    grid = (triton.cdiv(n, int(cfg["BLOCK_N"])), triton.cdiv(m, int(cfg["BLOCK_M"])))
    _w4a16_kernel[grid](
        x, qweight, scales, qzeros, out, m, n, k, x.stride(0), qweight.stride(0),
        scales.stride(0), qzeros.stride(0), out.stride(0), GROUP=group_size,
        UPCAST=interp and x.dtype == torch.bfloat16, **cfg)
    return out


@triton.jit
def _w4a16_dense_kernel(
    qw_ptr, s_ptr, z_ptr, w_ptr,  # qw [N, K/8] int32; s, z [N, K/G]; w [N, K] of s's dtype
    N, KW, stride_qn, stride_sn, stride_zn, stride_wn,
    GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr,
):
    # grid (cdiv(N, BLOCK_N), cdiv(KW, BLOCK_W)): a [BLOCK_N, BLOCK_W] tile of words becomes
    # [BLOCK_N, 8 * BLOCK_W] weights; a word's 8 nibbles share one group (GROUP >= 8)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_w = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    n64 = offs_n.to(tl.int64)  # N * K may pass 2**31
    mask = (offs_n < N)[:, None] & (offs_w < KW)[None, :]
    words = tl.load(qw_ptr + n64[:, None] * stride_qn + offs_w[None, :], mask=mask, other=0)
    g = (offs_w * 8) // GROUP
    scale = tl.load(s_ptr + n64[:, None] * stride_sn + g[None, :], mask=mask, other=0.0).to(tl.float32)
    zero = tl.load(z_ptr + n64[:, None] * stride_zn + g[None, :], mask=mask, other=0).to(tl.float32)
    nib = tl.arange(0, 8)
    codes = (words[:, :, None] >> (nib * 4)[None, None, :]) & 0xF  # [BLOCK_N, BLOCK_W, 8]
    w = (codes.to(tl.float32) - zero[:, :, None]) * scale[:, :, None]
    offs_k = offs_w[None, :, None] * 8 + nib[None, None, :]
    tl.store(w_ptr + n64[:, None, None] * stride_wn + offs_k, w.to(w_ptr.dtype.element_ty),
             mask=mask[:, :, None])


def w4a16_dense(qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor,
                group_size: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Runtime INT4 layout -> W [N, K] in scales.dtype, in one launch, bit-identical to
    :func:`w4a16_dequantize` (fp32 (code - zero) * scale, one rounding). For inputs of many
    rows, where dequantizing once and running the dense GEMM beats dequantizing in every
    tile (model/quant/int4.py)."""
    check_tensor("qweight", qweight, (None, None), (torch.int32,))
    n, kw = qweight.shape
    k = kw * 8
    check(group_size >= 8 and group_size & (group_size - 1) == 0 and k % group_size == 0,
          f"group_size must be a power of two >= 8 dividing K={k}, got {group_size}")
    check_tensor("scales", scales, (n, k // group_size), (torch.float32, torch.float16, torch.bfloat16))
    check_tensor("qzeros", qzeros, (n, k // group_size), (torch.uint8,))
    if out is None:
        out = torch.empty((n, k), dtype=scales.dtype, device=qweight.device)
    check_tensor("out", out, (n, k), (scales.dtype,))
    check_devices(_w4a16_dense_kernel, qweight=qweight, scales=scales, qzeros=qzeros, out=out)
    if n == 0 or k == 0:
        return out
    # 16 rows x 64 words: 4 KiB of packed weights in, 16 KiB of bf16 out per program
    bn, bw = (8, 8) if is_interpreted(_w4a16_dense_kernel) else (16, 64)
    _w4a16_dense_kernel[(triton.cdiv(n, bn), triton.cdiv(kw, bw))](
        qweight, scales, qzeros, out, n, kw, qweight.stride(0), scales.stride(0),
        qzeros.stride(0), out.stride(0), GROUP=group_size, BLOCK_N=bn, BLOCK_W=bw,
        num_warps=4)
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
