"""w4a16_matmul (INT4 weight-only, dequantized in registers) against dequantize + F.linear."""

from __future__ import annotations

import pytest
import torch
from inflight.kernels import w4a16_matmul, w4a16_ref
from inflight.kernels.w4a16 import gemv_config
from inflight.model.quant.int4 import pack_nibbles, rtn_int4

# a K-long dot product of dequantized weights: bf16 rounds the dequantized weight, the
# reference rounds it the same way but sums in a different order
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (2e-2, 4e-3), torch.bfloat16: (1.5e-1, 3e-2)}


def _case(m: int, n: int, k: int, g: int, dtype: torch.dtype, device: torch.device):  # type: ignore[no-untyped-def]
    gen = torch.Generator().manual_seed(m * 1000 + n + k)
    codes, scales, zeros = rtn_int4(torch.randn(n, k, generator=gen) / k**0.5, g)
    x = torch.randn(m, k, generator=gen).to(device=device, dtype=dtype)
    return x, pack_nibbles(codes).to(device), scales.to(device=device, dtype=dtype), zeros.to(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m,n,k,g", [(1, 24, 64, 32), (3, 40, 128, 64), (4, 16, 256, 128),
                                     (1, 37, 96, 32), (2, 13, 384, 128), (7, 48, 64, 32),
                                     (16, 21, 96, 32), (33, 24, 128, 32)])
def test_w4a16(dtype: torch.dtype, m: int, n: int, k: int, g: int, device: torch.device) -> None:
    x, qw, s, z = _case(m, n, k, g, dtype, device)
    out, ref = w4a16_matmul(x, qw, s, z, g), w4a16_ref(x, qw, s, z, g)
    atol, rtol = TOL[dtype]
    assert out.dtype == dtype and out.shape == (m, n)
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)


@pytest.mark.parametrize("x_vec,acc_k", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("bn,bk", [(4, 512), (16, 256), (8, 32)])
def test_w4a16_gemv_gpu_sized_tiles(x_vec: bool, acc_k: bool, m: int, bn: int, bk: int,
                                    device: torch.device) -> None:
    """The decode kernel with the GPU's tile shapes on a small layer: K steps of several
    groups, a last step past K (masked by whole groups), steps within one group, N not a
    multiple of BLOCK_N; x loaded per nibble or as one vector per word; sums reduced every
    step or, ACC_K (one row only; 3 rows ignore it), once after the loop."""
    x, qw, s, z = _case(m, 21, 384, 64, torch.float32, device)
    cfg = {"BLOCK_N": bn, "BLOCK_K": bk, "X_VEC": x_vec, "ACC_K": acc_k}
    out = w4a16_matmul(x, qw, s, z, 64, config=cfg)
    torch.testing.assert_close(out, w4a16_ref(x, qw, s, z, 64), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("m", [1, 2, 4])
@pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)])
def test_w4a16_gemv_config_fills_an_h200(m: int, n: int, k: int) -> None:
    """Decode shapes of Llama-3.1-8B on 132 SMs: >= ~4 programs per SM, K steps of whole
    128-groups within the next power of two of K, <= 8 KiB of packed weights per step."""
    cfg = gemv_config(m, n, k, 128, 132, interpreted=False)
    bn, bk = cfg["BLOCK_N"], cfg["BLOCK_K"]
    assert cfg["BLOCK_M"] >= m and -(-n // bn) >= 3.8 * 132
    assert bk % 128 == 0 and bk & (bk - 1) == 0 and bk <= 2 * k and bn * bk // 2 <= 8192


def test_w4a16_rejects_bad_inputs(device: torch.device) -> None:
    x, qw, s, z = _case(2, 16, 64, 32, torch.float32, device)
    with pytest.raises(ValueError, match="group_size must be a power of two"):
        w4a16_matmul(x, qw, s, z, 48)
    with pytest.raises(ValueError, match="qweight dim 1 must be 8"):
        w4a16_matmul(x, qw[:, :4], s, z, 32)
    with pytest.raises(ValueError, match="scales dtype"):
        w4a16_matmul(x, qw, s.half(), z, 32)
    with pytest.raises(ValueError, match="config BLOCK_K must be a power of two"):
        w4a16_matmul(x, qw, s, z, 32, config={"BLOCK_K": 48})


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 4, 16, 256])
@pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)])
def test_w4a16_gpu_llama_8b_shapes(m: int, n: int, k: int) -> None:
    x, qw, s, z = _case(m, n, k, 128, torch.bfloat16, torch.device("cuda"))
    torch.testing.assert_close(w4a16_matmul(x, qw, s, z, 128).float(),
                               w4a16_ref(x, qw, s, z, 128).float(), atol=1.5e-1, rtol=3e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,k,g", [(24, 64, 32), (37, 96, 32), (13, 384, 128), (16, 72, 8),
                                   (9, 1024, 64)])
