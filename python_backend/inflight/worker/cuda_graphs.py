"""CUDA graphs of whole steps, captured at start-up: ``DecodeGraphs`` for pure-decode steps
(one graph per padded batch size) and ``MixedGraphs`` for steps with prefill tokens (one per
padded token count, up to ``cuda_graph_max_tokens``).

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


MIXED_GRAPH_MAX_REQS = 32  # requests a mixed-step graph holds (padded with empty requests)


def token_buckets(max_tokens: int) -> list[int]:
    """Padded token counts of the mixed-step graphs: 16, 32, 64, 128, then every 64 up to
    1024 (a prompt pays at most 64 padded tokens there: powers of two made a 130-token
    prompt compute 256), then powers of two, then max_tokens."""
    steps = [16, 32, 64, *range(128, 1024, 64), 1024, 2048, 4096, 8192, 16384]
    return [b for b in steps if b < max_tokens] + [max_tokens]


class MixedGraphs:
    """Steps with prefill tokens (a prompt's chunk, next to the running decodes), up to
    ``max_tokens`` new tokens and ``max_reqs`` requests: one graph per token bucket.

    What makes one graph serve every such step of its bucket: each request, decodes
    included, goes through the varlen prefill attention kernel (a decode is a one-token
    chunk), whose grid is fixed at capture for the bucket (bucket tokens x max_reqs
    requests) and whose programs read the real layout from device tensors: a tile past its
    request's queries, or an empty padding request (no queries), returns at once. Padding
    tokens write no KV (slot -1) and belong to no request; their rows run through the
    row-independent layers and are never read. Logits come out for ``logits_indices``
    (padded with row 0) into a static buffer, as the decode graphs' do. Steps that do not
    fit (more tokens, requests or logits rows) run eagerly.

    Without ``capture()`` (the CPU tests) ``run`` executes the same padded forward eagerly.
    """

    def __init__(self, model: torch.nn.Module, kv_cache: torch.Tensor, backend: AttentionBackend,
                 max_tokens: int, max_reqs: int, max_blocks: int, max_seq_len: int,
                 vocab_size: int, device: torch.device) -> None:
        if backend.name != "triton":  # the torch backend loops over host-side lengths
            raise ValueError(f"mixed-step graphs need the triton attention backend, not {backend.name!r}")
        self.model, self.kv_cache, self.backend = model, kv_cache, backend
        self.max_seq_len, self.max_reqs = max_seq_len, max_reqs
        self.sizes = token_buckets(max_tokens)
        n, r = self.sizes[-1], max_reqs
        self.input_ids = torch.zeros(n, dtype=torch.long, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.long, device=device)
        self.query_start_loc = torch.zeros(r + 1, dtype=torch.int32, device=device)
        self.seq_lens = torch.ones(r, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(r, max_blocks, dtype=torch.int32, device=device)
        self.logits_indices = torch.zeros(r, dtype=torch.long, device=device)
        self.logits = torch.zeros(r, vocab_size, dtype=torch.float32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.pool: Any = None

    def _meta(self, size: int) -> AttentionMetadata:
        r = self.max_reqs
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:size], query_start_loc=self.query_start_loc,
            seq_lens=self.seq_lens, block_tables=self.block_tables, num_decodes=0,
            max_query_len=size, max_seq_len=self.max_seq_len,
            query_start_loc_cpu=[0] * (r + 1), seq_lens_cpu=[1] * r)  # sizes only: no host loop

    def _run(self, size: int) -> None:
        meta = self._meta(size)
        self.backend.plan(meta)
        hidden = self.model(self.input_ids[:size], self.positions[:size], self.kv_cache, self.backend, meta)
        self.logits.copy_(self.model.compute_logits(hidden[self.logits_indices]))  # type: ignore[operator]

    @torch.inference_mode()
    def capture(self) -> None:
        for size in reversed(self.sizes):  # largest first, so smaller graphs reuse its pool
            self._run(size)  # warm up (compiles, allocations) outside the graph
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, self.pool):
                self._run(size)
            if self.pool is None:
                self.pool = g.pool()
            self.graphs[size] = g
        torch.cuda.synchronize()
        log.info("captured CUDA graphs for mixed steps of up to %d tokens and %d requests: %s",
                 self.sizes[-1], self.max_reqs, self.sizes)

    def fits(self, meta: AttentionMetadata, num_logits: int) -> bool:
        """A step with prefill tokens this class can run (pure decodes: DecodeGraphs)."""
        return (meta.num_decodes < meta.num_reqs <= self.max_reqs and num_logits <= self.max_reqs
                and meta.num_tokens <= self.sizes[-1])

    @torch.inference_mode()
    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
            logits_indices: torch.Tensor) -> torch.Tensor:
        """The step's logits [len(logits_indices), V] (a view of the static buffer)."""
        t, r, n = meta.num_tokens, meta.num_reqs, logits_indices.shape[0]
        size = next(s for s in self.sizes if s >= t)
        self.input_ids[:t].copy_(input_ids)
        self.positions[:t].copy_(positions)
        self.slot_mapping[:t].copy_(meta.slot_mapping)
        self.slot_mapping[t:size].fill_(-1)
        self.query_start_loc[:r + 1].copy_(meta.query_start_loc)
        self.query_start_loc[r + 1:].fill_(t)  # empty padding requests
        self.seq_lens[:r].copy_(meta.seq_lens)
        w = meta.block_tables.shape[1]
        self.block_tables[:r, :w].copy_(meta.block_tables)
        self.logits_indices[:n].copy_(logits_indices)
        self.logits_indices[n:].zero_()
        g = self.graphs.get(size)
        if g is not None:
            g.replay()
        else:
            self._run(size)
        return self.logits[:n]
