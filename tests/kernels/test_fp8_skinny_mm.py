"""fp8_skinny_mm (FP8 weights on the tensor cores, swap AB, M <= 16) against its fp32 reference
and against the model's W8A8 emulation."""

from __future__ import annotations

import pytest
import torch
from inflight.kernels import per_token_quant_fp8
from inflight.kernels.fp8_skinny_mm import fp8_skinny_mm, fp8_skinny_mm_ref
from inflight.model.quant.fp8 import fp8_linear_ref
from kernel_testing import assert_close, fp8_weights

FP8 = torch.float8_e4m3fn
# a K-long fp32 dot product cast to the output dtype (the interpreter truncates to bf16)
TOL = {torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("m,n,k", [(1, 37, 100), (2, 16, 65), (5, 33, 96), (16, 40, 130)])
def test_w8a16(dtype: torch.dtype, m: int, n: int, k: int, device: torch.device) -> None:
    """Odd N and K (edge tiles in both), M = 1..16 rows padded to one 16-row tile."""
    q, s = fp8_weights(n, k, device)
    x = torch.randn(m, k, device=device).to(dtype)
    assert_close(fp8_skinny_mm(x, q, s), fp8_skinny_mm_ref(x, q, s), TOL)


@pytest.mark.parametrize("m,n,k", [(1, 37, 100), (3, 48, 64), (16, 40, 130)])
def test_w8a8_equals_the_model_emulation(m: int, n: int, k: int, device: torch.device) -> None:
    """Quantized x (per_token_quant_fp8) in, the same numbers as the CPU path of FP8 layers."""
    q, s = fp8_weights(n, k, device)
    x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
    xq, sx = per_token_quant_fp8(x)
    out = fp8_skinny_mm(xq, q, s, x_scale=sx)
    assert_close(out, fp8_skinny_mm_ref(xq, q, s, sx), TOL)
    assert_close(out, fp8_linear_ref(x, q, s, None), TOL)


@pytest.mark.parametrize("a8", [False, True])
def test_every_code_and_extreme_activations(a8: bool, device: torch.device) -> None:
    """x = the identity reads the weights back: all 254 finite e4m3 codes (subnormals, +-448)
    times the channel scale; W8A16 also with activations past fp16's range (x = 1e5 and
    2e5 * identity, fp16's largest is 65504: the 2**-8 shift keeps them finite)."""
    codes = torch.cat([torch.arange(0, 0x7F), torch.arange(0x80, 0xFF)])  # [254], no NaN
    m = 16
    idx = (torch.arange(254)[:, None] + torch.arange(m)[None, :]) % 254
    q = codes[idx].to(torch.uint8).view(FP8).to(device)  # [N=254, K=m]
    s = torch.linspace(0.5, 3.0, 254).to(device)
    want = (q.float() * s[:, None]).t().contiguous()  # [m, 254]
    if a8:
        x = torch.eye(m).to(device=device).to(FP8)
        out = fp8_skinny_mm(x, q, s, x_scale=torch.full((m, 1), 2.0, device=device),
                            out_dtype=torch.float16)
        assert_close(out, (2 * want).half(), TOL)
    else:
        big = 1e5 * (torch.arange(m) % 2 + 1)  # 1e5, 2e5, ...
        x = torch.diag(big).to(device=device, dtype=torch.bfloat16)
        out = fp8_skinny_mm(x, q, s)
        assert_close(out, (want * x.float().diagonal()[:, None]).bfloat16(), TOL)


@pytest.mark.parametrize("cfg", [{"BLOCK_N": 64, "BLOCK_K": 256},
                                 {"BLOCK_N": 16, "BLOCK_K": 64, "SPLIT_K": 3},
                                 {"BLOCK_N": 32, "BLOCK_K": 128, "SPLIT_K": 2}])
def test_gpu_sized_tiles_and_split_k(cfg: dict[str, int], device: torch.device) -> None:
    """The GPU's tile shapes on a small layer: a K step longer than K, N % BLOCK_N != 0,
    K split over programs (fp32 partials summed in order)."""
    q, s = fp8_weights(21, 200, device)
    x = torch.randn(3, 200, device=device, dtype=torch.bfloat16)
    assert_close(fp8_skinny_mm(x, q, s, config=cfg), fp8_skinny_mm_ref(x, q, s), TOL)


def test_bad_inputs_name_the_argument(device: torch.device) -> None:
    q, s = fp8_weights(16, 64, device)
    with pytest.raises(ValueError, match="1..16 rows"):
        fp8_skinny_mm(torch.randn(17, 64, device=device, dtype=torch.bfloat16), q, s)
    with pytest.raises(ValueError, match="x dtype"):
        fp8_skinny_mm(torch.randn(1, 64, device=device), q, s)  # fp32 x
    with pytest.raises(ValueError, match="x_scale"):
        fp8_skinny_mm(torch.zeros(2, 64, device=device).to(FP8), q, s,
                      x_scale=torch.ones(3, device=device))
    with pytest.raises(ValueError, match="BLOCK_N"):
        fp8_skinny_mm(torch.randn(1, 64, device=device, dtype=torch.bfloat16), q, s,
                      config={"BLOCK_N": 8})