def test_w4a16_dense_is_the_reference_dequantization(dtype: torch.dtype, n: int, k: int, g: int,
                                                     device: torch.device) -> None:
    """One launch dequantizes the whole layer bit for bit as the torch reference (rows and
    words not multiples of the tile: masked; zero codes 0..15; every nibble position)."""
    from inflight.kernels import w4a16_dense, w4a16_dequantize

    _, qw, s, z = _case(1, n, k, g, dtype, device)
    z = torch.randint(0, 16, z.shape, generator=torch.Generator().manual_seed(n)).to(z)  # asymmetric
    got = w4a16_dense(qw, s, z, g)
    want = w4a16_dequantize(qw, s, z, g)
    if dtype == torch.bfloat16 and device.type == "cpu":
        # Triton's CPU interpreter truncates fp32 -> bf16 (the GPU rounds to nearest even):
        # there the kernel must give the reference's fp32 values truncated
        w32 = w4a16_dequantize(qw, s.float(), z, g)
        want = (w32.view(torch.int32) & -65536).view(torch.float32).to(dtype)
    assert got.dtype == dtype and got.shape == (n, k)
    assert torch.equal(got, want)
    out = torch.full((n, k), 7.0, dtype=dtype, device=device)
    assert w4a16_dense(qw, s, z, g, out=out) is out and torch.equal(out, want)


def test_w4a16_dense_rejects_bad_inputs(device: torch.device) -> None:
    from inflight.kernels import w4a16_dense

    _, qw, s, z = _case(1, 16, 64, 32, torch.float32, device)
    with pytest.raises(ValueError, match="group_size must be a power of two"):
        w4a16_dense(qw, s, z, 48)
    with pytest.raises(ValueError, match="scales"):
        w4a16_dense(qw, s[:, :1], z, 32)
    with pytest.raises(ValueError, match="out"):
        w4a16_dense(qw, s, z, 32, out=torch.empty(16, 63, device=device))


def test_int4_linear_path_and_each_path_against_the_reference(monkeypatch: pytest.MonkeyPatch,
                                                              device: torch.device) -> None:
    """The INT4 dispatch: the GEMV up to 4 rows, the dense dequantization + GEMM above (or
    the tl.dot kernel with INFLIGHT_INT4_GEMM=triton); each path runs its kernel and agrees
    with dequantize + F.linear."""
    import inflight.kernels as K
    from inflight.model.quant.base import KernelGuard
    from inflight.model.quant.int4 import Int4LinearMethod, int4_linear_cuda, int4_linear_path

    assert [int4_linear_path(m) for m in (1, 4, 5, 16, 4096)] == ["gemv"] * 2 + ["dense"] * 3
    assert int4_linear_path(5, "triton") == "triton" and int4_linear_path(3, "triton") == "gemv"
    monkeypatch.setenv("INFLIGHT_INT4_GEMM", "triton")
    assert int4_linear_path(8) == "triton"
    assert Int4LinearMethod("awq", "awq", 128, True).gemm == "triton"  # read at model load
    monkeypatch.setenv("INFLIGHT_INT4_GEMM", "cutlass")
    with pytest.raises(ValueError, match="INFLIGHT_INT4_GEMM must be 'dense' or 'triton', got 'cutlass'"):
        Int4LinearMethod("awq", "awq", 128, True)  # before any weight is loaded
    with pytest.raises(ValueError, match="INFLIGHT_INT4_GEMM must be"):
        int4_linear_path(8)
    monkeypatch.delenv("INFLIGHT_INT4_GEMM")
    assert Int4LinearMethod("awq", "awq", 128, True).gemm == "dense"

    seen: list[str] = []
    dense, matmul = K.w4a16_dense, K.w4a16_matmul
    monkeypatch.setattr(K, "w4a16_dense", lambda *a, **kw: (seen.append("dense"), dense(*a, **kw))[1])
    monkeypatch.setattr(K, "w4a16_matmul", lambda *a, **kw: (seen.append("matmul"), matmul(*a, **kw))[1])
    monkeypatch.setattr(KernelGuard, "failed", {})
    for m, path, kernel in [(2, None, "matmul"), (9, None, "dense"), (9, "triton", "matmul")]:
        x, qw, s, z = _case(m, 24, 128, 32, torch.float32, device)
        seen.clear()
        out = int4_linear_cuda(x, qw, s, z, 32, path)
        assert seen == [kernel] and out.shape == (m, 24)
        torch.testing.assert_close(out, w4a16_ref(x, qw, s, z, 32), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="unknown INT4 linear path"):
        int4_linear_cuda(x, qw, s, z, 32, "marlin")


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", [(6144, 4096), (28672, 4096), (4096, 14336)])
def test_w4a16_dense_gpu_llama_8b_shapes(n: int, k: int) -> None:
    from inflight.kernels import w4a16_dense, w4a16_dequantize

    _, qw, s, z = _case(1, n, k, 128, torch.bfloat16, torch.device("cuda"))
    assert torch.equal(w4a16_dense(qw, s, z, 128), w4a16_dequantize(qw, s, z, 128))
