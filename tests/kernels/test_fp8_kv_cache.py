"""FP8 (e4m3) paged KV cache in the Triton kernels: write, decode and prefill against the
torch references with the same per-layer scales; FP8 linear (torch._scaled_mm) on the GPU."""

from __future__ import annotations

import pytest
import torch
from inflight.kernels import (
    attention_ref,
    kv_cache_write,
    kv_cache_write_ref,
    paged_decode_attention,
    paged_prefill_attention,
)
from kernel_testing import PagedCase, make_case

FP8 = torch.float8_e4m3fn
K_SCALE, V_SCALE = 0.02, 0.05


def test_kv_cache_write_fp8_matches_reference(device: torch.device) -> None:
    t, hkv, d, bs, nb = 9, 2, 32, 4, 6
    k = torch.randn(t, hkv, d, device=device) * 4
    v = torch.randn(t, hkv, d, device=device) * 30  # some values saturate at 448 * scale
    slots = torch.randperm(nb * bs, device=device)[:t]
    caches = [torch.zeros(nb, bs, hkv, d, device=device, dtype=FP8) for _ in range(4)]
    kv_cache_write(k, v, caches[0], caches[1], slots, K_SCALE, V_SCALE)
    kv_cache_write_ref(k, v, caches[2], caches[3], slots, K_SCALE, V_SCALE)
    # the kernel multiplies by 1 / scale where the reference divides: values may round to a
    # neighbouring e4m3 code (one step = 2^-3 relative). Triton's interpreter converts to e4m3
    # less exactly (measured: 11 of 1536 codes off by up to 0.5 relative), hence its tolerance.
    rtol, same = (0.13, 0.97) if device.type == "cuda" else (0.5, 0.97)
    for got, want in ((caches[0], caches[2]), (caches[1], caches[3])):
        torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=2.0**-9)
        assert (got.view(torch.uint8) == want.view(torch.uint8)).float().mean() > same
    assert caches[1].float().abs().max() == 448.0  # saturated, not NaN


def _fp8_case(dtype: torch.dtype, device: torch.device
              ) -> tuple[PagedCase, torch.Tensor, torch.Tensor, torch.Tensor]:
    """2 decodes and a 5-token prefill chunk over e4m3 caches: (case, k cache, v cache, the
    torch reference's output)."""
    c = make_case([1, 1, 5], [7, 20, 12], hq=4, hkv=2, d=32, block_size=4, dtype=dtype, device=device)
    kc = (c.k_cache.float() / K_SCALE).clamp(-448, 448).to(FP8)
    vc = (c.v_cache.float() / V_SCALE).clamp(-448, 448).to(FP8)
    m = c.meta
    ref = attention_ref(c.q, kc, vc, m.query_start_loc, m.seq_lens, m.block_tables, 0.25, K_SCALE, V_SCALE)
    return c, kc, vc, ref


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_and_prefill_read_fp8_caches(dtype: torch.dtype, device: torch.device) -> None:
    c, kc, vc, ref = _fp8_case(dtype, device)
    m = c.meta
    out = torch.zeros_like(c.q)
    paged_decode_attention(c.q[:2], kc, vc, m.block_tables[:2], m.seq_lens[:2], 0.25, out=out[:2],
                           k_scale=K_SCALE, v_scale=V_SCALE, num_splits=2)
    paged_prefill_attention(c.q, kc, vc, m.query_start_loc[2:], m.seq_lens[2:], m.block_tables[2:],
                            0.25, m.max_query_len, out=out, k_scale=K_SCALE, v_scale=V_SCALE)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 300])
@pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 14336)])
def test_fp8_linear_scaled_mm_gpu(m: int, n: int, k: int) -> None:
    """Fused per-token quantization + cuBLASLt row-wise FP8 GEMM against the emulated W8A8
    reference (same quantization); pinned to that path at every M (the default dispatch sends
    M <= 16 to the W8A16 GEMV: tests/kernels/test_fp8_linear.py)."""
    from inflight.model.quant.fp8 import fp8_linear_cuda, fp8_linear_ref, per_channel_fp8

    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    q, s = per_channel_fp8(w)
    out, ref = fp8_linear_cuda(x, q, s, None, "scaled_mm"), fp8_linear_ref(x, q, s, None)
    torch.testing.assert_close(out.float(), ref.float(), atol=3e-2, rtol=3e-2)
    rel = (out.float() - x.float() @ w.float().t()).norm() / (x.float() @ w.float().t()).norm()
    assert rel < 0.06  # FP8 W8A8 vs bf16: a few percent relative error


@pytest.mark.parametrize("dots", ["fp16", "fp16-vt", "fp16-pairs"])
@pytest.mark.parametrize("num_splits", [1, 2])
def test_fp16_dots_over_fp8_caches(dots: str, num_splits: int, device: torch.device) -> None:
    """fp8_kv_dots fp16 / fp16-vt / fp16-pairs (FP8 caches, bf16 q): q, K, V and the
    probabilities in fp16 for the dots (fp16-vt: V loaded transposed; fp16-pairs: the cache
    read as int16 pairs, decode only); the same result as the reference within
    bf16's tolerance, decode and prefill, and q values past fp16's range clamp instead of
    turning into inf / NaN. An unknown choice is an error naming the argument."""
    c, kc, vc, ref = _fp8_case(torch.bfloat16, device)
    m = c.meta
    out = torch.zeros_like(c.q)
    paged_decode_attention(c.q[:2], kc, vc, m.block_tables[:2], m.seq_lens[:2], 0.25, out=out[:2],
                           k_scale=K_SCALE, v_scale=V_SCALE, num_splits=num_splits, fp8_kv_dots=dots)
    paged_prefill_attention(c.q, kc, vc, m.query_start_loc[2:], m.seq_lens[2:], m.block_tables[2:],
                            0.25, m.max_query_len, out=out, k_scale=K_SCALE, v_scale=V_SCALE,
                            fp8_kv_dots=dots)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)
    big = c.q[:2].clone()
    big[0, 0, 0] = 1e6  # beyond fp16's 65504: clamped
    huge = paged_decode_attention(big, kc, vc, m.block_tables[:2], m.seq_lens[:2], 0.25,
                                  k_scale=K_SCALE, v_scale=V_SCALE, fp8_kv_dots=dots)
    assert torch.isfinite(huge.float()).all()
    with pytest.raises(ValueError, match="fp8_kv_dots"):
        paged_decode_attention(c.q[:2], kc, vc, m.block_tables[:2], m.seq_lens[:2], 0.25,
                               fp8_kv_dots="fp32")
