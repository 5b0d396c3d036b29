"""Llama-family decoder (Llama 2/3, Mistral, Qwen2 with qkv bias, Qwen3 with q/k norm).

Works on the flat token layout: every tensor is [T, ...] over all scheduled tokens of a step.
"""

from __future__ import annotations

import torch
from torch import nn

from inflight.config import ModelConfig
from inflight.model.attention import AttentionBackend, AttentionMetadata
from inflight.model.layers import Linear, RMSNorm, RotaryEmbedding, linear, silu_and_mul

# Fused projections, declared once: fused param -> [(checkpoint name, shard id)].
STACKED_PARAMS: dict[str, list[tuple[str, str]]] = {
    "qkv_proj": [("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v")],
    "gate_up_proj": [("gate_proj", "gate"), ("up_proj", "up")],
}


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.cfg = cfg
        self.scale = cfg.head_dim**-0.5
        self.qkv_proj = Linear(cfg.hidden_size, cfg.q_size + 2 * cfg.kv_size, bias=cfg.attention_bias)
        self.o_proj = Linear(cfg.q_size, cfg.hidden_size, bias=False)
        self.rotary = rotary
        # FP8 KV cache: cache = k / k_scale (per layer; the loader sets checkpoint values)
        self.k_scale = 1.0
        self.v_scale = 1.0
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)

    def shard_offsets(self) -> dict[str, tuple[int, int]]:
        q, kv = self.cfg.q_size, self.cfg.kv_size
        return {"q": (0, q), "k": (q, kv), "v": (q + kv, kv)}

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, kv_cache: torch.Tensor,
        backend: AttentionBackend, meta: AttentionMetadata,
    ) -> torch.Tensor:
        c = self.cfg
        t = x.shape[0]
        qkv = self.qkv_proj(x)  # [T, q + 2kv]
        q, k, v = qkv.split([c.q_size, c.kv_size, c.kv_size], dim=-1)
        q = q.reshape(t, c.num_heads, c.head_dim)
        k = k.reshape(t, c.num_kv_heads, c.head_dim)
        v = v.reshape(t, c.num_kv_heads, c.head_dim)
        if c.qk_norm:
            q = self.q_norm(q)  # type: ignore[assignment]
            k = self.k_norm(k)  # type: ignore[assignment]
        q, k = self.rotary(positions, q, k)
        o = backend.forward(q, k, v, kv_cache[0], kv_cache[1], meta, self.scale,
                             self.k_scale, self.v_scale)  # [T, Hq, D]
        return self.o_proj(o.reshape(t, c.q_size))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.inter = cfg.intermediate_size
        self.gate_up_proj = Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def shard_offsets(self) -> dict[str, tuple[int, int]]:
        return {"gate": (0, self.inter), "up": (self.inter, self.inter)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(silu_and_mul(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, rotary: RotaryEmbedding) -> None:
        super().__init__()
        self.self_attn = Attention(cfg, rotary)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, residual: torch.Tensor | None,
        kv_cache: torch.Tensor, backend: AttentionBackend, meta: AttentionMetadata,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if residual is None:
            residual = x
            x = self.input_layernorm(x)  # type: ignore[assignment]
        else:
            x, residual = self.input_layernorm(x, residual)  # type: ignore[misc]
        x = self.self_attn(positions, x, kv_cache, backend, meta)
        x, residual = self.post_attention_layernorm(x, residual)  # type: ignore[misc]
        return self.mlp(x), residual


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig, max_positions: int) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        rotary = RotaryEmbedding(cfg.rope, cfg.head_dim, max_positions)
        self.layers = nn.ModuleList([DecoderLayer(cfg, rotary) for _ in range(cfg.num_layers)])
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

    def __init__(self, cfg: ModelConfig, max_positions: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = LlamaModel(cfg, max_positions)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: torch.Tensor,
        backend: AttentionBackend, meta: AttentionMetadata,
    ) -> torch.Tensor:
        """input_ids, positions: [T] -> hidden states [T, H]."""
        return self.model(input_ids, positions, kv_caches, backend, meta)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, H] -> fp32 logits [N, V]."""
        return linear(hidden, self.lm_head.weight).float()
