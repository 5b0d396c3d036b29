"""Per-token FP8 quantization of activations in one launch: row absmax -> scale -> e4m3.

    x [M, K] (fp16/bf16/fp32) -> xq e4m3 [M, K], scale fp32 [M, 1], x ~= xq * scale

Dynamic (default): scale[m] = max(absmax(x[m]) / 448, 1e-12), the formula of
``model.quant.fp8.per_token_fp8``; static (``static_scale``, a one-element fp32 tensor): every
row uses that scale, and ``scale`` is it repeated per row, the row-wise layout
``torch._scaled_mm`` takes with a per-channel weight scale. Replaces the 4-6 eager torch
launches of the reference (abs, amax, divide, clamp, divide, clamp, cast) before every FP8
GEMM; it reads no host value (CUDA-graph safe).

Numerics equal the reference bit for bit: IEEE divisions (``tl.div_rn``), the clamp to
+-448, then round-to-nearest-even to e4m3. On the GPU the cast is the hardware's
(``cvt.rn.satfinite``, as torch's); Triton's CPU interpreter casts fp32 -> e4m3 wrongly (it
drops the carry into the exponent: 31.6 -> 16), so under the interpreter the kernel rounds
in integer arithmetic instead (``_e4m3_rne_bits``), which is what the CI tests check.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import check, check_devices, check_tensor, is_interpreted

FP8_MAX = 448.0
MIN_SCALE = 1e-12


@triton.jit
def _e4m3_rne_bits(v):
    """v: fp32 in [-448, 448] -> e4m3 bit patterns (uint8), round to nearest even."""
    bits = v.to(tl.uint32, bitcast=True)
    sign = (bits >> 24) & 0x80
    a = tl.abs(v)
    mag = bits & 0x7FFFFFFF
    # normal e4m3 (a >= 2**-6): drop 20 mantissa bits with round-half-even, rebias 127 -> 7
    normal = (mag + 0x7FFFF + ((mag >> 20) & 1)) >> 20
    normal = normal - ((127 - 7) << 3)
    # subnormal (a < 2**-6): code = rne(a * 2**9), 0..8 (8 is the smallest normal, 2**-6)
    sub = ((a * 512.0 + 8388608.0) - 8388608.0).to(tl.uint32)
    code = tl.where(a < 0.015625, sub, normal)
    return (code | sign).to(tl.uint8)


@triton.jit
def _store_e4m3(ptrs, x, scale, mask, SOFT_CAST: tl.constexpr):
    """x / scale, clamped to +-448, rounded to e4m3 and stored."""
    v = tl.minimum(tl.maximum(tl.div_rn(x, scale), -448.0), 448.0)
    if SOFT_CAST:
        q = _e4m3_rne_bits(v)
    else:
        q = v.to(tl.float8e4nv)
    tl.store(ptrs, q, mask=mask)


@triton.jit
def _dynamic_scale(amax):
    """A row's per-token scale from its absmax: max(amax / 448, 1e-12), an IEEE division."""
    return tl.maximum(tl.div_rn(amax, 448.0), 1e-12)


@triton.jit
def _quantize_row(v, q_ptrs, s_ptr, static_ptr, mask, STATIC: tl.constexpr,
                  SOFT_CAST: tl.constexpr):
    """One row held in registers, v fp32 [BLOCK] (0 in masked lanes) -> its scale (the static
    one, or the row's dynamic one) at s_ptr and its e4m3 codes at q_ptrs. The one-pass case of
    this file's kernel, and the FP8 output of the fused RMSNorm / SiLU-and-mul kernels."""
    if STATIC:
        scale = tl.load(static_ptr).to(tl.float32)
    else:
        scale = _dynamic_scale(tl.max(tl.abs(v), axis=0))
    tl.store(s_ptr, scale)
    _store_e4m3(q_ptrs, v, scale, mask, SOFT_CAST)


