"""gemv (skinny x @ w.T for decode) against torch's F.linear."""

from __future__ import annotations

import pytest
import torch
from inflight.kernels import gemv, gemv_ref
from kernel_testing import assert_close

# a K-long dot product rounds like attention's reductions, not like one element-wise op
TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (2e-3, 4e-3), torch.bfloat16: (2e-2, 3e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m,n,k", [(1, 16, 32), (2, 37, 100), (3, 64, 65), (4, 50, 200)])
def test_gemv(dtype: torch.dtype, m: int, n: int, k: int, device: torch.device) -> None:
    x = torch.randn(m, k, device=device).to(dtype)
    w = (torch.randn(n, k, device=device) / k**0.5).to(dtype)
    assert_close(gemv(x, w), gemv_ref(x, w), TOL)


def test_gemv_out_and_row_strides(device: torch.device) -> None:
    x = torch.randn(2, 96, device=device)[:, :64]  # row stride 96
    w = torch.randn(40, 80, device=device)[:, :64]  # row stride 80 (a slice of a fused weight)
    out = torch.full((2, 40), float("nan"), device=device)
    assert gemv(x, w, out=out) is out
    assert_close(out, gemv_ref(x, w), TOL)


def test_gemv_rejects_bad_inputs(device: torch.device) -> None:
    with pytest.raises(ValueError, match="1..4 rows"):
        gemv(torch.randn(5, 8, device=device), torch.randn(4, 8, device=device))
    with pytest.raises(ValueError, match="w dim 1 must be 8"):
        gemv(torch.randn(1, 8, device=device), torch.randn(4, 9, device=device))
    with pytest.raises(ValueError, match="dtype"):
        gemv(torch.randn(1, 8, device=device), torch.randn(4, 8, device=device, dtype=torch.float16))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [1, 2, 4])
@pytest.mark.parametrize("n,k", [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336), (128256, 4096)])
def test_gemv_gpu_llama_8b_shapes(dtype: torch.dtype, m: int, n: int, k: int) -> None:
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    w = torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5
    assert_close(gemv(x, w), gemv_ref(x, w), TOL)
