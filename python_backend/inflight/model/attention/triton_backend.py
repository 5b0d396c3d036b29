"""Attention over the paged KV cache with the OpenAI-Triton kernels of ``inflight.kernels``.

Same contract as :class:`~inflight.model.attention.torch_backend.TorchAttentionBackend`: write
the step's new keys/values into the cache, then causal attention of every query over its
request's whole context. Decode requests (the first ``meta.num_decodes``, one token each)
go to the split-KV decode kernel, the prefill chunks to the varlen prefill kernel. No host
sync: sizes come from the metadata's host-side fields, the rest are device-tensor views.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from inflight import env
from inflight.kernels import kv_cache_write, paged_decode_attention, paged_prefill_attention
from inflight.model.attention.base import AttentionMetadata


@dataclass(frozen=True)
class _StepPlan:
    """Per-step views of the metadata, shared by every layer (filled by ``plan``)."""

    meta: AttentionMetadata
    num_decodes: int
    num_prefills: int
    decode_seq_lens: torch.Tensor  # [Bd] int32
    decode_block_tables: torch.Tensor  # [Bd, max_blocks] int32
    prefill_query_start_loc: torch.Tensor  # [Bp+1] int32, absolute rows of q
    prefill_seq_lens: torch.Tensor  # [Bp] int32
    prefill_block_tables: torch.Tensor  # [Bp, max_blocks] int32


class TritonAttentionBackend:
    name = "triton"

    def __init__(self) -> None:
        self._plan: _StepPlan | None = None
        self._fp8_kv_dots = env.fp8_kv_dots()  # FP8 caches only (the kernels check)

    def plan(self, meta: AttentionMetadata) -> None:
        nd = meta.num_decodes
        if nd > 0 and meta.query_start_loc_cpu[nd] != nd:
            raise ValueError(
                f"the first num_decodes={nd} requests must have one new token each, "
                f"got query_start_loc_cpu[{nd}]={meta.query_start_loc_cpu[nd]}")
        self._plan = _StepPlan(
            meta=meta,
            num_decodes=nd,
            num_prefills=meta.num_reqs - nd,
            decode_seq_lens=meta.seq_lens[:nd],
            decode_block_tables=meta.block_tables[:nd],
            prefill_query_start_loc=meta.query_start_loc[nd:],
            prefill_seq_lens=meta.seq_lens[nd:],
            prefill_block_tables=meta.block_tables[nd:],
        )

    def forward(
        self,
        q: torch.Tensor,  # [T, Hq, D]
        k: torch.Tensor,  # [T, Hkv, D] new keys (rope applied)
        v: torch.Tensor,  # [T, Hkv, D]
        k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
        v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
        meta: AttentionMetadata,
        scale: float,
        k_scale: float = 1.0,
        v_scale: float = 1.0,
    ) -> torch.Tensor:
        """Write k/v at meta.slot_mapping (-1 skips), then attention. Returns [T, Hq, D]."""
        if self._plan is None or self._plan.meta is not meta:
            self.plan(meta)
        p = self._plan
        assert p is not None
        kv_cache_write(k, v, k_cache, v_cache, meta.slot_mapping, k_scale, v_scale)
        out = torch.empty_like(q)
        if p.num_decodes > 0:
            nd = p.num_decodes
            paged_decode_attention(
                q[:nd], k_cache, v_cache, p.decode_block_tables, p.decode_seq_lens, scale,
                max_seq_len=meta.max_seq_len, out=out[:nd], k_scale=k_scale, v_scale=v_scale,
                fp8_kv_dots=self._fp8_kv_dots)
        if p.num_prefills > 0:
            paged_prefill_attention(
                q, k_cache, v_cache, p.prefill_query_start_loc, p.prefill_seq_lens,
                p.prefill_block_tables, scale, meta.max_query_len, out=out, k_scale=k_scale,
                v_scale=v_scale, fp8_kv_dots=self._fp8_kv_dots)
        return out
