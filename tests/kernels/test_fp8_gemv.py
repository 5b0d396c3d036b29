"""fp8_gemv (e4m3 weights dequantized in registers, unquantized activations) against
dequantize + an fp32 product."""

from __future__ import annotations

import pytest
import torch
from inflight.kernels import fp8_gemv, fp8_gemv_ref
from inflight.kernels.fp8_gemv import launch_config
from kernel_testing import assert_close, fp8_weights

FP8 = torch.float8_e4m3fn
# a K-long fp32 dot product cast to the output dtype (the interpreter truncates to bf16)
TOL = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m,n,k", [(1, 37, 100), (2, 16, 65), (4, 50, 200), (5, 33, 96),
                                   (16, 40, 130)])
def test_fp8_gemv(dtype: torch.dtype, m: int, n: int, k: int, device: torch.device) -> None:
    """Odd N and K (edge tiles), M = 1..4 (tl.sum) and 5..16 (tl.dot for bf16)."""
    q, s = fp8_weights(n, k, device)
    x = torch.randn(m, k, device=device).to(dtype)
    assert_close(fp8_gemv(x, q, s), fp8_gemv_ref(x, q, s), TOL)


@pytest.mark.parametrize("dtype,m", [(torch.float32, 1), (torch.float32, 16),
                                     (torch.bfloat16, 4), (torch.bfloat16, 16)])
def test_fp8_gemv_decodes_every_code(dtype: torch.dtype, m: int, device: torch.device) -> None:
    """x = the identity reads the weights back: all 254 finite e4m3 codes (subnormals, +-448)
    in every column, times the channel scale (fp32: exactly; bf16: one rounding)."""
    codes = torch.cat([torch.arange(0, 0x7F), torch.arange(0x80, 0xFF)])  # [254], no NaN
    idx = (torch.arange(254)[:, None] + torch.arange(m)[None, :]) % 254
    q = codes[idx].to(torch.uint8).view(FP8).to(device)  # [N=254, K=m]
    s = torch.linspace(0.5, 3.0, 254).to(device)
    x = torch.eye(m).to(device=device, dtype=dtype)
    out = fp8_gemv(x, q, s)
    want = (q.float() * s[:, None]).t().contiguous()  # [m, 254]
    if dtype == torch.float32:
        assert torch.equal(out, want)
    assert_close(out, want.to(dtype), TOL)


@pytest.mark.parametrize("m,cfg", [(1, {"BLOCK_N": 4, "BLOCK_K": 2048}),
                                   (3, {"BLOCK_N": 16, "BLOCK_K": 128}),
                                   (16, {"BLOCK_N": 16, "BLOCK_K": 256})])
def test_fp8_gemv_gpu_sized_tiles(m: int, cfg: dict[str, int], device: torch.device) -> None:
    """The GPU's tile shapes on a small layer: one K step longer than K, N % BLOCK_N != 0."""
    q, s = fp8_weights(21, 200, device)
    x = torch.randn(m, 200, device=device, dtype=torch.bfloat16)
    assert_close(fp8_gemv(x, q, s, config=cfg), fp8_gemv_ref(x, q, s), TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,cfg", [(1, {"BLOCK_N": 4, "BLOCK_K": 64}), (3, {"BLOCK_N": 8, "BLOCK_K": 32}),
                                   (2, {"BLOCK_N": 4, "BLOCK_K": 32, "SPLIT_K": 3})])
def test_fp8_gemv_acc_k(dtype: torch.dtype, m: int, cfg: dict[str, int], device: torch.device) -> None:
    """ACC_K: per-lane partial sums over K, reduced once after the loop (with split K too):
    the reference's result on odd N and K, every e4m3 code decoded."""
    q, s = fp8_weights(37, 200, device)
    x = torch.randn(m, 200, device=device).to(dtype)
    assert_close(fp8_gemv(x, q, s, config={**cfg, "ACC_K": True}), fp8_gemv_ref(x, q, s), TOL)
    codes = torch.cat([torch.arange(0, 0x7F), torch.arange(0x80, 0xFF)])  # [254], no NaN
    qc = codes.to(torch.uint8).view(FP8).reshape(254, 1).to(device)
    sc = torch.linspace(0.5, 3.0, 254).to(device)
    got = fp8_gemv(torch.ones(1, 1, device=device), qc, sc, config={**cfg, "ACC_K": True})
    assert torch.equal(got, (qc.float() * sc[:, None]).t())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,split,cfg", [(1, 2, {"BLOCK_N": 8, "BLOCK_K": 32}),
                                         (3, 3, {"BLOCK_N": 16, "BLOCK_K": 32}),
                                         (2, 16, {"BLOCK_N": 4, "BLOCK_K": 64}),
                                         (8, 2, {"BLOCK_N": 16, "BLOCK_K": 64})])
