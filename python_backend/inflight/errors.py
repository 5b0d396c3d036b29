"""Error types shared by the engine, the API and the Triton adapters."""

from __future__ import annotations

import difflib
from collections.abc import Sequence


class InflightError(Exception):
    """Base class of every error inflight raises on purpose."""


class InvalidRequestError(InflightError, ValueError):
    """A request field is out of range. ``field`` names it; the message gives the bound.

    ``wording``: the whole message instead, where a peer's clients compare an error's exact
    text (a compatibility profile); it must still name the field."""

    def __init__(self, field: str, message: str, *, wording: str | None = None) -> None:
        if wording is not None and field not in wording:
            raise ValueError(f"wording {wording!r} does not name the field {field!r}")
        super().__init__(wording if wording is not None else f"{field}: {message}")
        self.field = field


class QueueFullError(InflightError):
    """The engine queue holds ``max_queue_size`` requests already."""


class EngineDeadError(InflightError):
    """The engine loop stopped after a fault; no further requests are accepted."""


class ConfigError(InflightError, ValueError):
    """An engine or model configuration value is invalid or a checkpoint is malformed."""


def did_you_mean(name: str, known: Sequence[str]) -> str:
    """``"; did you mean 'x'? known: a, b, c"``: the tail of an unknown-name error."""
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ";"
    return f"{hint} known: {', '.join(known)}"
