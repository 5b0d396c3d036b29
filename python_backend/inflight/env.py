"""Every environment variable inflight reads, in one place, all prefixed ``INFLIGHT_``."""

from __future__ import annotations

import os


def _get(name: str, default: str = "") -> str:
    return os.environ.get(f"INFLIGHT_{name}", default)


def cache_dir() -> str:
    """Where tiny test/demo checkpoints and build artefacts are cached."""
    return _get("CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "inflight"))


def attention_backend() -> str:
    """Force an attention backend: ``torch`` (reference) or ``triton``; empty means auto."""
    return _get("ATTENTION_BACKEND")


def log_level() -> str:
    return _get("LOG_LEVEL", "WARNING")


def disable_progress() -> bool:
    return _get("NO_PROGRESS", "0") not in ("", "0", "false", "False")


def tritonserver_path() -> str:
    """Explicit tritonserver binary; otherwise PATH, then the nvidia-pytriton wheel."""
    return _get("TRITONSERVER", "")


def allow_fault_injection() -> bool:
    """Tests only: lets config.pbtxt's ``fault_injection_step`` make the engine raise.

    Unset in production, so a repository parameter alone can never break a live engine.
    """
    return _get("ALLOW_FAULT_INJECTION", "0") == "1"


def openai_api_key() -> str:
    """The OpenAI front end's API key (``inflight openai``), kept out of the process list."""
    return _get("OPENAI_API_KEY")
