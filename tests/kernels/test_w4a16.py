"""w4a16_matmul (INT4 weight-only, dequantized in registers) against dequantize + F.linear."""

from __future__ import annotations

import pytest
import torch
from inflight.kernels import w4a16_matmul, w4a16_ref
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
                                     (7, 48, 64, 32), (33, 24, 128, 32)])
def test_w4a16(dtype: torch.dtype, m: int, n: int, k: int, g: int, device: torch.device) -> None:
    x, qw, s, z = _case(m, n, k, g, dtype, device)
    out, ref = w4a16_matmul(x, qw, s, z, g), w4a16_ref(x, qw, s, z, g)
    atol, rtol = TOL[dtype]
    assert out.dtype == dtype and out.shape == (m, n)
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)


def test_w4a16_rejects_bad_inputs(device: torch.device) -> None:
    x, qw, s, z = _case(2, 16, 64, 32, torch.float32, device)
    with pytest.raises(ValueError, match="group_size must be a power of two"):
        w4a16_matmul(x, qw, s, z, 48)
    with pytest.raises(ValueError, match="qweight dim 1 must be 8"):
        w4a16_matmul(x, qw[:, :4], s, z, 32)
    with pytest.raises(ValueError, match="scales dtype"):
        w4a16_matmul(x, qw, s.half(), z, 32)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 4, 16, 256])
@pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)])
def test_w4a16_gpu_llama_8b_shapes(m: int, n: int, k: int) -> None:
    x, qw, s, z = _case(m, n, k, 128, torch.bfloat16, torch.device("cuda"))
    torch.testing.assert_close(w4a16_matmul(x, qw, s, z, 128).float(),
                               w4a16_ref(x, qw, s, z, 128).float(), atol=1.5e-1, rtol=3e-2)
