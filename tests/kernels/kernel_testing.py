"""Shared helpers for the kernel tests: tolerances and paged-attention test cases."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from inflight.attention.base import AttentionMetadata

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
    for b, (lq, s) in enumerate(zip(query_lens, seq_lens)):
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
