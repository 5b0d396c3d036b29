"""Tensor parallelism inside the model: the rank's view, its collectives, its weight slices.

Megatron layout over N ranks (docs/parallelism.md):

- column-parallel (``qkv_proj``, ``gate_up_proj``): each rank holds its output rows. The
  fused qkv gives rank r query heads [r*Hq/N, (r+1)*Hq/N) and KV heads
  [r*Hkv/N, ...) (N <= Hkv), or the one KV head its query heads read (N > Hkv: KV heads are
  replicated, N/Hkv ranks share each); gate_up gives each rank its slice of gate and of up.
- row-parallel (``o_proj``, ``down_proj``): each rank holds its input columns; the partial
  outputs are summed by an all-reduce.
- vocab-parallel embedding and ``lm_head``: each rank holds ceil(V/N) rows of the vocabulary
  (the last rank's tail is zero padding); the embedding all-reduces, the logits all-gather.

``TensorParallel`` is what a rank knows: rank, size, the process groups. A ``None`` or
size-1 view makes every collective a no-op, so TP=1 runs exactly the code it ran before.
Each layer carries ``tp_src``: part -> (start, size) of its slice of the full checkpoint
tensor along ``tp_dim``, which the loader (worker/loader.py) applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from inflight.config import ModelConfig
from inflight.errors import ConfigError


@dataclass
class TensorParallel:
    """A rank's view of its tensor-parallel group. ``device_group`` carries the model's
    collectives (NCCL on GPU, gloo on CPU); ``None`` groups mean size 1."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device_group: Any = None  # torch.distributed ProcessGroup (gloo / NCCL)
    store: Any = None  # the rendezvous store (symmetric memory exchanges its handles there)
    group_id: str = ""  # the same on every rank of the group (its store's address)
    small: SymmAllReduce | None = None  # one-shot all-reduce for small tensors (GPU, opt-in)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of x (contiguous): x itself, reduced in place, or (small tensors
        on the symmetric-memory path) a new tensor. Use the return value."""
        if self.size > 1:
            if self.small is not None and x.numel() <= self.small.capacity and x.dtype == self.small.dtype:
                return self.small(x)
            self.device_group.allreduce([x]).wait()
        return x

    def enable_small_all_reduce(self, dtype: torch.dtype, max_numel: int) -> None:
        """Every rank at the same point (a collective): all-reduces of up to ``max_numel``
        elements of ``dtype`` go through symmetric memory's one-shot kernel (each rank reads
        its peers' buffers over NVLink; no multicast) instead of NCCL."""
        if self.size > 1 and self.small is None:
            self.small = SymmAllReduce(self, dtype, max_numel, f"inflight-tp-{self.group_id}")

    def abort(self, timeout: float) -> bool:
        """Free the NCCL communicators; False if that did not finish within ``timeout`` s.
        Every rank calls this at the same point: within a node NCCL's abort waits for the
        peers' (NCCL issue 863), so a rank that aborts after its peers exited without
        aborting blocks forever; the GPU TP test hung that way in rank 0's ``stop``. Runs in
        a daemon thread so that a peer that died first cannot hang the caller."""
        self.small = None
        if self.size == 1 or self.device_group is None:
            return True
        import logging
        import threading

        def abort() -> None:
            try:
                self.device_group.abort()
            except Exception as e:  # noqa: BLE001 - best effort at shutdown
                logging.getLogger(__name__).warning("tensor parallel: aborting the NCCL group "
                                                    "failed: %s", e)

        t = threading.Thread(target=abort, name="inflight-tp-abort", daemon=True)
        t.start()
        t.join(timeout)
        return not t.is_alive()

    def all_gather_last(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C] on every rank -> [N, size * C], ranks in order along the last dim."""
        if self.size == 1:
            return x
        x = x.contiguous()
        outs = [torch.empty_like(x) for _ in range(self.size)]
        self.device_group.allgather([outs], [x]).wait()
        return torch.cat(outs, dim=-1)

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        """x from rank 0 to every rank, in place."""
        if self.size > 1:
            import torch.distributed as dist

            opts = dist.BroadcastOptions()
            opts.rootRank = 0
            self.device_group.broadcast([x], opts).wait()
        return x


class SymmAllReduce:
    """One-shot all-reduce through ``torch.distributed._symmetric_memory`` (CUDA only): the
    input is copied into a buffer every rank has mapped, and one kernel sums the peers' copies
    (``symm_mem.one_shot_all_reduce_copy``), captured in the decode CUDA graphs like NCCL's.
    Meant for the small [batch, hidden] tensors of decode steps, where NCCL's latency is
    most of the cost (benchmarks/allreduce_bench.py measures both; docs/parallelism.md)."""

    def __init__(self, tp: TensorParallel, dtype: torch.dtype, max_numel: int, name: str) -> None:
        import torch.distributed as dist
        import torch.distributed._symmetric_memory as symm_mem
        from torch._C._distributed_c10d import _register_process_group, _SymmetricMemory

        # the symm_mem ops look their group up by name: register the engine's NCCL group (made
        # from the store, outside torch.distributed's global registry) under this one
        _register_process_group(name, tp.device_group)
        _SymmetricMemory.set_group_info(name, tp.rank, tp.size, dist.PrefixStore(f"symm-{name}", tp.store))
        self.buf = symm_mem.empty(max_numel, dtype=dtype, device=torch.device("cuda", torch.cuda.current_device()))
        _SymmetricMemory.rendezvous(self.buf, name)
        self.name, self.dtype, self.capacity = name, dtype, max_numel
        self.op = torch.ops.symm_mem.one_shot_all_reduce_copy

    def window(self, x: torch.Tensor) -> torch.Tensor:
        """The start of the shared buffer shaped like ``x``: the op wants its symmetric
        input and its output (made like ``x``) the same shape."""
        return self.buf[: x.numel()].view(x.shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(self.window(x), x, "sum", self.name)  # type: ignore[no-any-return]


SINGLE = TensorParallel()


@dataclass(frozen=True)
class ShardShape:
    """The per-rank sizes of a model under N-way tensor parallelism."""

    num_heads: int  # query heads per rank
    num_kv_heads: int  # KV heads per rank (1 when replicated)
    intermediate: int
    vocab: int  # vocabulary rows per rank (padded: ceil(V / N))
    q_start: int  # first query head of this rank
    kv_start: int  # first KV head of this rank

    @classmethod
    def of(cls, cfg: ModelConfig, tp: TensorParallel) -> ShardShape:
        n, r = tp.size, tp.rank
        kv = max(1, cfg.num_kv_heads // n)
        return cls(cfg.num_heads // n, kv, cfg.intermediate_size // n, -(-cfg.vocab_size // n),
                   r * cfg.num_heads // n, r * cfg.num_kv_heads // n)


def check_tensor_parallel(n: int, cfg: ModelConfig) -> None:
    """ConfigError unless the model splits evenly over ``n`` ranks."""
    if n == 1:
        return
    if cfg.num_heads % n:
        raise ConfigError(f"tensor_parallel_size {n} does not divide the model's "
                          f"{cfg.num_heads} attention heads (num_attention_heads)")
    kv = cfg.num_kv_heads
    if kv % n and n % kv:
        raise ConfigError(f"tensor_parallel_size {n} and the model's {kv} KV heads "
                          "(num_key_value_heads): one must divide the other")
    if cfg.intermediate_size % n:
        raise ConfigError(f"tensor_parallel_size {n} does not divide intermediate_size "
                          f"({cfg.intermediate_size})")


def set_split(layer: nn.Module, dim: int, parts: dict[str | None, tuple[int, int]]) -> None:
    """Mark ``layer``'s weight as split along ``dim``: part -> (start, size) in the full
    checkpoint tensor. The loader narrows each checkpoint tensor to that slice."""
    layer.tp_dim = dim  # type: ignore[assignment]
    layer.tp_src = parts  # type: ignore[assignment]


class VocabParallelEmbedding(nn.Module):
    """Rows [rank * Vr, (rank + 1) * Vr) of the embedding; ids of other ranks give zeros,
    the all-reduce adds the owner's row. ``weight`` [Vr, H] (padded rows stay zero)."""

    def __init__(self, vocab: int, hidden: int, tp: TensorParallel) -> None:
        super().__init__()
        self.tp = tp
        self.rows = -(-vocab // tp.size)
        self.start = tp.rank * self.rows
        self.weight = nn.Parameter(torch.empty(self.rows, hidden))
        set_split(self, 0, {None: (self.start, min(self.rows, vocab - self.start))})

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return nn.functional.embedding(ids, self.weight)
        local = ids - self.start
        outside = (local < 0) | (local >= self.rows)
        x = nn.functional.embedding(local.masked_fill(outside, 0), self.weight)
        x = x.masked_fill(outside[:, None], 0.0)
        return self.tp.all_reduce(x)
