"""FP8 weight-only skinny matmul for decode: y = x @ (qweight * scale[:, None]).T, M <= 16.

    x [M, K] fp16/bf16/fp32; qweight e4m3 [N, K]; weight_scale fp32 [N] -> y [M, N] of x.dtype

At decode batch sizes a linear layer is a weight stream: the step time is weight bytes over
bandwidth. This kernel reads the e4m3 weights (1 byte each) and the activations as they are,
dequantizes in registers and accumulates in fp32: no activation quantization (no extra
launch, no per-token scale). Numerically that is W8A16 (weights e4m3 per channel,
activations unquantized), a little more accurate than the W8A8 ``_scaled_mm`` path used for
larger M (model/quant/fp8.py chooses).

Dequantization without conversion instructions: the 7 magnitude bits of an e4m3 byte moved to
bit 20 of an fp32 (sign to bit 31) form exactly the e4m3 value times 2**-120 (e4m3's
exponent bias is 7, fp32's 127; e4m3 subnormals land on fp32 subnormals, which Triton's fp32
arithmetic keeps), 3 integer ops per weight. The tl.sum path pre-scales the activations by
2**64 (exact) so that no product underflows; the tl.dot path instead scales the weights by
2**64 before their (exact) cast to bf16, so no bf16 operand is subnormal (tensor cores may
flush those). The output is scaled back by 2**56 and the per-channel scale. The NaN encoding
(0x7F) is not decoded (weights quantized by ``per_channel_fp8`` never hold it).

Two shapes of one kernel, fixed configs per (M, N, K) (no autotuning: the first call may be
inside a CUDA-graph capture's warm-up):
- M <= 4: each program owns BLOCK_N = 4 rows of W over the whole of K, BLOCK_M = M rounded
  up to a power of two, products reduced with tl.sum (no tensor-core tile wasted on 1 row);
  each K step loads a contiguous [4, 1024 / BLOCK_M] tile with 4 warps (the H200 sweep's
  fastest; ``launch_config``).
- 4 < M <= 16: tl.dot on [16, BLOCK_K] x [BLOCK_K, 16] tiles in bf16 (bf16 activations).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import _split_k as split_k
from ._common import check, check_devices, check_tensor, is_interpreted, num_sms
from ._paged import mma
from ._split_k import program_tile

MAX_M = 16
FMA_MAX_M = 4


@triton.jit
def _e4m3_to_f32_shifted(b):
    """uint8 e4m3 bit patterns -> fp32 value * 2**-120 (exact, no conversion instruction)."""
    b32 = b.to(tl.uint32)
    return (((b32 & 0x7F) << 20) | ((b32 & 0x80) << 24)).to(tl.float32, bitcast=True)


@triton.jit
def _fp8_gemv_kernel(
    x_ptr, w_ptr, s_ptr, y_ptr,  # x [M, K]; w [N, K] uint8 (e4m3 bits); s [N] fp32; y [M, N]
    M, N, K, k_per, stride_xm, stride_wn, stride_ym, stride_ys,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    USE_DOT: tl.constexpr, UPCAST: tl.constexpr, KACC: tl.constexpr,
):
    # KACC (tl.sum path): 1 reduces the products over K every step (a cross-warp reduction,
    # shared memory and a barrier per step); BLOCK_K keeps per-lane partial sums in
    # registers and reduces once after the loop (ACC_K; offered to the sweep, not measured yet)
    # grid and split-K partials: kernels/_split_k.py
    offs_n, offs_m, n_mask, m_mask, split, k_lo = program_tile(M, N, k_per, BLOCK_M, BLOCK_N)
    w_rows = w_ptr + offs_n.to(tl.int64)[:, None] * stride_wn  # int64: N * K may pass 2**31
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_M, BLOCK_N, KACC), dtype=tl.float32)
    for k0 in range(k_lo, tl.minimum(k_lo + k_per, K), BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_mask = offs_k < K
        wb = tl.load(w_rows + offs_k[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :],
                    mask=m_mask[:, None] & k_mask[None, :], other=0.0)  # [BLOCK_M, BLOCK_K]
        w = _e4m3_to_f32_shifted(wb)  # [BLOCK_N, BLOCK_K]: weight * 2**-120
        if USE_DOT:  # bf16 x only; weight * 2**-56 is a normal bf16 for every e4m3 code
            w16 = (w * 18446744073709551616.0).to(tl.bfloat16)  # * 2**64, exact
            acc += mma(x, tl.trans(w16), "tf32", UPCAST)
        else:
            xs = x.to(tl.float32) * 18446744073709551616.0  # * 2**64, exact
            prod = xs[:, None, :] * w[None, :, :]
            if KACC == 1:
                acc += tl.sum(prod, axis=2)
            else:
                acc3 += prod
    if KACC > 1:
        acc += tl.sum(acc3, axis=2)
    scale = tl.load(s_ptr + offs_n, mask=n_mask, other=0.0) * 72057594037927936.0  # * 2**56
    y = acc * scale[None, :]
    tl.store(y_ptr + split * stride_ys + offs_m[:, None] * stride_ym + offs_n[None, :],
             y.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def launch_config(m: int, n: int, k: int, sms: int, dot: bool, interpreted: bool
                  ) -> dict[str, int | bool]:
    """BLOCK_M/N/K and warps for one call (pure function of the shape: capture-safe)."""
    if interpreted:  # small tiles keep the numpy interpreter quick
        return {"BLOCK_M": 16 if dot else triton.next_power_of_2(m), "BLOCK_N": 16,
                "BLOCK_K": 32, "USE_DOT": dot, "num_warps": 4}
    if dot:
        return {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 256, "USE_DOT": True, "num_warps": 4,
                "num_stages": 4}
    bm = triton.next_power_of_2(m)
    # 4 rows of W per program, 1 KiB of each row per K step at M=1, 4 warps: the fastest of
    # the sweep (benchmarks/quant_kernel_bench.py --sweep) on all four Llama-3.1-8B layers on
    # the H200 (qkv 16.7 -> 14.2 us, gate_up 97.3 -> 58.8 against 16 rows x 512, 8 warps);
    # fewer K per step for more rows (the [BLOCK_M, BLOCK_N, BLOCK_K] product stays at <= 32
    # fp32 registers per thread)
    bn = 4
    bk = max(min(1024 // bm, triton.next_power_of_2(k)), 128)
    if m == 1 and k >= 8192:  # long rows (down, K = 14336): 16 rows, K in 4 splits; H200
        # sweep 2026-12-01: 34.0 -> 30.4 us, partial sums included
        return {"BLOCK_M": 1, "BLOCK_N": 16, "BLOCK_K": 1024, "USE_DOT": False, "SPLIT_K": 4,
                "num_warps": 4, "num_stages": 1}
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "USE_DOT": False,
            "num_warps": 4 if bm * bn * bk <= 32 * 32 * 4 else 8, "num_stages": 1}


def fp8_gemv(x: torch.Tensor, qweight: torch.Tensor, weight_scale: torch.Tensor,
             out: torch.Tensor | None = None, config: dict[str, int] | None = None
             ) -> torch.Tensor:
    """x: [M, K] fp16/bf16/fp32 with 1 <= M <= 16 (unit stride in K); qweight: e4m3 [N, K]
    (unit stride in K); weight_scale: fp32 [N]. Returns out [M, N] of x.dtype
    (optionally preallocated) = x @ (qweight * weight_scale[:, None]).T. ``config``
    overrides launch settings (BLOCK_N, BLOCK_K: powers of two, >= 16 with tl.dot;
    num_warps, num_stages; SPLIT_K: K split over that many programs per row block, fp32
    partials summed after, for more loads in flight on narrow layers; ACC_K: M <= 4 keeps
    per-lane partial sums over K and reduces once): tests and the benchmark's sweep."""
    check_tensor("x", x, (None, None))
    m, k = x.shape
    check(1 <= m <= MAX_M, f"fp8_gemv takes 1..{MAX_M} rows of x, got {m}; use a GEMM")
    check_tensor("qweight", qweight, (None, k), (torch.float8_e4m3fn,))
    n = qweight.shape[0]
    check_tensor("weight_scale", weight_scale, (n,), (torch.float32,))
    if out is None:
        out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    check_tensor("out", out, (m, n), (x.dtype,))
    dev = check_devices(_fp8_gemv_kernel, x=x, qweight=qweight, weight_scale=weight_scale,
                        out=out)
    interp = is_interpreted(_fp8_gemv_kernel)
    dot = m > FMA_MAX_M and x.dtype == torch.bfloat16
    cfg = launch_config(m, n, k, num_sms(dev), dot, interp) | (config or {})
    kacc = int(cfg["BLOCK_K"]) if cfg.pop("ACC_K", False) and not cfg["USE_DOT"] else 1
    y, k_per, split, stride_ys = split_k.plan(out, k, int(cfg["BLOCK_K"]), int(cfg.pop("SPLIT_K", 1)))
    _fp8_gemv_kernel[(triton.cdiv(n, int(cfg["BLOCK_N"])), split)](
        x, qweight.view(torch.uint8), weight_scale, y, m, n, k, k_per, x.stride(0),
        qweight.stride(0), y.stride(-2), stride_ys, UPCAST=interp and dot,
        KACC=kacc, **cfg)
    return split_k.finish(out, y)


def fp8_gemv_ref(x: torch.Tensor, qweight: torch.Tensor, weight_scale: torch.Tensor
                 ) -> torch.Tensor:
    """Torch reference: dequantize in fp32, product in fp32, cast to x.dtype."""
    w = qweight.float() * weight_scale.float()[:, None]
    return (x.float() @ w.t()).to(x.dtype)
