"""Reference attention in plain torch: correct on CPU and GPU, one request at a time."""

from __future__ import annotations

import torch

from inflight.model.attention.base import AttentionMetadata

FP8_MAX = 448.0


def to_cache(x: torch.Tensor, dtype: torch.dtype, scale: float) -> torch.Tensor:
    """Values as the cache stores them: an FP8 cache holds x / scale saturated to +-448."""
    if dtype == torch.float8_e4m3fn:
        return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(dtype)
    return x.to(dtype)


def from_cache(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Cached values -> fp32 (times the scale for an FP8 cache)."""
    return x.float() * scale if x.dtype == torch.float8_e4m3fn else x.float()


def write_kv_cache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    slot_mapping: torch.Tensor, k_scale: float = 1.0, v_scale: float = 1.0,
) -> None:
    """k, v: [T, Hkv, D] -> cache slots slot_mapping [T]."""
    nb, bs, h, d = k_cache.shape
    for x, cache, s in ((k, k_cache, k_scale), (v, v_cache, v_scale)):
        vals = to_cache(x, cache.dtype, s)
        if cache.dtype == torch.float8_e4m3fn:  # CPU index_copy_ has no fp8 kernel: copy bytes
            cache, vals = cache.view(torch.uint8), vals.view(torch.uint8)
        cache.view(nb * bs, h, d).index_copy_(0, slot_mapping, vals)


def gather_context(
    cache: torch.Tensor, block_table: torch.Tensor, seq_len: int
) -> torch.Tensor:
    """cache [num_blocks, bs, H, D], block_table [max_blocks] -> [seq_len, H, D]."""
    bs = cache.shape[1]
    nblocks = (seq_len + bs - 1) // bs
    return cache[block_table[:nblocks].long()].flatten(0, 1)[:seq_len]


def paged_attention_ref(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
    scale: float, k_scale: float = 1.0, v_scale: float = 1.0,
) -> torch.Tensor:
    """Causal attention of each request's new queries over its cached context.

    q: [T, Hq, D] -> [T, Hq, D]. Query i of a request with Lq new tokens and context L sits
    at position L - Lq + i and sees positions <= its own.
    """
    out = torch.empty_like(q)
    hq, hkv = q.shape[1], k_cache.shape[2]
    qsl = meta.query_start_loc_cpu
    nd = meta.num_decodes
    if nd:
        out[:nd] = decode_attention_ref(q[:nd], k_cache, v_cache, meta.block_tables[:nd],
                                        meta.seq_lens[:nd], max(meta.seq_lens_cpu[:nd]), scale,
                                        k_scale, v_scale)
    for b in range(nd, meta.num_reqs):
        seq_len = meta.seq_lens_cpu[b]
        s, e = qsl[b], qsl[b + 1]
        lq = e - s
        k = gather_context(k_cache, meta.block_tables[b], seq_len)  # [L, Hkv, D]
        v = gather_context(v_cache, meta.block_tables[b], seq_len)
        if hq != hkv:
            k = k.repeat_interleave(hq // hkv, dim=1)
            v = v.repeat_interleave(hq // hkv, dim=1)
        qb = q[s:e].transpose(0, 1).float()  # [Hq, Lq, D]
        kb = from_cache(k, k_scale).transpose(0, 1)  # [Hq, L, D]
        vb = from_cache(v, v_scale).transpose(0, 1)
        scores = torch.matmul(qb, kb.transpose(1, 2)) * scale  # [Hq, Lq, L]
        if lq > 1:  # causal: query i sits at position seq_len - lq + i
            pos_q = torch.arange(seq_len - lq, seq_len, device=q.device)[:, None]
            future = torch.arange(seq_len, device=q.device)[None, :] > pos_q  # [Lq, L]
            scores = scores.masked_fill(future, float("-inf"))
        o = torch.matmul(scores.softmax(-1), vb)  # [Hq, Lq, D]
        out[s:e] = o.transpose(0, 1).to(q.dtype)
    return out


def decode_attention_ref(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
    seq_lens: torch.Tensor, max_seq_len: int, scale: float, k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """One query per request, all requests at once. q: [B, Hq, D] -> [B, Hq, D]."""
    b, hq, d = q.shape
    bs, hkv = k_cache.shape[1], k_cache.shape[2]
    nblocks = (max_seq_len + bs - 1) // bs
    tables = block_tables[:, :nblocks].long()
    k = from_cache(k_cache[tables].flatten(1, 2), k_scale)  # [B, L, Hkv, D]
    v = from_cache(v_cache[tables].flatten(1, 2), v_scale)
    g = hq // hkv
    qg = q.float().view(b, hkv, g, d)  # query heads grouped by their kv head
    scores = torch.einsum("bhgd,blhd->bhgl", qg, k) * scale  # [B, Hkv, G, L]
    valid = torch.arange(k.shape[1], device=q.device)[None, :] < seq_lens[:, None].long()  # [B, L]
    scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    o = torch.einsum("bhgl,blhd->bhgd", scores.softmax(-1), v)
    return o.reshape(b, hq, d).to(q.dtype)


class TorchAttentionBackend:
    name = "torch"

    def plan(self, meta: AttentionMetadata) -> None:
        return None

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
        v_cache: torch.Tensor, meta: AttentionMetadata, scale: float, k_scale: float = 1.0,
        v_scale: float = 1.0,
    ) -> torch.Tensor:
        write_kv_cache(k, v, k_cache, v_cache, meta.slot_mapping, k_scale, v_scale)
        return paged_attention_ref(q, k_cache, v_cache, meta, scale, k_scale, v_scale)