def test_fp8_gemv_split_k(dtype: torch.dtype, m: int, split: int, cfg: dict[str, int],
                          device: torch.device) -> None:
    """K split over programs (the last split shorter; more splits than K steps: fewer run),
    fp32 partials summed in order: the reference's result, deterministic, into a given out."""
    q, s = fp8_weights(37, 200, device)
    x = torch.randn(m, 200, device=device).to(dtype)
    got = fp8_gemv(x, q, s, config={**cfg, "SPLIT_K": split})
    assert_close(got, fp8_gemv_ref(x, q, s), TOL)
    if dtype == torch.float32:  # the same partial sums in the same order: bit for bit
        assert torch.equal(got, fp8_gemv(x, q, s, config={**cfg, "SPLIT_K": split}))
    out = torch.full((m, 37), 5.0, device=device, dtype=dtype)
    assert fp8_gemv(x, q, s, out=out, config={**cfg, "SPLIT_K": split}) is out
    assert_close(out, fp8_gemv_ref(x, q, s), TOL)
    with pytest.raises(ValueError, match="SPLIT_K must be >= 1"):
        fp8_gemv(x, q, s, config={**cfg, "SPLIT_K": 0})


def test_fp8_gemv_out_and_row_strides(device: torch.device) -> None:
    q, s = fp8_weights(40, 80, device)
    q = q[:, :64]  # row stride 80: a slice of a wider weight
    x = torch.randn(3, 96, device=device)[:, :64]  # row stride 96
    out = torch.full((3, 40), float("nan"), device=device)
    assert fp8_gemv(x, q, s, out=out) is out
    assert_close(out, fp8_gemv_ref(x, q, s), TOL)


def test_fp8_gemv_rejects_bad_inputs(device: torch.device) -> None:
    q, s = fp8_weights(16, 32, device)
    x = torch.randn(1, 32, device=device)
    with pytest.raises(ValueError, match="1..16 rows"):
        fp8_gemv(torch.randn(17, 32, device=device), q, s)
    with pytest.raises(ValueError, match="qweight dtype"):
        fp8_gemv(x, q.float(), s)
    with pytest.raises(ValueError, match="weight_scale dim 0 must be 16"):
        fp8_gemv(x, q, s[:8])


@pytest.mark.parametrize("m", [1, 2, 4])
@pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)])
def test_launch_config_fills_an_h200(m: int, n: int, k: int) -> None:
    """Decode shapes of Llama-3.1-8B on 132 SMs: >= ~4 programs per SM (row blocks x K
    splits; M = 1 splits K >= 8192 in 4), a power-of-two K step within K, <= 32 fp32 product
    registers per thread (128 with split K), <= 16 KiB of weights per step."""
    cfg = launch_config(m, n, k, 132, dot=False, interpreted=False)
    bm, bn, bk = (int(cfg[key]) for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
    split = int(cfg.get("SPLIT_K", 1))
    assert split == (4 if m == 1 and k >= 8192 else 1)
    assert bm >= m and -(-n // bn) * split >= 3.8 * 132
    assert bk & (bk - 1) == 0 and 128 <= bk <= k
    regs = 128 if split > 1 else 32  # the measured split config holds [16, 1024] per 4 warps
    assert bm * bn * bk <= regs * 32 * int(cfg["num_warps"]) and bn * bk <= 16384


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [1, 3, 8, 16])
@pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)])
def test_fp8_gemv_gpu_llama_8b_shapes(dtype: torch.dtype, m: int, n: int, k: int) -> None:
    q, s = fp8_weights(n, k, torch.device("cuda"))
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    assert_close(fp8_gemv(x, q, s), fp8_gemv_ref(x, q, s), TOL)
