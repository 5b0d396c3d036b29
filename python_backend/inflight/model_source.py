"""What a user may pass where a model is expected, turned into a checkpoint directory.

``resolve_model`` is the one resolver behind ``LLM(model=...)`` and every ``--model`` option
(``inflight generate``, ``repo build``, ``bench``, ``demo``, ``soak``): a Hugging Face
checkpoint directory, or ``tiny:FAMILY`` for a tiny seeded random-weight model built
locally and cached (no download). Errors are :class:`ConfigError` naming what was typed.
"""

from __future__ import annotations

from inflight.config import check_model_dir

TINY_PREFIX = "tiny:"
DIR_HINT = "; pass a Hugging Face checkpoint directory, or tiny:FAMILY for a tiny test model"


def resolve_model(name: str) -> str:
    """A checkpoint directory (checked: it exists and holds config.json), or ``tiny:FAMILY``
    (llama, llama2, mistral, qwen2, qwen3; ``tiny:`` alone means llama) built on first use."""
    if name.startswith(TINY_PREFIX):
        from inflight.testing import tiny

        family = name[len(TINY_PREFIX):] or "llama"
        tiny.check_family(family)  # before anything is built
        return tiny.tiny_model_dir(family)
    check_model_dir(name, DIR_HINT)
    return name
