"""inflight: an LLM serving backend for NVIDIA Triton Inference Server."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from inflight.config import EngineConfig
    from inflight.llm import LLM
    from inflight.outputs import CompletionOutput, RequestOutput, SequenceUpdate
    from inflight.sampling_params import SamplingParams

_LAZY = {
    "LLM": ".llm",
    "SamplingParams": ".sampling_params",
    "EngineConfig": ".config",
    "RequestOutput": ".outputs",
    "CompletionOutput": ".outputs",
    "SequenceUpdate": ".outputs",
}


def __getattr__(name: str) -> Any:
    # lazy: `import inflight` in a Triton model.py stays cheap until the engine is built
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'inflight' has no attribute {name!r}")


__all__ = ["LLM", "SamplingParams", "EngineConfig", "RequestOutput", "CompletionOutput", "SequenceUpdate"]
