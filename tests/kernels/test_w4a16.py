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


@pytest.mark.parametrize("x_vec", [False, True])
@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("bn,bk", [(4, 512), (16, 256), (8, 32)])
def test_w4a16_gemv_gpu_sized_tiles(x_vec: bool, m: int, bn: int, bk: int,
                                    device: torch.device) -> None:
    """The decode kernel with the GPU's tile shapes on a small layer: K steps of several
    groups, a last step past K (masked by whole groups), steps within one group, N not a
    multiple of BLOCK_N; x loaded per nibble or as one vector per word."""
    x, qw, s, z = _case(m, 21, 384, 64, torch.float32, device)
    out = w4a16_matmul(x, qw, s, z, 64, config={"BLOCK_N": bn, "BLOCK_K": bk, "X_VEC": x_vec})
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
