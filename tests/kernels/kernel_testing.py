"""Shared helpers for the kernel tests: tolerances and paged-attention test cases."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from inflight.model.attention.base import AttentionMetadata

# (atol, rtol) per dtype. bf16/fp16 elementwise results may differ from torch by one unit in
# the last place (the interpreter even truncates fp32 -> bf16 instead of rounding to
# nearest), attention outputs by the rounding of the softmax weights to the input dtype.
ELEMENTWISE_TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.float16: (1e-3, 2e-3),
    torch.bfloat16: (1e-2, 2e-2),
}
ATTENTION_TOL = {
    torch.float32: (2e-5, 1e-4),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}


def assert_close(out: torch.Tensor, ref: torch.Tensor, tol: dict[torch.dtype, tuple[float, float]]
                 ) -> None:
    atol, rtol = tol[ref.dtype]
    assert out.dtype == ref.dtype and out.shape == ref.shape
    assert torch.isfinite(out.float()).all(), "non-finite output"
    torch.testing.assert_close(out.float(), ref.float(), atol=atol, rtol=rtol)


def fp8_weights(n: int, k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded [n, k] layer quantized per channel to e4m3 (weights, fp32 scales), with a few
    tiny values in row 0 that land on e4m3 subnormals after the row's scale."""
    from inflight.model.quant.fp8 import per_channel_fp8

    g = torch.Generator().manual_seed(n * 7 + k)
    w = torch.randn(n, k, generator=g) / k**0.5
    w[0, : min(k, 8)] = 1e-6
    q, s = per_channel_fp8(w)
    return q.to(device), s.to(device)


def gpu_dispatch_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CPU, the model's GPU code paths with the kernels in the interpreter: norms, SiLU,
    rotary (layers._triton_ops) and the FP8 linears' dispatch (fp8_linear_cuda). cuBLAS's
    GEMV timing is CUDA-only: float layers take F.linear."""
    import inflight.kernels as K
    from inflight.model import layers
    from inflight.model.quant import fp8

    monkeypatch.setattr(layers, "_triton_ops", lambda x: K)
    monkeypatch.setattr(layers._GemvChoice, "use", classmethod(lambda cls, *a: False))
    monkeypatch.setattr(fp8, "gpu_dispatch", lambda device: True)


def fp8_decode_kernel(monkeypatch: pytest.MonkeyPatch, kernel: str, max_m: int) -> None:
    """INFLIGHT_FP8_DECODE_KERNEL / INFLIGHT_FP8_GEMV_MAX_M as if set at start-up: the FP8
    layers' decisions and dispatch call fp8_linear_path with these defaults."""
    from inflight.model.quant import fp8

    path = fp8.fp8_linear_path

    def patched(m: int, on_gpu: bool, gemv_max_m: int = max_m, n: int = 0, k: int = 0,
                decode_kernel: str = kernel) -> str:
        return path(m, on_gpu, gemv_max_m, n, k, decode_kernel)

    monkeypatch.setattr(fp8, "fp8_linear_path", patched)


@dataclass
class PagedCase:
    """A step of B requests over a randomly filled paged cache (random block placement)."""

    q: torch.Tensor  # [T, Hq, D]
    k: torch.Tensor  # [T, Hkv, D] new keys of the step
    v: torch.Tensor  # [T, Hkv, D]
    k_cache: torch.Tensor  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor
    meta: AttentionMetadata


