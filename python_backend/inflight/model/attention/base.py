"""The attention backend contract.

KV cache layout (one tensor for the whole model, allocated by the model runner):
    kv_cache: [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim] in the model
    dtype, or float8_e4m3fn with per-layer scales (kv_cache_dtype=fp8)
    layer l: k_cache = kv_cache[l, 0], v_cache = kv_cache[l, 1], each
    [num_blocks, block_size, num_kv_heads, head_dim]; token slot s lives at
    block s // block_size, offset s % block_size.

One step runs the flat concatenation of every scheduled request's new tokens (T in total);
requests are ordered with all decodes (1 new token) first, then prefill chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class AttentionMetadata:
    """Filled by the model runner once per step; read by every layer.

    All tensors live on the model's device.
    """

    slot_mapping: torch.Tensor  # [T] int64: cache slot of each new token
    query_start_loc: torch.Tensor  # [B+1] int32: new tokens of request b are [qsl[b], qsl[b+1])
    seq_lens: torch.Tensor  # [B] int32: context length of request b after this step (cached + new)
    block_tables: torch.Tensor  # [B, max_blocks_per_seq] int32, padded with 0
    num_decodes: int  # the first num_decodes requests have exactly one new token
    max_query_len: int
    max_seq_len: int
    # host copies for backends that loop on the CPU (the torch reference)
    query_start_loc_cpu: list[int]
    seq_lens_cpu: list[int]

    @property
    def num_reqs(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def num_tokens(self) -> int:
        return self.query_start_loc_cpu[-1]


class AttentionBackend(Protocol):
    name: str

    def plan(self, meta: AttentionMetadata) -> None:
        """Once per step, before the first layer: precompute whatever the kernels share."""

    def forward(
        self,
        q: torch.Tensor,  # [T, Hq, D]
        k: torch.Tensor,  # [T, Hkv, D]  new keys (rope applied)
        v: torch.Tensor,  # [T, Hkv, D]
        k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
        v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
        meta: AttentionMetadata,
        scale: float,
        k_scale: float = 1.0,
        v_scale: float = 1.0,
    ) -> torch.Tensor:
        """Write k/v into the cache at meta.slot_mapping, then causal attention of q over
        each request's whole context. Returns [T, Hq, D]. An FP8 (e4m3) cache stores
        k / k_scale and v / v_scale (saturated); reads multiply the scales back."""
        ...
