"""The FastAPI application: routes, API key, body-size limit, OpenAI-shaped errors.

One asyncio event loop serves every connection; a streamed answer is an async generator
over the gRPC stream, so thousands of concurrent streams cost no thread each.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inflight.frontends.openai.chat import create_chat
from inflight.frontends.openai.completions import create_completion
from inflight.frontends.openai.config import OpenAIConfig
from inflight.frontends.openai.errors import OpenAIError, bad_request
from inflight.frontends.openai.protocol import ChatCompletionRequest, CompletionRequest
from inflight.frontends.openai.registry import ModelRegistry
from inflight.frontends.openai.triton_client import TritonBridge

log = logging.getLogger(__name__)


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def error_response(e: OpenAIError) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return Response(orjson.dumps(e.body()), status_code=e.status, media_type="application/json",
                    headers=headers)


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
                err = OpenAIError(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                                  code="invalid_api_key")
                return await error_response(err)(scope, receive, send)
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return await error_response(_too_large(self.max_body))(scope, receive, send)
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


async def parse_body(request: Request, model: type[BaseModel]) -> Any:
    raw = await request.body()
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


def build_app(cfg: OpenAIConfig) -> FastAPI:
    bridge: TritonBridge
    registry: ModelRegistry

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal bridge, registry
        # gRPC aio channels belong to the loop that creates them: uvicorn's, started by now
        bridge = TritonBridge(cfg.triton_url, cfg.grpc_channels)
        registry = ModelRegistry(cfg, bridge)
        app.state.registry, app.state.bridge = registry, bridge
        try:
            await registry.refresh()
            log.info("serving models: %s", ", ".join(registry.models) or "none yet")
        except Exception as e:  # noqa: BLE001 - Triton not up yet: found on first request
            log.warning("Triton at %s not reachable yet (%s); models are looked up per request",
                        cfg.triton_url, e)
        yield
        await bridge.close()

    app = FastAPI(title="inflight OpenAI-compatible API", lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(GuardMiddleware, api_key=cfg.api_key, max_body=cfg.max_body_bytes)

    @app.exception_handler(OpenAIError)
    async def _openai_error(_: Request, e: OpenAIError) -> Response:
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException) -> Response:
        return error_response(OpenAIError(e.status_code, str(e.detail)))

    @app.get("/health")
    async def health() -> Response:
        if await bridge.server_ready():
            return Response(status_code=200)
        return error_response(OpenAIError(503, f"Triton at {cfg.triton_url} is not ready"))

    @app.get("/v1/models")
    async def list_models() -> Response:
        try:
            await registry.refresh()
        except Exception as e:  # noqa: BLE001
            raise OpenAIError(503, f"Triton at {cfg.triton_url} is unreachable: {e}") from None
        return json_response({"object": "list", "data": [_card(m.name, m.created)
                                                        for m in registry.models.values()]})

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str) -> Response:
        m = await registry.get(name)
        return json_response(_card(m.name, m.created))

    async def run(request: Request, model_cls: type[BaseModel],
                  handler: Callable[..., Awaitable[Any]]) -> Response:
        req = await parse_body(request, model_cls)
        model = await registry.get(req.model)
        out = await handler(req, model, bridge, cfg)
        if isinstance(out, dict):
            return json_response(out)
        return StreamingResponse(out, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await run(request, CompletionRequest, create_completion)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await run(request, ChatCompletionRequest, create_chat)

    return app


def _card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "inflight"}
