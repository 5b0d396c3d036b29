"""rms_norm / add_rms_norm against the Hugging Face-order torch reference."""

from __future__ import annotations

import pytest
import torch
from inflight.kernels import add_rms_norm, add_rms_norm_ref, rms_norm, rms_norm_ref
from kernel_testing import ELEMENTWISE_TOL, assert_close

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t,h", [(1, 16), (7, 96), (3, 1000)])
def test_rms_norm(dtype: torch.dtype, t: int, h: int, device: torch.device) -> None:
    x = torch.randn(t, h, device=device).to(dtype) * 3
    w = torch.randn(h, device=device).to(dtype)
    assert_close(rms_norm(x, w, 1e-6), rms_norm_ref(x, w, 1e-6), ELEMENTWISE_TOL)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inplace", [False, True])
def test_add_rms_norm(dtype: torch.dtype, inplace: bool, device: torch.device) -> None:
    x = torch.randn(5, 200, device=device).to(dtype)
    res = torch.randn(5, 200, device=device).to(dtype)
    w = torch.rand(200, device=device).to(dtype) + 0.5
    ref_out, ref_res = add_rms_norm_ref(x, res, w, 1e-5)
    x_in, res_in = x.clone(), res.clone()
    out, new_res = add_rms_norm(x_in, res_in, w, 1e-5, inplace=inplace)
    assert_close(out, ref_out, ELEMENTWISE_TOL)
    assert_close(new_res, ref_res, ELEMENTWISE_TOL)
    if inplace:
        assert out.data_ptr() == x_in.data_ptr() and new_res.data_ptr() == res_in.data_ptr()
    else:
        assert torch.equal(x_in, x) and torch.equal(res_in, res)


def test_rms_norm_strided_rows_and_3d(device: torch.device) -> None:
    base = torch.randn(6, 160, device=device)
    x = base[:, :128]  # row stride 160
    w = torch.randn(128, device=device)
    assert_close(rms_norm(x, w, 1e-6), rms_norm_ref(x, w, 1e-6), ELEMENTWISE_TOL)
    x3 = torch.randn(4, 3, 32, device=device)  # per-head norm (qk_norm): [T, H, D]
    w3 = torch.randn(32, device=device)
    assert_close(rms_norm(x3, w3, 1e-6), rms_norm_ref(x3, w3, 1e-6), ELEMENTWISE_TOL)


def test_rms_norm_rejects_bad_inputs(device: torch.device) -> None:
    x = torch.randn(4, 64, device=device)
    with pytest.raises(ValueError, match="weight dim 0 must be 64"):
        rms_norm(x, torch.ones(32, device=device), 1e-6)
    with pytest.raises(ValueError, match="residual dtype"):
        add_rms_norm(x, x.half(), torch.ones(64, device=device), 1e-6)
    with pytest.raises(ValueError, match="stride 1"):
        rms_norm(x.t(), torch.ones(4, device=device), 1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t,h", [(1, 4096), (4096, 4096), (300, 8192)])
def test_rms_norm_gpu(dtype: torch.dtype, t: int, h: int) -> None:
    x = torch.randn(t, h, device="cuda", dtype=dtype)
    res = torch.randn(t, h, device="cuda", dtype=dtype)
    w = torch.randn(h, device="cuda", dtype=dtype)
    # on the GPU casts round to nearest even as torch does: at most one ulp apart
    assert_close(rms_norm(x, w, 1e-5), rms_norm_ref(x, w, 1e-5), ELEMENTWISE_TOL)
    out, new_res = add_rms_norm(x, res, w, 1e-5)
    ref_out, ref_res = add_rms_norm_ref(x, res, w, 1e-5)
    assert torch.equal(new_res, ref_res)
    assert_close(out, ref_out, ELEMENTWISE_TOL)
