"""silu_and_mul against torch's F.silu(gate) * up."""

from __future__ import annotations

import pytest
import torch
from inflight.kernels import silu_and_mul, silu_and_mul_ref
from kernel_testing import ELEMENTWISE_TOL, assert_close


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("t,inter", [(1, 8), (5, 100), (3, 2500)])
def test_silu_and_mul(dtype: torch.dtype, t: int, inter: int, device: torch.device) -> None:
    x = (torch.randn(t, 2 * inter, device=device) * 4).to(dtype)
    assert_close(silu_and_mul(x), silu_and_mul_ref(x), ELEMENTWISE_TOL)


def test_silu_and_mul_out_and_strides(device: torch.device) -> None:
    base = torch.randn(4, 80, device=device)
    x = base[:, :64]  # row stride 80
    out = torch.full((4, 32), float("nan"), device=device)
    assert silu_and_mul(x, out=out) is out
    assert_close(out, silu_and_mul_ref(x), ELEMENTWISE_TOL)


def test_silu_and_mul_rejects_bad_inputs(device: torch.device) -> None:
    with pytest.raises(ValueError, match="must be even"):
        silu_and_mul(torch.randn(2, 7, device=device))
    with pytest.raises(ValueError, match="dtype"):
        silu_and_mul(torch.ones(2, 8, dtype=torch.int32, device=device))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t", [1, 257, 4096])
def test_silu_and_mul_gpu(dtype: torch.dtype, t: int) -> None:
    x = torch.randn(t, 2 * 14336, device="cuda", dtype=dtype) * 4
    assert_close(silu_and_mul(x), silu_and_mul_ref(x), ELEMENTWISE_TOL)
