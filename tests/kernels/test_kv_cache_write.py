"""kv_cache_write against index_copy_ (the torch backend's write_kv_cache)."""

from __future__ import annotations

import pytest
import torch
from inflight.kernels import kv_cache_write, kv_cache_write_ref
from inflight.model.attention.torch_backend import write_kv_cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("block_size,hkv,d", [(4, 1, 16), (16, 2, 64), (32, 8, 32)])
def test_kv_cache_write(dtype: torch.dtype, block_size: int, hkv: int, d: int,
                        device: torch.device) -> None:
    nb, t = 9, 11
    k = torch.randn(t, hkv, d, device=device).to(dtype)
    v = torch.randn(t, hkv, d, device=device).to(dtype)
    slots = torch.randperm(nb * block_size, device=device)[:t]
    k_cache = torch.randn(nb, block_size, hkv, d, device=device).to(dtype)
    v_cache = torch.randn_like(k_cache)
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    write_kv_cache(k, v, ref_k, ref_v, slots)
    kv_cache_write(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)


def test_kv_cache_write_padding_strides_and_cast(device: torch.device) -> None:
    """-1 slots are skipped; k/v as views of a fused qkv buffer; values cast to the cache dtype."""
    t, hq, hkv, d, bs = 6, 4, 2, 32, 16
    qkv = torch.randn(t, (hq + 2 * hkv) * d, device=device)
    k = qkv[:, hq * d : (hq + hkv) * d].view(t, hkv, d)
    v = qkv[:, (hq + hkv) * d :].view(t, hkv, d)
    slots = torch.tensor([5, -1, 40, 17, -1, 63], device=device)
    # fp16: the interpreter truncates fp32 -> bf16 where torch and the GPU round to nearest
    k_cache = torch.randn(4, bs, hkv, d, device=device).to(torch.float16)
    v_cache = torch.randn_like(k_cache)
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    kv_cache_write_ref(k, v, ref_k, ref_v, slots)
    kv_cache_write(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, ref_k) and torch.equal(v_cache, ref_v)


def test_kv_cache_write_many_blocks(device: torch.device) -> None:
    """Slots in the last blocks of a cache with many blocks (small other dims)."""
    nb, bs, hkv, d = 200_000, 4, 1, 16
    k_cache = torch.zeros(nb, bs, hkv, d, device=device, dtype=torch.float16)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.tensor([nb * bs - 1, 3, (nb - 7) * bs + 2], device=device)
    k = torch.randn(3, hkv, d, device=device).half()
    kv_cache_write(k, -k, k_cache, v_cache, slots)
    flat_k, flat_v = k_cache.view(-1, hkv, d), v_cache.view(-1, hkv, d)
    assert torch.equal(flat_k[slots], k) and torch.equal(flat_v[slots], -k)
    assert int((flat_k != 0).any(-1).any(-1).sum()) == 3


def test_kv_cache_write_rejects_bad_inputs(device: torch.device) -> None:
    k = torch.randn(3, 2, 16, device=device)
    cache = torch.zeros(4, 4, 2, 16, device=device)
    with pytest.raises(ValueError, match="slot_mapping dim 0 must be 3"):
        kv_cache_write(k, k, cache, cache.clone(), torch.zeros(2, dtype=torch.int64, device=device))
    with pytest.raises(ValueError, match="k_cache dim 2 must be 2"):
        kv_cache_write(k, k, cache[:, :, :1], cache[:, :, :1].clone(),
                       torch.zeros(3, dtype=torch.int64, device=device))


@pytest.mark.gpu
def test_kv_cache_write_gpu_int32_overflow() -> None:
    """A cache of more than 2^31 elements: slot * row stride needs int64 arithmetic."""
    bs, hkv, d = 16, 8, 128
    nb = 2**31 // (bs * hkv * d) + 16
    k_cache = torch.zeros(nb, bs, hkv, d, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.zeros_like(k_cache)
    slots = torch.tensor([nb * bs - 1, 0, (nb - 3) * bs + 5, -1], device="cuda")
    k = torch.randn(4, hkv, d, device="cuda", dtype=torch.bfloat16)
    kv_cache_write(k, 2 * k, k_cache, v_cache, slots)
    flat_k, flat_v = k_cache.view(-1, hkv, d), v_cache.view(-1, hkv, d)
    assert torch.equal(flat_k[slots[:3]], k[:3]) and torch.equal(flat_v[slots[:3]], 2 * k[:3])
