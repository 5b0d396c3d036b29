"""Triton's HTTP generate extension (``/v2/models/<model>/generate[_stream]``), stdlib only.

>>> from inflight.client.http import generate_stream              # doctest: +SKIP
>>> for event in generate_stream("localhost:8000", "ensemble",
...                              {"text_input": "Hi", "max_tokens": 16, "stream": True}):
...     print(event["text_output"], end="")

The JSON payload maps input names to values (scalars for ``dims: [1]`` inputs); each
response is a JSON object of output name -> value plus ``model_name``/``model_version``.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

__all__ = ["TritonHTTPError", "generate", "generate_stream", "iter_sse_data"]


class TritonHTTPError(RuntimeError):
    """A non-200 answer, or an error event in a stream; ``message`` is the server's text."""

    def __init__(self, status: int, message: str, model: str = "") -> None:
        where = f"{model}: " if model else ""
        super().__init__(f"{where}HTTP {status}: {message}")
        self.status = status
        self.message = message


def generate(
    url: str,
    model: str,
    payload: Mapping[str, Any],
    *,
    version: str | None = None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """POST ``.../generate`` and return the single JSON response."""
    conn, response = _post(url, _path(model, version, "generate"), payload, timeout, stream=False)
    try:
        body = response.read().decode("utf-8", errors="replace")
        if response.status != 200:
            raise TritonHTTPError(response.status, _error_message(body), model)
        result: dict[str, Any] = json.loads(body)
        return result
    finally:
        conn.close()


def generate_stream(
    url: str,
    model: str,
    payload: Mapping[str, Any],
    *,
    version: str | None = None,
    timeout: float = 60.0,
) -> Iterator[dict[str, Any]]:
    """POST ``.../generate_stream``; yield each server-sent event's JSON as it arrives.

    ``timeout`` bounds each socket read. Closing the iterator early closes the connection,
    which Triton treats as a cancellation.
    """
    conn, response = _post(url, _path(model, version, "generate_stream"), payload, timeout, True)
    try:
        if response.status != 200:
            body = response.read().decode("utf-8", errors="replace")
            raise TritonHTTPError(response.status, _error_message(body), model)
        for event, data in iter_sse_data(response):
            parsed = _parse_event_data(data)
            if event == "error" or _is_error(parsed):
                raise TritonHTTPError(response.status, _error_message(data), model)
            yield parsed
    finally:
        conn.close()


def iter_sse_data(lines: Iterable[bytes]) -> Iterator[tuple[str, str]]:
    """``(event, data)`` per server-sent event from an iterable of byte lines.

    Multi-line ``data:`` fields are joined with newlines; comments (``:``) are skipped.
    """
    event, data = "message", list[str]()
    for raw in lines:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", list[str]()
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
    if data:
        yield event, "\n".join(data)


def _post(
    url: str, path: str, payload: Mapping[str, Any], timeout: float, stream: bool
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    parts = urlsplit(url if "://" in url else f"http://{url}")
    conn_type = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    conn = conn_type(parts.hostname or "localhost", parts.port, timeout=timeout)
    headers = {"Content-Type": "application/json"}
    if stream:
        headers["Accept"] = "text/event-stream"
    try:
        conn.request("POST", parts.path.rstrip("/") + path, json.dumps(payload), headers)
        return conn, conn.getresponse()
    except BaseException:
        conn.close()
        raise


def _path(model: str, version: str | None, endpoint: str) -> str:
    versioned = f"/versions/{quote(version, safe='')}" if version else ""
    return f"/v2/models/{quote(model, safe='')}{versioned}/{endpoint}"


def _parse_event_data(data: str) -> dict[str, Any]:
    try:
        parsed = json.loads(data)
    except ValueError:
        return {"error": data}
    return parsed if isinstance(parsed, dict) else {"data": parsed}


def _is_error(parsed: Mapping[str, Any]) -> bool:
    return "error" in parsed and "model_name" not in parsed


def _error_message(body: str) -> str:
    """Triton answers errors as ``{"error": "..."}`` (as an SSE ``data:`` line on
    generate_stream, even with a 4xx status); fall back to the raw body."""
    if body.startswith(("data:", "event:")):
        events = list(iter_sse_data(body.encode("utf-8").splitlines(keepends=True)))
        body = events[0][1] if events else body
    try:
        parsed = json.loads(body)
    except ValueError:
        return body.strip() or "(empty response)"
    if isinstance(parsed, dict) and "error" in parsed:
        return str(parsed["error"])
    return body.strip()
