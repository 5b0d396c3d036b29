"""TritonAttentionBackend against TorchAttentionBackend on whole steps."""

from __future__ import annotations

import pytest
import torch
from inflight.model.attention import get_attention_backend
from inflight.model.attention.torch_backend import TorchAttentionBackend
from inflight.model.attention.triton_backend import TritonAttentionBackend
from kernel_testing import ATTENTION_TOL, PagedCase, assert_close, make_case


def compare(c: PagedCase, plan: bool = True) -> None:
    kc, vc = c.k_cache.clone(), c.v_cache.clone()
    ref = TorchAttentionBackend().forward(c.q, c.k, c.v, kc, vc, c.meta, 0.25)
    be = TritonAttentionBackend()
    if plan:
        be.plan(c.meta)
    out = be.forward(c.q, c.k, c.v, c.k_cache, c.v_cache, c.meta, 0.25)
    assert torch.equal(c.k_cache, kc) and torch.equal(c.v_cache, vc)
    assert_close(out, ref, ATTENTION_TOL)


@pytest.mark.parametrize("dtype,group,block_size", [
    (torch.float32, 1, 16), (torch.float16, 4, 32), (torch.bfloat16, 8, 4),
    (torch.float32, 2, 16)])
def test_mixed_step(dtype: torch.dtype, group: int, block_size: int,
                    device: torch.device) -> None:
    """3 decodes (one with a 300-token context), then prefill chunks with/without prefix."""
    c = make_case([1, 1, 1, 17, 5, 30], [33, 300, 7, 17, 60, 31], 2 * group, 2, 32,
                  block_size, dtype, device, seed=group)
    compare(c)


def test_decode_only_and_prefill_only(device: torch.device) -> None:
    compare(make_case([1, 1, 1], [5, 64, 129], 8, 2, 16, 16, torch.float32, device))
    compare(make_case([12, 1, 3], [12, 20, 40], 8, 2, 16, 16, torch.float32, device,
                      num_decodes=0), plan=False)


def test_one_token_prefill_after_decodes(device: torch.device) -> None:
    """A one-token prefill chunk (the prompt's last token) is not a decode."""
    compare(make_case([1, 1, 1], [9, 40, 2], 4, 4, 16, 16, torch.float16, device,
                      num_decodes=1))


def test_registry_and_plan_validation(device: torch.device) -> None:
    be = get_attention_backend("triton", str(device))
    assert isinstance(be, TritonAttentionBackend) and be.name == "triton"
    c = make_case([2, 1], [4, 6], 2, 2, 16, 16, torch.float32, device, num_decodes=1)
    with pytest.raises(ValueError, match="one new token each"):
        be.plan(c.meta)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_step_gpu(dtype: torch.dtype) -> None:
    """Llama-3.1-8B attention shapes: 32 q heads, 8 kv heads, head dim 128."""
    lq = [1] * 48 + [512, 2048, 37]
    lens = [int(x) for x in torch.randint(1, 16384, (48,))] + [4096, 2048, 9000]
    compare(make_case(lq, lens, 32, 8, 128, 16, dtype, torch.device("cuda")))


def test_fp8_kv_dots_option_reaches_both_kernels(monkeypatch: pytest.MonkeyPatch,
                                                 device: torch.device) -> None:
    """INFLIGHT_FP8_KV_DOTS reaches the decode and prefill kernels as fp8_kv_dots (unset:
    fp16-pairs, which the prefill kernel takes as bf16 dots); an unknown value is an error naming the variable."""
    import inflight.model.attention.triton_backend as tb

    seen: list[tuple[str, str]] = []
    dec, pre = tb.paged_decode_attention, tb.paged_prefill_attention
    monkeypatch.setattr(tb, "paged_decode_attention",
                        lambda *a, **kw: (seen.append(("decode", kw["fp8_kv_dots"])), dec(*a, **kw))[1])
    monkeypatch.setattr(tb, "paged_prefill_attention",
                        lambda *a, **kw: (seen.append(("prefill", kw["fp8_kv_dots"])), pre(*a, **kw))[1])
    c = make_case([1, 5], [9, 12], 4, 2, 16, 16, torch.bfloat16, device)
    for value, want in ((None, "fp16-pairs"), ("fp16", "fp16"), ("fp16-vt", "fp16-vt"), ("fp16-pairs", "fp16-pairs"),
                        ("bf16", "bf16")):
        if value is None:
            monkeypatch.delenv("INFLIGHT_FP8_KV_DOTS", raising=False)
        else:
            monkeypatch.setenv("INFLIGHT_FP8_KV_DOTS", value)
        seen.clear()
        TritonAttentionBackend().forward(c.q, c.k, c.v, c.k_cache, c.v_cache, c.meta, 0.25)
        assert seen == [("decode", want), ("prefill", want)]
    monkeypatch.setenv("INFLIGHT_FP8_KV_DOTS", "fp32")
    with pytest.raises(ValueError, match="INFLIGHT_FP8_KV_DOTS"):
        TritonAttentionBackend()
