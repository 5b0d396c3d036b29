"""rotary_embedding (neox) against the fp32 torch reference and the HF rotate_half form."""

from __future__ import annotations

import pytest
import torch
from inflight.kernels import rotary_embedding, rotary_embedding_ref
from kernel_testing import ELEMENTWISE_TOL, assert_close


def cos_sin_cache(max_pos: int, d: int, device: torch.device) -> torch.Tensor:
    inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    freqs = torch.outer(torch.arange(max_pos, dtype=torch.float32), inv)  # [P, D/2]
    return torch.cat([freqs.cos(), freqs.sin()], -1).to(device)  # [P, D]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("hq,hkv,d", [(4, 4, 16), (8, 2, 64), (6, 1, 32)])
@pytest.mark.parametrize("inplace", [False, True])
def test_rotary(dtype: torch.dtype, hq: int, hkv: int, d: int, inplace: bool,
                device: torch.device) -> None:
    t = 7
    q = torch.randn(t, hq, d, device=device).to(dtype)
    k = torch.randn(t, hkv, d, device=device).to(dtype)
    pos = torch.randint(0, 500, (t,), device=device)
    cache = cos_sin_cache(512, d, device)
    ref_q, ref_k = rotary_embedding_ref(pos, q, k, cache)
    q_in, k_in = q.clone(), k.clone()
    out_q, out_k = rotary_embedding(pos, q_in, k_in, cache, inplace=inplace)
    assert_close(out_q, ref_q, ELEMENTWISE_TOL)
    assert_close(out_k, ref_k, ELEMENTWISE_TOL)
    assert (out_q.data_ptr() == q_in.data_ptr()) == inplace
    if not inplace:
        assert torch.equal(q_in, q) and torch.equal(k_in, k)


def test_rotary_on_qkv_views_matches_rotate_half(device: torch.device) -> None:
    """In place on the q/k views of a fused qkv projection, int32 positions; v untouched."""
    t, hq, hkv, d = 5, 4, 2, 32
    qkv = torch.randn(t, (hq + 2 * hkv) * d, device=device)
    q = qkv[:, : hq * d].view(t, hq, d)
    k = qkv[:, hq * d : (hq + hkv) * d].view(t, hkv, d)
    v_before = qkv[:, (hq + hkv) * d :].clone()
    pos = torch.tensor([0, 3, 3, 100, 255], dtype=torch.int32, device=device)
    cache = cos_sin_cache(256, d, device)
    cos, sin = cache[pos.long()].chunk(2, -1)
    cos, sin = torch.cat([cos, cos], -1)[:, None], torch.cat([sin, sin], -1)[:, None]

    def hf(x: torch.Tensor) -> torch.Tensor:  # transformers' apply_rotary_pos_emb
        x1, x2 = x.chunk(2, -1)
        return x * cos + torch.cat([-x2, x1], -1) * sin

    ref_q, ref_k = hf(q.clone()), hf(k.clone())
    rotary_embedding(pos, q, k, cache)
    assert_close(qkv[:, : hq * d].view(t, hq, d), ref_q, ELEMENTWISE_TOL)
    assert_close(qkv[:, hq * d : (hq + hkv) * d].view(t, hkv, d), ref_k, ELEMENTWISE_TOL)
    assert torch.equal(qkv[:, (hq + hkv) * d :], v_before)


def test_rotary_rejects_bad_inputs(device: torch.device) -> None:
    q, k = torch.randn(3, 4, 32, device=device), torch.randn(3, 2, 32, device=device)
    pos = torch.zeros(3, dtype=torch.int64, device=device)
    with pytest.raises(ValueError, match="cos_sin_cache dim 1 must be 32"):
        rotary_embedding(pos, q, k, torch.zeros(10, 16, device=device))
    with pytest.raises(ValueError, match="positions"):
        rotary_embedding(pos[:2], q, k, torch.zeros(10, 32, device=device))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t", [1, 4096])
def test_rotary_gpu(dtype: torch.dtype, t: int) -> None:
    q = torch.randn(t, 32, 128, device="cuda", dtype=dtype)
    k = torch.randn(t, 8, 128, device="cuda", dtype=dtype)
    pos = torch.randint(0, 131072, (t,), device="cuda")
    cache = cos_sin_cache(131072, 128, torch.device("cuda"))
    ref_q, ref_k = rotary_embedding_ref(pos, q, k, cache)
    out_q, out_k = rotary_embedding(pos, q, k, cache, inplace=False)
    assert_close(out_q, ref_q, ELEMENTWISE_TOL)
    assert_close(out_k, ref_k, ELEMENTWISE_TOL)
