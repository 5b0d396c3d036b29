"""The FP8 activation quantization fused into RMSNorm and SiLU-and-mul (kernels/rms_norm.py
``rms_norm_fp8`` / ``add_rms_norm_fp8``, kernels/silu_and_mul.py ``silu_and_mul_fp8``): the
fused kernels give the bytes of the unfused pair (16-bit kernel, then
``per_token_quant_fp8``)."""

from __future__ import annotations

import inflight.kernels as K
import pytest
import torch

DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def _assert_same(got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor]
                 ) -> None:
    (q, s), (qr, sr) = got, want
    assert q.dtype == torch.float8_e4m3fn and q.shape == qr.shape
    assert s.dtype == torch.float32 and s.shape == sr.shape == (q.shape[0], 1)
    assert torch.equal(s, sr), f"scales differ: {s.flatten().tolist()} vs {sr.flatten().tolist()}"
    bad = (q.view(torch.uint8) != qr.view(torch.uint8)).nonzero()
    assert bad.numel() == 0, (f"{bad.shape[0]} e4m3 codes differ, first at {bad[0].tolist()}: "
                              f"{q[tuple(bad[0])].float()} vs {qr[tuple(bad[0])].float()}")


def _rows(t: int, h: int, dtype: torch.dtype, device: torch.device, seed: int) -> torch.Tensor:
    """[t, h] over many magnitudes per row, with row 1 (if any) all zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, h, generator=g) * torch.logspace(-2, 2, t)[:, None]
    if t > 1:
        x[1] = 0
    return x.to(device=device, dtype=dtype)


def _scales(device: torch.device) -> list[torch.Tensor | None]:
    # dynamic, and a small static scale (many values saturate at +-448)
    return [None, torch.tensor(0.01, device=device)]


# --------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t,h", [(1, 1), (3, 100), (5, 257), (4, 64)])
def test_rms_norm_fp8_equals_norm_then_quant(dtype: torch.dtype, t: int, h: int,
                                             device: torch.device) -> None:
    x = _rows(t, h, dtype, device, t * 1000 + h)
    # weights over five decades: small outputs land on e4m3 subnormals after the row's scale
    g = torch.Generator().manual_seed(h)
    w = (torch.randn(h, generator=g) * torch.logspace(-4, 1, h)).to(device=device, dtype=dtype)
    for static in _scales(device):
        got = K.rms_norm_fp8(x, w, 1e-6, static)
        _assert_same(got, K.per_token_quant_fp8(K.rms_norm(x, w, 1e-6), static))
        if t > 1 and static is None:  # the zero row: the 1e-12 floor, all codes +-0
            assert got[1][1].item() == pytest.approx(1e-12) and not got[0][1].float().any()
        if static is not None:
            assert (got[1] == 0.01).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t,h", [(1, 24), (5, 200), (3, 257)])
def test_add_rms_norm_fp8_equals_add_norm_then_quant(dtype: torch.dtype, t: int, h: int,
                                                     device: torch.device) -> None:
    x = _rows(t, h, dtype, device, t + h)
    res = _rows(t, h, dtype, device, t + h + 1)
    if t > 1:
        x[2] = -res[2]  # the sum is a zero row
    w = (torch.rand(h, device=device) + 0.5).to(dtype)
    out, new_res = K.add_rms_norm(x, res, w, 1e-5)
    for static in _scales(device):
        q, s, r = K.add_rms_norm_fp8(x, res, w, 1e-5, static)
        _assert_same((q, s), K.per_token_quant_fp8(out, static))
        assert torch.equal(r, new_res)


def test_norm_fp8_strided_rows(device: torch.device) -> None:
    base = torch.randn(6, 160, device=device, dtype=torch.bfloat16)
    x, res = base[:, :130], base.flip(0)[:, 10:140]  # row stride 160
    w = torch.randn(130, device=device, dtype=torch.bfloat16)
    _assert_same(K.rms_norm_fp8(x, w, 1e-6), K.per_token_quant_fp8(K.rms_norm(x, w, 1e-6)))
    q, s, r = K.add_rms_norm_fp8(x, res, w, 1e-6)
    out, new_res = K.add_rms_norm(x, res, w, 1e-6)
    _assert_same((q, s), K.per_token_quant_fp8(out))
    assert torch.equal(r, new_res)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t,inter", [(1, 1), (3, 40), (2, 64), (5, 100), (3, 257)])
def test_silu_and_mul_fp8_equals_silu_then_quant(dtype: torch.dtype, t: int, inter: int,
                                                 device: torch.device) -> None:
    """Rows of up to 64 in one pass, longer ones in two (the interpreter's step is 64)."""
    x = _rows(t, 2 * inter, dtype, device, 7 * t + inter) / 4  # products within fp16's range
    for static in _scales(device):
        got = K.silu_and_mul_fp8(x, static)
        _assert_same(got, K.per_token_quant_fp8(K.silu_and_mul(x), static))
        if t > 1 and static is None:
            assert got[1][1].item() == pytest.approx(1e-12)
    strided = torch.randn(t, 2 * inter + 6, device=device).to(dtype)[:, 3 : 3 + 2 * inter]
    _assert_same(K.silu_and_mul_fp8(strided), K.per_token_quant_fp8(K.silu_and_mul(strided)))


def test_fused_launchers_reject_bad_inputs(device: torch.device) -> None:
    x = torch.randn(2, 16, device=device)
    w = torch.ones(16, device=device)
    two = torch.ones(2, device=device)
    with pytest.raises(ValueError, match="static_scale must be one fp32 value"):
        K.rms_norm_fp8(x, w, 1e-6, two)
    with pytest.raises(ValueError, match="static_scale must be one fp32 value"):
        K.add_rms_norm_fp8(x, x, w, 1e-6, two.half()[:1])
    with pytest.raises(ValueError, match="static_scale must be one fp32 value"):
        K.silu_and_mul_fp8(x, two)
    with pytest.raises(ValueError, match="must be even"):
        K.silu_and_mul_fp8(torch.randn(2, 7, device=device))
    q, s = K.silu_and_mul_fp8(torch.randn(0, 8, device=device))  # no rows: nothing launched
    assert q.shape == (0, 4) and s.shape == (0, 1)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 300])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_quant_gpu_llama_shapes(m: int, dtype: torch.dtype) -> None:
    """Llama-3.1-8B's hidden 4096 and intermediate 14336 (one pass), 70B's 28672 (two)."""
    x = torch.randn(m, 4096, device="cuda", dtype=dtype) * 3
    res = torch.randn_like(x)
    w = torch.rand(4096, device="cuda", dtype=dtype) + 0.5
    static = torch.tensor(0.02, device="cuda")
    out, _ = K.add_rms_norm(x, res, w, 1e-5)
    for sc in (None, static):
        _assert_same(K.rms_norm_fp8(x, w, 1e-5, sc), K.per_token_quant_fp8(K.rms_norm(x, w, 1e-5), sc))
        _assert_same(K.add_rms_norm_fp8(x, res, w, 1e-5, sc)[:2], K.per_token_quant_fp8(out, sc))
        for inter in (14336, 28672):
            g = torch.randn(m, 2 * inter, device="cuda", dtype=dtype) * 4
            _assert_same(K.silu_and_mul_fp8(g, sc), K.per_token_quant_fp8(K.silu_and_mul(g), sc))