def make_case(
    query_lens: list[int], seq_lens: list[int], hq: int, hkv: int, d: int, block_size: int,
    dtype: torch.dtype, device: torch.device, num_blocks: int | None = None, seed: int = 0,
    num_decodes: int | None = None,
) -> PagedCase:
    """Requests with query_lens[b] new tokens at the end of seq_lens[b] context tokens.

    Decodes (query_len 1) come first, as the engine orders them; num_decodes defaults to
    the number of leading one-token requests.
    """
    if num_decodes is None:
        num_decodes = next((i for i, lq in enumerate(query_lens) if lq != 1), len(query_lens))
    g = torch.Generator().manual_seed(seed)
    blocks_per = [-(-s // block_size) for s in seq_lens]
    need = sum(blocks_per)
    num_blocks = num_blocks or need + 3
    max_blocks = max(blocks_per) + 2
    perm = torch.randperm(num_blocks, generator=g)[:need]
    table = torch.zeros(len(seq_lens), max_blocks, dtype=torch.int32)
    slots, start = [], 0
    for b, (lq, s) in enumerate(zip(query_lens, seq_lens, strict=True)):
        table[b, : blocks_per[b]] = perm[start : start + blocks_per[b]]
        start += blocks_per[b]
        for pos in range(s - lq, s):
            slots.append(int(table[b, pos // block_size]) * block_size + pos % block_size)
    t = sum(query_lens)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dtype=dtype, device=device)

    qsl = [0]
    for lq in query_lens:
        qsl.append(qsl[-1] + lq)
    meta = AttentionMetadata(
        slot_mapping=torch.tensor(slots, dtype=torch.int64, device=device),
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=table.to(device),
        num_decodes=num_decodes,
        max_query_len=max(query_lens), max_seq_len=max(seq_lens),
        query_start_loc_cpu=qsl, seq_lens_cpu=list(seq_lens),
    )
    return PagedCase(
        q=rand(t, hq, d), k=rand(t, hkv, d), v=rand(t, hkv, d),
        k_cache=rand(num_blocks, block_size, hkv, d), v_cache=rand(num_blocks, block_size, hkv, d),
        meta=meta,
    )


def int32_overflow_errors(device: str, hkv: int = 1, d: int = 16) -> dict[str, float] | None:
    """Write, decode and prefill over caches of more than 2^31 elements, with blocks near
    the end, so block * stride overflows int32. Returns max abs errors against the torch
    references, or None when the caches cannot be allocated. On CPU the allocation is
    virtual: only the blocks the block table names are touched."""
    from inflight.kernels import (
        attention_ref,
        kv_cache_write,
        paged_decode_attention,
        paged_prefill_attention,
    )

    bs, hq, dtype = 16, 2 * hkv, torch.float16
    nb = 2**31 // (bs * hkv * d) + 64
    try:
        k_cache = torch.empty(nb, bs, hkv, d, dtype=dtype, device=device)
        v_cache = torch.empty_like(k_cache)
    except (RuntimeError, MemoryError):
        return None
    lens = [60, 29]
    table = torch.tensor([[nb - 1, 5, nb - 3, nb - 40], [nb - 2, nb - 10, 0, 0]],
                         dtype=torch.int32, device=device)
    slots = torch.cat([
        table[b, torch.arange(n, device=device) // bs].long() * bs
        + torch.arange(n, device=device) % bs for b, n in enumerate(lens)])
    k = torch.randn(sum(lens), hkv, d, device=device).to(dtype)
    v = torch.randn(sum(lens), hkv, d, device=device).to(dtype)
    kv_cache_write(k, v, k_cache, v_cache, slots)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=device)
    errors = {"write": (k_cache.view(-1, hkv, d)[slots] - k).abs().max().item()}
    q = torch.randn(sum(lens), hq, d, device=device).to(dtype)  # prefill: whole contexts
    qsl = torch.tensor([0, lens[0], sum(lens)], dtype=torch.int32, device=device)
    out = paged_prefill_attention(q, k_cache, v_cache, qsl, seq_lens, table, 0.25, max(lens))
    ref = attention_ref(q, k_cache, v_cache, qsl, seq_lens, table, 0.25)
    errors["prefill"] = (out.float() - ref.float()).abs().max().item()
    qd = q[:2]  # decode: one query per request at the last position
    out = paged_decode_attention(qd, k_cache, v_cache, table, seq_lens, 0.25, num_splits=2)
    qsl_d = torch.arange(3, dtype=torch.int32, device=device)
    ref = attention_ref(qd, k_cache, v_cache, qsl_d, seq_lens, table, 0.25)
    errors["decode"] = (out.float() - ref.float()).abs().max().item()
    return errors


def run_to_finals(engine: Any, prompts: list[list[int]], params: Any) -> dict[str, Any]:
    """Every prompt through ``engine`` (an LLMEngine) to its final update, keyed by the request
    id (the prompt's index as a string); the KV blocks must all be free afterwards."""
    finals: dict[str, Any] = {}
    for i, p in enumerate(prompts):
        engine.add_request(str(i), p, params,
                           callback=lambda u: finals.__setitem__(u.request_id, u) if u.finished else None)
    while engine.has_unfinished():
        engine.step()
    engine.kv.assert_all_free()
    return finals
