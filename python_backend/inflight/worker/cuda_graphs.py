"""CUDA graphs for decode steps: one graph per padded batch size, captured at start-up.

A pure-decode step (every request has one new token) with B requests replays the graph of
the smallest captured size >= B. The graph ends with the lm_head: it outputs fp32 logits
into a static buffer that the next replay overwrites (consumers enqueue their reads before
it). Padding rows write no KV (slot -1) and attend to one token; their outputs are
discarded. The attention launch parameters that depend on the context length are fixed to
the engine's max_seq_len at capture time.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from inflight.model.attention import AttentionBackend, AttentionMetadata

log = logging.getLogger(__name__)


def capture_sizes(max_bs: int) -> list[int]:
    sizes = [b for b in (1, 2, 4, 8) if b <= max_bs] + list(range(16, max_bs + 1, 16))
    if sizes[-1] != max_bs:
        sizes.append(max_bs)
    return sizes


class DecodeGraphs:
    def __init__(self, model: torch.nn.Module, kv_cache: torch.Tensor, backend: AttentionBackend,
                 max_bs: int, max_blocks: int, max_seq_len: int, vocab_size: int,
                 device: torch.device) -> None:
        self.model, self.kv_cache, self.backend = model, kv_cache, backend
        self.max_seq_len = max_seq_len
        self.sizes = capture_sizes(max_bs)
        n = self.sizes[-1]
        # static inputs shared by every graph (views [:bs])
        self.input_ids = torch.zeros(n, dtype=torch.long, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.long, device=device)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(n, max_blocks, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.logits = torch.zeros(n, vocab_size, dtype=torch.float32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.pool: Any = None

    def _meta(self, bs: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:bs], query_start_loc=self.query_start_loc[: bs + 1],
            seq_lens=self.seq_lens[:bs], block_tables=self.block_tables[:bs], num_decodes=bs,
            max_query_len=1, max_seq_len=self.max_seq_len,
            query_start_loc_cpu=list(range(bs + 1)), seq_lens_cpu=[1] * bs)

    def _run(self, bs: int, meta: AttentionMetadata) -> None:
        self.backend.plan(meta)
        hidden = self.model(self.input_ids[:bs], self.positions[:bs], self.kv_cache, self.backend, meta)
        self.logits[:bs] = self.model.compute_logits(hidden)  # type: ignore[operator]

    @torch.inference_mode()
    def capture(self) -> None:
        for bs in reversed(self.sizes):  # largest first, so smaller graphs reuse its pool
            meta = self._meta(bs)
            self._run(bs, meta)  # warm up (autotune, allocations) outside the graph
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, self.pool):
                self._run(bs, meta)
            if self.pool is None:
                self.pool = g.pool()
            self.graphs[bs] = g
        torch.cuda.synchronize()
        log.info("captured CUDA graphs for decode batch sizes %s", self.sizes)

    def padded_size(self, bs: int) -> int | None:
        return next((s for s in self.sizes if s >= bs), None)

    @torch.inference_mode()
    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Replay for a pure-decode step of B = len(input_ids) requests -> logits [B, V]."""
        bs = input_ids.shape[0]
        size = self.padded_size(bs)
        assert size is not None
        self.input_ids[:bs].copy_(input_ids)
        self.positions[:bs].copy_(positions)
        self.slot_mapping[:bs].copy_(meta.slot_mapping)
        self.slot_mapping[bs:size].fill_(-1)
        self.seq_lens[:bs].copy_(meta.seq_lens)
        self.seq_lens[bs:size].fill_(1)
        w = meta.block_tables.shape[1]
        self.block_tables[:bs, :w].copy_(meta.block_tables)
        self.graphs[size].replay()
        return self.logits[:bs]
