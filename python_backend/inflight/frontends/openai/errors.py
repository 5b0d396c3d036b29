"""Errors in OpenAI's JSON shape: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import re
from typing import Any

# Triton gRPC status text -> HTTP status (messages start with "[StatusCode.X]" or carry the
# Triton error code name).
_INVALID = ("INVALID_ARG", "INVALID_ARGUMENT")
_UNAVAILABLE = ("UNAVAILABLE", "exceeds maximum queue size")
# "sampling_parameters.max_tokens: must be ..." / "text_input: is empty" -> the offending field
_FIELD = re.compile(r"(?:^|\] ?|: )(?:sampling_parameters\.)?([a-z_]+): ")
# engine field names -> the OpenAI request parameter a client sent
_PARAM_NAMES = {"text_input": "prompt", "stop_words": "stop", "num_return_sequences": "n",
                "sampling_parameters": None}


class OpenAIError(Exception):
    """An error answered to the client in OpenAI's format."""

    def __init__(self, status: int, message: str, *, type: str | None = None,
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _default_type(status)
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def _default_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 404:
        return "not_found_error"
    if status == 413:
        return "request_too_large"
    if status == 503:
        return "service_unavailable"
    return "invalid_request_error" if status < 500 else "internal_error"


def bad_request(message: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param=param)


def model_not_found(model: str, known: list[str]) -> OpenAIError:
    return OpenAIError(404, f"The model '{model}' does not exist; served models: "
                       f"{', '.join(known) or 'none'}", param="model", code="model_not_found")


def from_triton(message: str) -> OpenAIError:
    """A Triton error (stream error message or gRPC status) -> 400 / 503 / 500."""
    text = message.strip()
    if any(k in text for k in _UNAVAILABLE):
        return OpenAIError(503, text, type="service_unavailable")
    m = _FIELD.search(text)
    if m or any(k in text for k in _INVALID):
        param = _PARAM_NAMES.get(m.group(1), m.group(1)) if m else None
        return OpenAIError(400, _strip_status(text), param=param)
    return OpenAIError(500, text, type="internal_error")


def _strip_status(text: str) -> str:
    """"[StatusCode.INVALID_ARGUMENT] x" -> "x"; "in ensemble 'llm', x" keeps its text."""
    return re.sub(r"^\[StatusCode\.[A-Z_]+\]\s*", "", text)
