"""The ASGI application: routes, API key, body-size limit, OpenAI-shaped errors.

A plain ASGI callable on uvicorn, no web framework: there are five routes, and a streamed
chunk should cost a gRPC read, one JSON dump and uvicorn's ``send``, nothing in between
(FastAPI's middleware stack and Starlette's StreamingResponse were ~10% of the front end's
CPU at 64 tokens per request). One asyncio event loop per worker serves every connection; a
streamed answer is an async generator over the gRPC stream, so thousands of concurrent
streams cost no thread each.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from inflight.frontends.openai.chat import create_chat
from inflight.frontends.openai.completions import create_completion
from inflight.frontends.openai.config import OpenAIConfig
from inflight.frontends.openai.errors import OpenAIError, bad_request
from inflight.frontends.openai.protocol import ChatCompletionRequest, CompletionRequest
from inflight.frontends.openai.registry import ModelRegistry
from inflight.frontends.openai.triton_client import TritonBridge

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no")]


async def send_json(send: Send, body: Any, status: int = 200,
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
    raw = orjson.dumps(body)
    await send({"type": "http.response.start", "status": status,
                "headers": _JSON + [(b"content-length", str(len(raw)).encode())]
                + (headers or [])})
    await send({"type": "http.response.body", "body": raw})


async def send_error(send: Send, e: OpenAIError) -> None:
    headers = [(b"www-authenticate", b"Bearer")] if e.status == 401 else None
    await send_json(send, e.body(), e.status, headers)


async def send_empty(send: Send, status: int) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


async def send_sse(send: Send, receive: Receive, body: AsyncIterator[bytes]) -> None:
    """Stream ``body`` as server-sent events until it ends or the client disconnects; a
    disconnect cancels the streaming task, whose generator then closes its gRPC streams (so
    Triton cancels the requests)."""
    async def pump() -> None:
        async with contextlib.aclosing(body):  # type: ignore[type-var]
            await send({"type": "http.response.start", "status": 200, "headers": _SSE})
            async for chunk in body:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    streaming = asyncio.create_task(pump())
    watching = asyncio.create_task(disconnected())
    try:
        await asyncio.wait((streaming, watching), return_when=asyncio.FIRST_COMPLETED)
    finally:
        streaming.cancel()
        watching.cancel()
        await asyncio.gather(streaming, watching, return_exceptions=True)
    if not streaming.cancelled() and streaming.exception() is not None:
        log.error("a stream failed", exc_info=streaming.exception())


class GuardMiddleware:
    """API key (``Authorization: Bearer KEY``) on ``/v1/*`` and the request-body limit: a
    Content-Length over it is refused before reading; a chunked body is counted as read."""

    def __init__(self, app: ASGIApp, api_key: str | None, max_body: int) -> None:
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.key is not None and scope["path"].startswith("/v1"):
            auth = headers.get(b"authorization", b"")
            if not (auth[:7].lower() == b"bearer " and hmac.compare_digest(auth[7:].strip(), self.key)):
                return await send_error(send, OpenAIError(
                    401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                    code="invalid_api_key"))
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await send_error(send, _too_large(self.max_body))
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _too_large(self.max_body)
            return message

        await self.app(scope, counted, send)


def _too_large(limit: int) -> OpenAIError:
    return OpenAIError(413, f"request body is larger than {limit} bytes", code="request_too_large")


async def read_body(receive: Receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise bad_request("the client disconnected before sending the whole body")
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


def parse_body(raw: bytes, model: type[BaseModel]) -> Any:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise bad_request(f"the request body is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise bad_request("the request body must be a JSON object")
    try:
        return model.model_validate(obj)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ()) if not isinstance(p, int)) or None
        raise bad_request(f"{param or 'body'}: {first.get('msg')}", param=param) from None


Handler = Callable[..., Awaitable[Any]]
_GENERATE: dict[str, tuple[type[BaseModel], Handler]] = {
    "/v1/completions": (CompletionRequest, create_completion),
    "/v1/chat/completions": (ChatCompletionRequest, create_chat),
}


class OpenAIApp:
    """``GET /health``, ``GET /v1/models[/NAME]``, ``POST /v1/completions``,
    ``POST /v1/chat/completions``; the bridge and registry live from lifespan startup to
    shutdown (gRPC aio channels belong to the loop that creates them: uvicorn's)."""

    def __init__(self, cfg: OpenAIConfig) -> None:
        self.cfg = cfg
        self.bridge: TritonBridge | None = None
        self.registry: ModelRegistry | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                await self._route(scope, receive, send)
            except OpenAIError as e:
                await send_error(send, e)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as e:  # noqa: BLE001 - uvicorn exits with the message
                    await send({"type": "lifespan.startup.failed", "message": repr(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.bridge is not None:
                    await self.bridge.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def startup(self) -> None:
        cfg = self.cfg
        self.bridge = TritonBridge(cfg.triton_url, cfg.grpc_channels)
        self.registry = ModelRegistry(cfg, self.bridge)
        try:
            await self.registry.refresh()
            log.info("serving models: %s", ", ".join(self.registry.models) or "none yet")
        except Exception as e:  # noqa: BLE001 - Triton not up yet: found on first request
            log.warning("Triton at %s not reachable yet (%s); models are looked up per request",
                        cfg.triton_url, e)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        assert self.bridge is not None and self.registry is not None, "lifespan not started"
        if path in _GENERATE:
            _allow(method, "POST")
            model_cls, handler = _GENERATE[path]
            req = parse_body(await read_body(receive), model_cls)
            model = await self.registry.get(req.model)
            out = await handler(req, model, self.bridge, self.cfg)
            if isinstance(out, dict):
                return await send_json(send, out)
            return await send_sse(send, receive, out)
        if path == "/health":
            _allow(method, "GET")
            if await self.bridge.server_ready():
                return await send_empty(send, 200)
            raise OpenAIError(503, f"Triton at {self.cfg.triton_url} is not ready")
        if path == "/v1/models":
            _allow(method, "GET")
            try:
                await self.registry.refresh()
            except Exception as e:  # noqa: BLE001
                raise OpenAIError(503, f"Triton at {self.cfg.triton_url} is unreachable: "
                                  f"{e}") from None
            return await send_json(send, {"object": "list", "data": [
                _card(m.name, m.created) for m in self.registry.models.values()]})
        if path.startswith("/v1/models/") and len(path) > len("/v1/models/"):
            _allow(method, "GET")
            m = await self.registry.get(path[len("/v1/models/"):])
            return await send_json(send, _card(m.name, m.created))
        raise OpenAIError(404, "Not Found")


def _allow(method: str, allowed: str) -> None:
    if method != allowed:
        raise OpenAIError(405, "Method Not Allowed")


def build_app(cfg: OpenAIConfig) -> ASGIApp:
    return GuardMiddleware(OpenAIApp(cfg), api_key=cfg.api_key, max_body=cfg.max_body_bytes)


def _card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "inflight"}
