"""Attention backends over the paged KV cache: plan once per step, run once per layer."""

from __future__ import annotations

from inflight.model.attention.base import AttentionBackend, AttentionMetadata
from inflight.model.attention.torch_backend import TorchAttentionBackend


def get_attention_backend(name: str, device: str) -> AttentionBackend:
    """``auto`` picks the Triton kernels on CUDA and the torch reference elsewhere."""
    if name == "auto":
        name = "triton" if device.startswith("cuda") else "torch"
    if name == "torch":
        return TorchAttentionBackend()
    if name == "triton":
        from inflight.model.attention.triton_backend import TritonAttentionBackend

        return TritonAttentionBackend()
    raise ValueError(f"attention_backend must be auto, torch or triton, got {name!r}")


__all__ = ["AttentionBackend", "AttentionMetadata", "TorchAttentionBackend", "get_attention_backend"]
