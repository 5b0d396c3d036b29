"""per_token_quant_fp8 (fused row absmax -> scale -> e4m3) against the eager torch reference:
bit-exact e4m3 codes and scales."""

from __future__ import annotations

import pytest
import torch
from inflight.kernels import per_token_quant_fp8, per_token_quant_fp8_ref
from inflight.model.quant.fp8 import per_token_fp8, quantize_fp8

FP8 = torch.float8_e4m3fn


def _assert_same(got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor]
                 ) -> None:
    (q, s), (qr, sr) = got, want
    assert q.dtype == FP8 and q.shape == qr.shape and s.dtype == torch.float32
    assert s.shape == (q.shape[0], 1)
    torch.testing.assert_close(s, sr, atol=0, rtol=0)
    bad = (q.view(torch.uint8) != qr.view(torch.uint8)).nonzero()
    assert bad.numel() == 0, (f"{bad.shape[0]} e4m3 codes differ, first at {bad[0].tolist()}: "
                              f"{q[tuple(bad[0])].float()} vs {qr[tuple(bad[0])].float()}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m,k", [(1, 1), (1, 100), (3, 64), (5, 257)])
def test_per_token_quant_matches_reference(dtype: torch.dtype, m: int, k: int,
                                           device: torch.device) -> None:
    g = torch.Generator().manual_seed(m * 1000 + k)
    # rows over many magnitudes, so values land on e4m3 subnormals as well as normals
    x = torch.randn(m, k, generator=g) * torch.logspace(-4, 3, m)[:, None]
    x = x.to(device=device, dtype=dtype)
    got = per_token_quant_fp8(x)
    _assert_same(got, per_token_quant_fp8_ref(x))
    _assert_same(got, per_token_fp8(x))  # the model's eager reference: the same formula


def test_e4m3_rounding_every_code_tie_and_neighbour(device: torch.device) -> None:
    """Row absmax 448 gives scale 1, so the kernel's cast sees the values themselves: every
    e4m3 value, every midpoint between neighbours (ties to even) and the fp32 values just
    beside each midpoint, both signs, subnormals included."""
    codes = torch.arange(0, 0x7F, dtype=torch.uint8).view(FP8).float()  # 0 .. 448, no NaN
    mids = (codes[:-1] + codes[1:]) / 2
    vals = torch.cat([codes, mids, torch.nextafter(mids, torch.zeros_like(mids)),
                      torch.nextafter(mids, torch.full_like(mids, 1e9))])
    vals = torch.cat([vals, -vals])
    x = torch.cat([torch.tensor([448.0]), vals]).reshape(1, -1).to(device)
    got = per_token_quant_fp8(x)
    assert got[1].item() == 1.0
    _assert_same(got, per_token_quant_fp8_ref(x))


@pytest.mark.parametrize("k", [40, 96])  # the row in one load / in steps (interpreter: 64)
def test_zero_row_and_static_scale(k: int, device: torch.device) -> None:
    x = torch.randn(4, k, device=device, dtype=torch.bfloat16) * 3
    x[1] = 0  # absmax 0: the 1e-12 floor, all codes 0
    q, s = per_token_quant_fp8(x)
    assert s[1].item() == pytest.approx(1e-12) and not q[1].view(torch.uint8).any()
    _assert_same((q, s), per_token_quant_fp8_ref(x))
    static = torch.tensor(0.02, device=device)  # small: many values saturate at +-448
    got = per_token_quant_fp8(x, static)
    _assert_same(got, per_token_quant_fp8_ref(x, static))
    assert torch.equal(got[0].view(torch.uint8), quantize_fp8(x, static).view(torch.uint8))
    assert (got[1] == 0.02).all()


def test_per_token_quant_rejects_bad_inputs(device: torch.device) -> None:
    x = torch.randn(2, 16, device=device)
    with pytest.raises(ValueError, match="static_scale must be one fp32 value"):
        per_token_quant_fp8(x, torch.ones(2, device=device))
    with pytest.raises(ValueError, match="x must be 2-D"):
        per_token_quant_fp8(x[0])
    with pytest.raises(ValueError, match="stride 1"):
        per_token_quant_fp8(x.t())


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 300])
@pytest.mark.parametrize("k", [4096, 14336])
def test_per_token_quant_gpu_llama_8b_shapes(m: int, k: int) -> None:
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16) * 4
    _assert_same(per_token_quant_fp8(x), per_token_quant_fp8_ref(x))


def test_references_divide_by_a_tensor_not_a_python_number() -> None:
    """PyTorch's CUDA ``tensor / 448.0`` multiplies by the rounded reciprocal (one ulp off for
    about half the scales), so on the GPU the eager formulas disagreed with the kernel's IEEE
    division: 15 of the first GPU run's failures. Every scale formula divides by a tensor."""
    from inflight.model.quant.fp8 import per_channel_fp8
    from torch.overrides import TorchFunctionMode

    class ScalarDivisions(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[str] = []

        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            name = getattr(func, "__name__", "")
            if name in ("div", "__truediv__", "true_divide") and len(args) > 1 \
                    and isinstance(args[1], (int, float)):
                self.seen.append(name)
            return func(*args, **(kwargs or {}))

    x = torch.randn(3, 40)
    for fn in (per_token_quant_fp8_ref, per_token_fp8, per_channel_fp8):
        with ScalarDivisions() as mode:
            fn(x)
        assert mode.seen == [], f"{fn.__name__} divides by a Python number: {mode.seen}"
    # and the result is the correctly rounded quotient (float64 division, rounded once)
    _, s = per_token_fp8(x)
    want = (x.double().abs().amax(dim=1, keepdim=True) / 448).float()
    assert torch.equal(s, want)
