"""Load generator for the OpenAI front end: streamed ``/v1/completions``, one asyncio loop,
fixed concurrency or Poisson arrivals, and little CPU per streamed chunk.

Every request asks for exactly ``max_tokens`` tokens (``ignore_eos``, ``min_tokens``:
vLLM's extensions, which the front end passes to the engine), greedy, with
``stream_options.include_usage`` so the output token count is the engine's. What it records
per request matches ``inflight bench serve``'s gRPC traces: send time, arrival time of each
chunk (the front end skips tokens that add no text, so with real weights a chunk is a token
or a few; with dummy weights and a small tokenizer many tokens decode to nothing), output
tokens, error.

Why not the official ``openai`` client (the functional tests use it): it builds a pydantic
object per chunk and streams through httpx, ~0.2 ms of CPU per chunk here, so at the rate
an H200 streams (~6,000 chunks/s) one generator process needs more than a core and the
comparison with gRPC measured the client. Here each request is one HTTP/1.1 connection read
by an ``asyncio.Protocol``: httptools (the parser uvicorn uses) undoes the chunked transfer
encoding in C, events are split and decoded (msgspec) in the data callback, with no task
switch per chunk. It checks as much as the ``openai`` client would: HTTP status, every event
valid JSON, an ``error`` event, the stream ending with ``data: [DONE]`` and a complete response.
"""

from __future__ import annotations

import asyncio
import resource
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgspec
import numpy as np

DONE = b"[DONE]"


@dataclass
class StreamTrace:
    sent: float = 0.0
    times: list[float] = field(default_factory=list)
    output_tokens: int = 0
    error: str | None = None
    done: bool = False


def base_url(url: str) -> str:
    """``host:port`` / ``http://host:port`` / ``.../v1`` -> ``http://host:port/v1``."""
    u = url if "://" in url else f"http://{url}"
    return u.rstrip("/") if u.rstrip("/").endswith("/v1") else u.rstrip("/") + "/v1"


class SSEResponse(asyncio.Protocol):
    """One streamed completion on its own connection; fills ``trace`` and resolves ``finished``
    once the response is complete or failed (``trace.error`` then says why)."""

    def __init__(self, trace: StreamTrace, finished: asyncio.Future[None]) -> None:
        import httptools

        self.trace = trace
        self.finished = finished
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.buf = b""  # body bytes after the last complete event
        self.status = 0
        self.error_body = b""
        self.saw_done = False
        self.decode = msgspec.json.Decoder().decode

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        import httptools

        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._end(f"malformed HTTP response: {e}")

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(f"the connection closed before the response ended ({exc or 'EOF'})")

    # httptools callbacks
    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self.status != 200:
            self.error_body += body
            return
        now = time.perf_counter()
        buf = self.buf + body
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        *events, self.buf = buf.split(b"\n\n")
        for event in events:
            self._event(event, now)

    def on_message_complete(self) -> None:
        if self.status != 200:
            self._end(f"HTTP {self.status}: {self.error_body.decode('utf-8', 'replace')[:500]}")
        elif self.buf.strip():
            self._end(f"the stream ended inside an event: {self.buf[:200]!r}")
        elif not self.saw_done:
            self._end("the stream ended without data: [DONE]")
        else:
            self.trace.done = True
            self._end(None)

    def _event(self, event: bytes, now: float) -> None:
        if event.startswith(b"data: ") and b"\n" not in event:  # what the front end sends
            data = event[6:]
        else:  # the general shape: several lines, comments, other fields
            data = b"\n".join(line[5:].removeprefix(b" ") for line in event.split(b"\n")
                              if line.startswith(b"data:"))
        if not data or self.trace.error is not None:
            return
        if data == DONE:
            self.saw_done = True
            return
        try:
            chunk = self.decode(data)
        except msgspec.DecodeError as e:
            self._end(f"an event is not JSON ({e}): {data[:200]!r}")
            return
        if "error" in chunk:
            self._end(f"error event: {chunk['error']}")
            return
        # every chunk with a choice counts, its text empty or not: the front end only sends
        # empty text with a finish reason, and a request whose tokens all decode to nothing
        # (dummy weights, a small tokenizer) still completed
        if chunk.get("choices"):
            self.trace.times.append(now)
        usage = chunk.get("usage")
        if usage:
            self.trace.output_tokens = int(usage["completion_tokens"])

    def _end(self, error: str | None) -> None:
        if self.finished.done():
            return
        if error is not None:
            self.trace.error = error
            self.trace.done = False
        self.finished.set_result(None)
        if self.transport is not None:
            self.transport.close()


def request_bytes(host: str, path: str, body: bytes, api_key: str) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Accept: text/event-stream\r\nAuthorization: Bearer {api_key}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode("latin-1") + body


def _raise_fd_limit(wanted: int) -> None:
    """One connection per request in flight: make room for them (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        top = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))


async def stream_completion(host: str, port: int, payload: bytes, trace: StreamTrace) -> None:
    """Send one request (``payload``: the whole HTTP request) and read its stream into ``trace``."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    trace.sent = time.perf_counter()
    try:
        transport, _ = await loop.create_connection(lambda: SSEResponse(trace, finished),
                                                    host, port)
    except OSError as e:
        trace.error = f"{type(e).__name__}: {e}"
        return
    try:
        transport.write(payload)
        await finished
    finally:
        transport.close()


async def run_openai(url: str, model: str, prompts: list[str], max_tokens: list[int], *,
                     rate: float = float("inf"), concurrency: int = 256, seed: int = 0,
                     api_key: str = "none") -> tuple[list[StreamTrace], float]:
    try:
        import httptools  # noqa: F401
    except ImportError:
        raise ImportError("the OpenAI load generator needs httptools (the 'openai' extra: "
                          "pip install 'inflight[openai]')") from None
    u = urlsplit(base_url(url))
    if u.scheme != "http" or u.hostname is None:
        raise ValueError(f"{url}: the load generator speaks plain http://host:port only")
    host, port = u.hostname, u.port or 80
    path = u.path.rstrip("/") + "/completions"
    _raise_fd_limit(concurrency + 256)
    traces = [StreamTrace() for _ in prompts]
    sem = asyncio.Semaphore(concurrency)
    rng = np.random.default_rng(seed)
    encode = msgspec.json.Encoder().encode

    def payload(i: int) -> bytes:
        body: dict[str, Any] = {
            "model": model, "prompt": prompts[i], "max_tokens": max_tokens[i], "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True},
            "ignore_eos": True, "min_tokens": max_tokens[i]}
        return request_bytes(u.netloc, path, encode(body), api_key)

    async def one(i: int) -> None:
        async with sem:
            await stream_completion(host, port, payload(i), traces[i])

    async def paced() -> None:
        tasks = []
        for i in range(len(prompts)):
            if rate != float("inf"):
                await asyncio.sleep(rng.exponential(1.0 / rate))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)

    t0 = time.perf_counter()
    await paced()
    return traces, time.perf_counter() - t0


def summarize_errors(traces: list[StreamTrace]) -> tuple[int, str | None]:
    errs = [t.error for t in traces if t.error]
    return len(errs), (errs[0] if errs else None)
