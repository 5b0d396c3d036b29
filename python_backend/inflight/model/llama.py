"""Llama-family decoder (Llama 2/3, Mistral, Qwen2 with qkv bias, Qwen3 with q/k norm).

Works on the flat token layout: every tensor is [T, ...] over all scheduled tokens of a step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from inflight.config import ModelConfig
from inflight.model.attention import AttentionBackend, AttentionMetadata
from inflight.model.layers import Linear, RMSNorm, RotaryEmbedding, linear, silu_and_mul
from inflight.model.parallel import (
    SINGLE,
    ShardShape,
    TensorParallel,
    VocabParallelEmbedding,
    set_split,
)

if TYPE_CHECKING:
    from inflight.model.quant.fp8_activation import Fp8Activation

# Fused projections, declared once: fused param -> [(checkpoint name, shard id)].
STACKED_PARAMS: dict[str, list[tuple[str, str]]] = {
    "qkv_proj": [("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v")],
    "gate_up_proj": [("gate_proj", "gate"), ("up_proj", "up")],
}


class Attention(nn.Module):
    """Under tensor parallelism: this rank's query heads and KV heads (shapes per rank)."""

    def __init__(self, cfg: ModelConfig, rotary: RotaryEmbedding, tp: TensorParallel = SINGLE) -> None:
        super().__init__()
        self.cfg = cfg
        self.tp = tp
        s = ShardShape.of(cfg, tp)
        d = cfg.head_dim
        self.num_heads, self.num_kv_heads = s.num_heads, s.num_kv_heads
        self.q_size, self.kv_size = s.num_heads * d, s.num_kv_heads * d
        self.scale = d**-0.5
        self.qkv_proj = Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias)
        self.o_proj = Linear(self.q_size, cfg.hidden_size, bias=False)
        if tp.size > 1:  # column-parallel qkv (per part), row-parallel o_proj
            kv = (s.kv_start * d, self.kv_size)
            set_split(self.qkv_proj, 0, {"q": (s.q_start * d, self.q_size), "k": kv, "v": kv})
            set_split(self.o_proj, 1, {None: (s.q_start * d, self.q_size)})
        self.rotary = rotary
        # FP8 KV cache: cache = k / k_scale (per layer; the loader sets checkpoint values)
        self.k_scale = 1.0
        self.v_scale = 1.0
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)

    def shard_offsets(self) -> dict[str, tuple[int, int]]:
        q, kv = self.q_size, self.kv_size
        return {"q": (0, q), "k": (q, kv), "v": (q + kv, kv)}

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor | Fp8Activation, kv_cache: torch.Tensor,
        backend: AttentionBackend, meta: AttentionMetadata,
    ) -> torch.Tensor:
        """x: the normed hidden states [T, H], or them quantized (qkv_proj's input_quantizer)."""
        c = self.cfg
        qkv = self.qkv_proj(x)  # [T, q + 2kv] (this rank's heads)
        t = qkv.shape[0]
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.reshape(t, self.num_heads, c.head_dim)
        k = k.reshape(t, self.num_kv_heads, c.head_dim)
        v = v.reshape(t, self.num_kv_heads, c.head_dim)
        if c.qk_norm:
            q = self.q_norm(q)  # type: ignore[assignment]
            k = self.k_norm(k)  # type: ignore[assignment]
        q, k = self.rotary(positions, q, k)
        o = backend.forward(q, k, v, kv_cache[0], kv_cache[1], meta, self.scale,
                             self.k_scale, self.v_scale)  # [T, Hq, D]
        return self.tp.all_reduce(self.o_proj(o.reshape(t, self.q_size)))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, tp: TensorParallel = SINGLE) -> None:
        super().__init__()
        self.tp = tp
        self.inter = cfg.intermediate_size // tp.size
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * self.inter, bias=False)
        self.down_proj = Linear(self.inter, cfg.hidden_size, bias=False)
        if tp.size > 1:  # column-parallel gate_up (each part sliced), row-parallel down
            part = (tp.rank * self.inter, self.inter)
            set_split(self.gate_up_proj, 0, {"gate": part, "up": part})
            set_split(self.down_proj, 1, {None: part})

    def shard_offsets(self) -> dict[str, tuple[int, int]]:
        return {"gate": (0, self.inter), "up": (self.inter, self.inter)}

    def forward(self, x: torch.Tensor | Fp8Activation) -> torch.Tensor:
        h = self.gate_up_proj(x)  # [T, 2I]
        # an FP8 W8A8 down_proj takes the product quantized by the SiLU kernel
        a = silu_and_mul(h, self.down_proj.input_quantizer(h))
        return self.tp.all_reduce(self.down_proj(a))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, rotary: RotaryEmbedding, tp: TensorParallel = SINGLE) -> None:
        super().__init__()
        self.self_attn = Attention(cfg, rotary, tp)
        self.mlp = MLP(cfg, tp)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None,
        kv_cache: torch.Tensor, backend: AttentionBackend, meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # FP8 W8A8 qkv_proj / gate_up_proj: the norm hands them their input quantized (one
        # launch); None otherwise (Linear.input_quantizer)
        quant = self.self_attn.qkv_proj.input_quantizer(x)
        if residual is None:
            residual = x
            h = self.input_layernorm(x, quant=quant)
        else:
            h, residual = self.input_layernorm(x, residual, quant)  # type: ignore[misc]
        x = self.self_attn(positions, h, kv_cache, backend, meta)  # type: ignore[arg-type]
        quant = self.mlp.gate_up_proj.input_quantizer(x)
        h, residual = self.post_attention_layernorm(x, residual, quant)  # type: ignore[misc]
        return self.mlp(h), residual


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig, max_positions: int, tp: TensorParallel = SINGLE) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, tp)
        rotary = RotaryEmbedding(cfg.rope, cfg.head_dim, max_positions)
        self.layers = nn.ModuleList([DecoderLayer(cfg, rotary, tp) for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: torch.Tensor,
        backend: AttentionBackend, meta: AttentionMetadata,
    ) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        residual: torch.Tensor | None = None
        for i, layer in enumerate(self.layers):
            x, residual = layer(positions, x, residual, kv_caches[i], backend, meta)
        x, _ = self.norm(x, residual)  # type: ignore[misc]
        return x


class LlamaForCausalLM(nn.Module):
    """One class for the four supported architectures; config flags switch the quirks."""

    def __init__(self, cfg: ModelConfig, max_positions: int, tp: TensorParallel = SINGLE) -> None:
        super().__init__()
        self.cfg = cfg
        self.tp = tp
        self.model = LlamaModel(cfg, max_positions, tp)
        emb = self.model.embed_tokens
        self.lm_head = Linear(cfg.hidden_size, emb.rows, bias=False)  # vocab-parallel rows
        if tp.size > 1:
            set_split(self.lm_head, 0, emb.tp_src)  # type: ignore[arg-type]
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: torch.Tensor,
        backend: AttentionBackend, meta: AttentionMetadata,
    ) -> torch.Tensor:
        """input_ids, positions: [T] -> hidden states [T, H]."""
        return self.model(input_ids, positions, kv_caches, backend, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, H] -> fp32 logits [N, V] (every rank: the vocab slices all-gathered)."""
        logits = linear(hidden, self.lm_head.weight).float()  # [N, V / tp]
        if self.tp.size == 1:
            return logits
        return self.tp.all_gather_last(logits)[:, : self.cfg.vocab_size]
