"""Lazy architecture registry: HF architecture name -> (module, class)."""

from __future__ import annotations

import importlib

from torch import nn

from inflight.config import SUPPORTED_ARCHITECTURES, ModelConfig
from inflight.errors import ConfigError

_REGISTRY: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("llama", "LlamaForCausalLM"),
    "Qwen2ForCausalLM": ("llama", "LlamaForCausalLM"),
    "Qwen3ForCausalLM": ("llama", "LlamaForCausalLM"),
}
assert set(_REGISTRY) == set(SUPPORTED_ARCHITECTURES)


def model_class(cfg: ModelConfig) -> type[nn.Module]:
    if cfg.architecture not in _REGISTRY:
        raise ConfigError(f"architecture {cfg.architecture!r} is not supported")
    mod, cls = _REGISTRY[cfg.architecture]
    return getattr(importlib.import_module(f"{__name__}.{mod}"), cls)  # type: ignore[no-any-return]
