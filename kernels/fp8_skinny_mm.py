"""FP8-weight matmul for a few rows on the tensor cores: y = x @ (qweight * scale[:, None]).T

    x [M, K] bf16/fp16 (or e4m3 with per-row scales); qweight e4m3 [N, K]; weight_scale fp32 [N]
    -> y [M, N] in the activation dtype, 1 <= M <= 16

Why: the register GEMV (``fp8_gemv``) spends ~7 integer and float instructions per weight byte
on decoding and multiplying, and on the H200 it streamed Llama-3.1-8B's layers at only
1.6-2.5 TB/s of the 4.8 (benchmarks/results/2026-12-01b-h200-quant). Here the weights go from
memory to the tensor cores as they are, so the kernel is a stream of weight bytes:

- "swap AB": the weight tile is the matrix product's left operand, [BLOCK_N, BLOCK_K] (rows of
  W = output channels; 16 or more rows, so the tensor-core tile is full), and the few rows of
  x, padded to BLOCK_M = 16, are the right operand [BLOCK_K, 16]; y.T = W @ x.T, the
  accumulator is [BLOCK_N, 16] and is stored transposed.
- ``A8`` (W8A8): x arrives quantized, e4m3 with one fp32 scale per row (``per_token_quant_fp8``,
  one launch before), and the product is e4m3 x e4m3 on the FP8 tensor cores; the loop does
  no arithmetic at all.
- W8A16 (``A8=False``): x stays unquantized; weights are converted e4m3 -> fp16 (one
  conversion instruction per two weights, exact: every e4m3 value is an fp16) and x to fp16
  after a scaling by 2**-8 (exact; it keeps activations up to 2**24 in fp16's range; values
  below 2**-6 lose relative precision as fp16 subnormals, a contribution under 2**-17 of the
  unit per element), fp16 x fp16 on the tensor cores, fp32 accumulation; no extra launch.

``SPLIT_K`` > 1 splits K over programs for narrow layers (kernels/_split_k.py). Launch
settings are a pure function of the shape (capture-safe, no autotuning); ``config``
overrides them (tests, the benchmark's sweep).

Under Triton's CPU interpreter (``SOFT``) e4m3 is decoded exactly to fp32 in integer
arithmetic (the interpreter's fp8 casts and dots are not the hardware's) and the product is
an fp32 ``ieee`` dot of the same values: the CI tests check the same numbers as the GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _split_k as split_k
from ._common import check, check_devices, check_tensor, is_interpreted
from ._split_k import program_tile
from .fp8_gemv import _e4m3_to_f32_shifted

MAX_M = 16
_X_SHIFT = 0.00390625  # 2**-8: x in fp16 (W8A16 path), undone on the output


@triton.jit
def _e4m3_value(b):
    """uint8 e4m3 bit patterns -> their exact fp32 values (no NaN code)."""
    return _e4m3_to_f32_shifted(b) * 1.329227995784916e36  # * 2**120: bias 7 -> fp32's 127


@triton.jit
def _fp8_skinny_kernel(
    x_ptr, xs_ptr, w_ptr, s_ptr, y_ptr,  # x [M, K]; xs [M] (A8); w [N, K] e4m3; s [N]; y [M, N]
    M, N, K, k_per, stride_xm, stride_wn, stride_ym, stride_ys,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    A8: tl.constexpr, SOFT: tl.constexpr,
):
    # grid and split-K partials: kernels/_split_k.py
    offs_n, offs_m, n_mask, m_mask, split, k_lo = program_tile(M, N, k_per, BLOCK_M, BLOCK_N)
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn  # int64: N * K may pass 2**31
    x_rows = x_ptr + offs_m[:, None] * stride_xm
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k0 in range(k_lo, tl.minimum(k_lo + k_per, K), BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        w = tl.load(w_rows + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0)
        x = tl.load(x_rows + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0)
        if not SOFT:  # e4m3 arrives as uint8 bits (masked lanes 0: fp8 has no `other`)
            w = w.to(tl.float8e4nv, bitcast=True)
            if A8:
                x = x.to(tl.float8e4nv, bitcast=True)
        if SOFT:
            if A8:
                xf = _e4m3_value(x)
            else:
                xf = (x.to(tl.float32) * 0.00390625).to(tl.float16).to(tl.float32)
            acc = tl.dot(_e4m3_value(w), tl.trans(xf), acc, input_precision="ieee")
        elif A8:
            acc = tl.dot(w, tl.trans(x), acc)
        else:
            xh = (x.to(tl.float32) * 0.00390625).to(tl.float16)
            acc = tl.dot(w.to(tl.float16), tl.trans(xh), acc)
    scale = tl.load(s_ptr + offs_n, mask=n_mask, other=0.0)
    if A8:
        y = acc * scale[:, None] * tl.load(xs_ptr + offs_m, mask=m_mask, other=0.0)[None, :]
    else:
        y = acc * (scale * 256.0)[:, None]  # undo the 2**-8 of x
    tl.store(y_ptr + split * stride_ys + offs_m[None, :] * stride_ym + offs_n[:, None],
             y.to(y_ptr.dtype.element_ty), mask=n_mask[:, None] & m_mask[None, :])


def launch_config(n: int, k: int, a8: bool, interpreted: bool) -> dict[str, int]:
    """BLOCK_N/K, SPLIT_K, warps and stages for one call (pure function of the weight's
    shape: the sweep found the same best configs at M = 1 and 16)."""
    if interpreted:  # small tiles keep the numpy interpreter quick
        return {"BLOCK_N": 16, "BLOCK_K": 32, "num_warps": 4}
    # The H200 sweep (benchmarks/quant_kernel_bench.py --sweep-skinny, 2026-12-01,
    # benchmarks/results/2026-12-01c-h200-fp8tc), Llama-3.1-8B layers, M = 1 and 16 alike:
    # W8A8: 64 rows x 256 of K, 4 stages where N / 64 gives the 132 SMs enough programs (qkv
    # 7.9 us, 3.2 TB/s), 128 of K on the widest layer (gate_up 37.2 -> 30.2 us); a narrow
    # layer with long rows splits K in 4 (down 23.5 -> 20.1), a narrow short one takes 16 rows
    # with 2 warps (o 7.7 -> 7.3). W8A16 (fp16 operands converted in registers): 32 rows x 256
    # everywhere (K split in 2 on down).
    long_rows = k >= 8192
    if not a8:
        return {"BLOCK_N": 32, "BLOCK_K": 256, "SPLIT_K": 2 if long_rows else 1, "num_warps": 4,
                "num_stages": 4}
    if n >= 80 * 64:
        return {"BLOCK_N": 64, "BLOCK_K": 128 if n >= 16384 else 256, "SPLIT_K": 1,
                "num_warps": 4, "num_stages": 4}
    if long_rows:
        return {"BLOCK_N": 64, "BLOCK_K": 256, "SPLIT_K": 4, "num_warps": 4, "num_stages": 4}
    return {"BLOCK_N": 16, "BLOCK_K": 256, "SPLIT_K": 1, "num_warps": 2, "num_stages": 4}


def fp8_skinny_mm(x: torch.Tensor, qweight: torch.Tensor, weight_scale: torch.Tensor,
                  x_scale: torch.Tensor | None = None, out: torch.Tensor | None = None,
                  config: dict[str, int] | None = None, out_dtype: torch.dtype | None = None
                  ) -> torch.Tensor:
    """y = x @ (qweight * weight_scale[:, None]).T for 1 <= M <= 16 rows of x.

    W8A16: x [M, K] fp16/bf16 (unit stride in K), ``x_scale`` None; the output has x's dtype.
    W8A8: x [M, K] e4m3 with ``x_scale`` fp32 [M, 1] or [M] (x ~= xq * x_scale, as
    ``per_token_quant_fp8`` returns), the output ``out_dtype`` (default bf16).
    qweight: e4m3 [N, K] (unit stride in K); weight_scale: fp32 [N]. ``out`` may be
    preallocated. ``config`` overrides launch settings (BLOCK_N >= 16 and BLOCK_K >= 32,
    powers of two; SPLIT_K; num_warps, num_stages)."""
    a8 = x_scale is not None
    check_tensor("x", x, (None, None), (torch.float8_e4m3fn,) if a8 else (torch.float16, torch.bfloat16))
    m, k = x.shape
    check(1 <= m <= MAX_M, f"fp8_skinny_mm takes 1..{MAX_M} rows of x, got {m}; use a GEMM")
    check_tensor("qweight", qweight, (None, k), (torch.float8_e4m3fn,))
    n = qweight.shape[0]
    check_tensor("weight_scale", weight_scale, (n,), (torch.float32,))
    if a8:
        check(x_scale.dtype == torch.float32 and x_scale.numel() == m,
              f"x_scale must be fp32 with one value per row of x ({m}), got "
              f"{tuple(x_scale.shape)} {x_scale.dtype}")
        x_scale = x_scale.reshape(m)
        dtype = out_dtype or torch.bfloat16
    else:
        dtype = x.dtype
    if out is None:
        out = torch.empty((m, n), dtype=dtype, device=x.device)
    check_tensor("out", out, (m, n), (dtype,))
    tensors = {"x": x, "qweight": qweight, "weight_scale": weight_scale, "out": out}
    if a8:
        tensors["x_scale"] = x_scale
    dev_kernel = _fp8_skinny_kernel
    check_devices(dev_kernel, **tensors)
    soft = is_interpreted(dev_kernel)
    cfg = launch_config(n, k, a8, soft) | (config or {})
    check(int(cfg["BLOCK_N"]) >= 16 and int(cfg["BLOCK_K"]) >= 32,
          f"config BLOCK_N must be >= 16 and BLOCK_K >= 32 (tensor-core tiles), got {cfg}")
    y, k_per, split, stride_ys = split_k.plan(out, k, int(cfg["BLOCK_K"]), int(cfg.pop("SPLIT_K", 1)))
    _fp8_skinny_kernel[(triton.cdiv(n, int(cfg["BLOCK_N"])), split)](
        x.view(torch.uint8) if a8 else x, x_scale if a8 else weight_scale,
        qweight.view(torch.uint8), weight_scale, y, m, n, k, k_per,
        x.stride(0), qweight.stride(0), y.stride(-2), stride_ys,
        BLOCK_M=MAX_M, A8=a8, SOFT=soft, **cfg)
    return split_k.finish(out, y)


def fp8_skinny_mm_ref(x: torch.Tensor, qweight: torch.Tensor, weight_scale: torch.Tensor,
                      x_scale: torch.Tensor | None = None, out_dtype: torch.dtype | None = None
                      ) -> torch.Tensor:
    """Torch reference in fp32: the same operand values as the kernel (W8A16: x rounded to
    fp16 after the 2**-8 scaling), the product in fp32, cast to the output dtype."""
    w = qweight.float() * weight_scale.float()[:, None]
    if x_scale is not None:
        return (x.float() * x_scale.float().reshape(-1, 1) @ w.t()).to(out_dtype or torch.bfloat16)
    xf = (x.float() * _X_SHIFT).half().float() / _X_SHIFT
    return (xf @ w.t()).to(x.dtype)
