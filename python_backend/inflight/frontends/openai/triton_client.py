"""The bridge to Triton: one gRPC bidirectional stream per generation, asyncio only.

Why the `llm` model (vLLM backend contract) and not the ensemble: one model, one IPC hop per
response (the fast path), the sampling parameters travel as one JSON string (no tensor per
field), and it returns what the API needs: finish reason, logprobs with token ids, exact
input and output token counts. Every call is one ``ModelStreamInfer`` stream of
``tritonclient.grpc.aio``; closing the generator before the final response (the HTTP client
went away, a task was cancelled) cancels that gRPC stream, which Triton turns into a
cancelled request: the engine aborts it and frees its KV blocks. Streams are spread over a
few channels (own TCP connections), all on the caller's event loop: no thread per request.
"""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import tritonclient.grpc.aio as aio
from tritonclient.grpc import service_pb2, service_pb2_grpc

from inflight.frontends.openai.errors import OpenAIError, from_triton

_MAX_MSG = 2**31 - 1


@dataclass
class Piece:
    """One response of the `llm` model: a text delta and what came with it."""

    text: str = ""
    finish_reason: str | None = None
    logprobs: list[dict[str, Any]] | None = None
    num_input_tokens: int | None = None
    num_output_tokens: int | None = None
    final: bool = False


def _bytes_list(raw: bytes) -> list[bytes]:
    """Triton BYTES tensor content: each element a little-endian uint32 length + bytes."""
    out, i = [], 0
    while i + 4 <= len(raw):
        (n,) = struct.unpack_from("<I", raw, i)
        out.append(raw[i + 4: i + 4 + n])
        i += 4 + n
    return out


def parse_response(resp: Any) -> Piece:
    """ModelInferResponse (protobuf) -> Piece, reading raw contents without numpy."""
    piece = Piece(final=resp.parameters["triton_final_response"].bool_param)
    raws = resp.raw_output_contents
    for k, out in enumerate(resp.outputs):
        raw = raws[k] if k < len(raws) else b""
        name = out.name
        if name == "text_output":
            piece.text = b"".join(_bytes_list(raw)).decode("utf-8", "replace")
        elif name == "finish_reason":
            items = _bytes_list(raw)
            piece.finish_reason = items[0].decode() if items and items[0] else None
        elif name == "logprobs":
            items = _bytes_list(raw)
            piece.logprobs = json.loads(items[0]) if items else []
        elif name in ("num_input_tokens", "num_output_tokens") and len(raw) >= 4:
            setattr(piece, name, struct.unpack_from("<I", raw)[0])
    return piece


def _bytes_element(value: str) -> bytes:
    """One BYTES tensor element as raw content: little-endian uint32 length + UTF-8."""
    raw = value.encode("utf-8")
    return struct.pack("<I", len(raw)) + raw


_TRUE, _FALSE = b"\x01", b"\x00"


def build_request(model: str, prompt: str, sampling_json: str, *, stream: bool, logprobs: bool,
                  request_id: str = "") -> service_pb2.ModelInferRequest:
    """The `llm` model's request as tritonclient would build it (shape [1] tensors, raw
    contents), straight into the protobuf: no numpy, no InferInput per tensor."""
    req = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    tensors: list[tuple[str, str, bytes]] = [
        ("text_input", "BYTES", _bytes_element(prompt)),
        ("stream", "BOOL", _TRUE if stream else _FALSE),
        ("sampling_parameters", "BYTES", _bytes_element(sampling_json)),
        ("exclude_input_in_output", "BOOL", _TRUE),
        ("return_finish_reason", "BOOL", _TRUE),
        ("return_num_input_tokens", "BOOL", _TRUE),
        ("return_num_output_tokens", "BOOL", _TRUE)]
    if logprobs:
        tensors.append(("return_logprobs", "BOOL", _TRUE))
    for name, dtype, raw in tensors:
        t = req.inputs.add()
        t.name, t.datatype = name, dtype
        t.shape.append(1)
        req.raw_input_contents.append(raw)
    return req


class TritonBridge:
    """Generation streams on ``channels`` gRPC channels of their own (the generated stub, no
    tritonclient wrapper per response); the admin calls on a tritonclient aio client."""

    def __init__(self, url: str, channels: int = 4) -> None:
        args = [("grpc.max_send_message_length", _MAX_MSG),
                ("grpc.max_receive_message_length", _MAX_MSG),
                ("grpc.use_local_subchannel_pool", 1),  # a TCP connection per channel
                ("grpc.keepalive_time_ms", 30000), ("grpc.http2.max_pings_without_data", 0)]
        self.url = url
        self.admin = aio.InferenceServerClient(url, channel_args=args)
        self.channels = [grpc.aio.insecure_channel(url, options=args) for _ in range(channels)]
        self._next = itertools.cycle([service_pb2_grpc.GRPCInferenceServiceStub(c)
                                      for c in self.channels])

    async def close(self) -> None:
        await self.admin.close()
        for c in self.channels:
            await c.close()

    async def server_ready(self) -> bool:
        try:
            return bool(await self.admin.is_server_ready())
        except Exception:  # noqa: BLE001 - unreachable counts as not ready
            return False

    async def ready_models(self) -> list[str]:
        index = await self.admin.get_model_repository_index(as_json=True)
        return [m["name"] for m in index.get("models", []) if m.get("state") == "READY"]

    async def model_ready(self, name: str) -> bool:
        try:
            return bool(await self.admin.is_model_ready(name))
        except Exception:  # noqa: BLE001
            return False

    async def model_config(self, name: str) -> dict[str, Any]:
        cfg = await self.admin.get_model_config(name, as_json=True)
        return dict(cfg.get("config", cfg))

    async def generate(self, model: str, prompt: str, sampling: dict[str, Any], *,
                       stream: bool, logprobs: bool, request_id: str = "") -> AsyncIterator[Piece]:
        """The responses of one request, the final one last (``Piece.final``). Raises
        OpenAIError for an error response; leaving early cancels the request in Triton."""
        request = build_request(model, prompt, json.dumps(sampling), stream=stream,
                                logprobs=logprobs, request_id=request_id)
        # one request, then the writing side closes; responses keep coming until the final
        call = next(self._next).ModelStreamInfer((request,))
        finished = False
        try:
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    break
                if msg.error_message:
                    finished = True
                    raise from_triton(msg.error_message)
                piece = parse_response(msg.infer_response)
                finished = piece.final
                yield piece
                if finished:
                    return
            finished = True
            raise OpenAIError(502, f"Triton closed the stream of model '{model}' before its "
                              "final response", type="internal_error")
        except grpc.RpcError as e:
            finished = True
            raise OpenAIError(503, f"Triton at {self.url} is unreachable or failed: "
                              f"{e.code().name if hasattr(e, 'code') else e}",
                              type="service_unavailable") from None
        finally:
            if not finished:
                call.cancel()
