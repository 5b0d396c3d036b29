"""Error types shared by the engine, the API and the Triton adapters."""

from __future__ import annotations


class InflightError(Exception):
    """Base class of every error inflight raises on purpose."""


class InvalidRequestError(InflightError, ValueError):
    """A request field is out of range. ``field`` names it; the message gives the bound."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class QueueFullError(InflightError):
    """The engine queue holds ``max_queue_size`` requests already."""


class EngineDeadError(InflightError):
    """The engine loop stopped after a fault; no further requests are accepted."""


class ConfigError(InflightError, ValueError):
    """An engine or model configuration value is invalid or a checkpoint is malformed."""