@triton.jit
def _fp8_quant_kernel(
    x_ptr, q_ptr, s_ptr, static_ptr,  # x [M, K]; q [M, K] e4m3 (uint8 view if SOFT_CAST); s [M]
    K, stride_xm, stride_qm,
    BLOCK_K: tl.constexpr, STATIC: tl.constexpr, SOFT_CAST: tl.constexpr,
    ONE_PASS: tl.constexpr,
):
    # grid (M,): one row per program. ONE_PASS (BLOCK_K >= K): the row is loaded once and
    # kept in registers; else the second pass re-reads the row (L1/L2 resident)
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_xm
    q_row = q_ptr + row * stride_qm
    offs0 = tl.arange(0, BLOCK_K)
    if ONE_PASS:
        x1 = tl.load(x_row + offs0, mask=offs0 < K, other=0.0).to(tl.float32)
        _quantize_row(x1, q_row + offs0, s_ptr + row, static_ptr, offs0 < K, STATIC, SOFT_CAST)
    else:
        if STATIC:
            scale = tl.load(static_ptr).to(tl.float32)
        else:
            amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                offs = k0 + offs0
                x = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
                amax = tl.maximum(amax, tl.abs(x))
            scale = _dynamic_scale(tl.max(amax, axis=0))
        tl.store(s_ptr + row, scale)
        for k0 in range(0, K, BLOCK_K):
            offs = k0 + offs0
            mask = offs < K
            x = tl.load(x_row + offs, mask=mask, other=0.0).to(tl.float32)
            _store_e4m3(q_row + offs, x, scale, mask, SOFT_CAST)


def per_token_quant_fp8(x: torch.Tensor, static_scale: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """x: [M, K] fp16/bf16/fp32 (unit stride in K); static_scale: None (dynamic per-token
    scales) or a one-element fp32 tensor. Returns (xq e4m3 [M, K], scale fp32 [M, 1])."""
    check_tensor("x", x, (None, None))
    m, k = x.shape
    if static_scale is not None:
        check(static_scale.numel() == 1 and static_scale.dtype == torch.float32,
              f"static_scale must be one fp32 value, got {tuple(static_scale.shape)} {static_scale.dtype}")
    xq = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=x.device)
    devs = {"x": x} if static_scale is None else {"x": x, "static_scale": static_scale}
    check_devices(_fp8_quant_kernel, **devs)
    if m == 0:
        return xq, scale
    soft = is_interpreted(_fp8_quant_kernel)
    # rows up to 16384 in one load (32 values per thread at most: down_proj's 14336 took
    # 6.5 us in two passes of 4096-wide steps on the H200, 2.1 us for K = 4096)
    block_k = min(triton.next_power_of_2(k), 64 if soft else 16384)
    warps = 1 if soft else max(4, min(16, block_k // 1024))
    _fp8_quant_kernel[(m,)](
        x, xq.view(torch.uint8) if soft else xq, scale,
        static_scale if static_scale is not None else scale,
        k, x.stride(0), xq.stride(0), BLOCK_K=block_k, STATIC=static_scale is not None,
        SOFT_CAST=soft, ONE_PASS=block_k >= k, num_warps=warps)
    return xq, scale


def per_token_quant_fp8_ref(x: torch.Tensor, static_scale: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference (the eager ops the kernel replaces)."""
    xf = x.float()
    if static_scale is None:
        amax = xf.abs().amax(dim=1, keepdim=True)
        # a true division, as the kernel's div_rn: CUDA's `tensor / 448.0` multiplies by a
        # rounded reciprocal, one ulp off for about half the scales (the first GPU run's
        # bit-exact comparisons failed on it)
        scale = (amax / torch.full_like(amax, FP8_MAX)).clamp(min=MIN_SCALE)
    else:
        scale = static_scale.float().reshape(1, 1).expand(x.shape[0], 1).contiguous()
    return (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale
