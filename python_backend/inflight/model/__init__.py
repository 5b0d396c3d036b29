"""Model classes by HF architecture name, imported lazily from the one registry
(``inflight.config.ARCHITECTURES``)."""

from __future__ import annotations

import importlib

from torch import nn

from inflight.config import ARCHITECTURES, ModelConfig
from inflight.errors import ConfigError


def model_class(cfg: ModelConfig) -> type[nn.Module]:
    if cfg.architecture not in ARCHITECTURES:
        raise ConfigError(f"architecture {cfg.architecture!r} is not supported")
    mod, cls = ARCHITECTURES[cfg.architecture]
    return getattr(importlib.import_module(f"{__name__}.{mod}"), cls)  # type: ignore[no-any-return]
