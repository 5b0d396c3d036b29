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
import numpy as np
import tritonclient.grpc.aio as aio
from tritonclient.grpc import InferInput

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


def _input(name: str, value: Any) -> InferInput:
    if isinstance(value, bool):
        arr = np.array([value], dtype=bool)
        x = InferInput(name, [1], "BOOL")
    else:
        arr = np.array([value.encode("utf-8")], dtype=object)
        x = InferInput(name, [1], "BYTES")
    x.set_data_from_numpy(arr)
    return x


class TritonBridge:
    def __init__(self, url: str, channels: int = 4) -> None:
        args = [("grpc.max_send_message_length", _MAX_MSG),
                ("grpc.max_receive_message_length", _MAX_MSG),
                ("grpc.use_local_subchannel_pool", 1),  # a TCP connection per channel
                ("grpc.keepalive_time_ms", 30000), ("grpc.http2.max_pings_without_data", 0)]
        self.url = url
        self.clients = [aio.InferenceServerClient(url, channel_args=args) for _ in range(channels)]
        self._next = itertools.cycle(self.clients)

    async def close(self) -> None:
        for c in self.clients:
            await c.close()

    async def server_ready(self) -> bool:
        try:
            return bool(await self.clients[0].is_server_ready())
        except Exception:  # noqa: BLE001 - unreachable counts as not ready
            return False

    async def ready_models(self) -> list[str]:
        index = await self.clients[0].get_model_repository_index(as_json=True)
        return [m["name"] for m in index.get("models", []) if m.get("state") == "READY"]

    async def model_ready(self, name: str) -> bool:
        try:
            return bool(await self.clients[0].is_model_ready(name))
        except Exception:  # noqa: BLE001
            return False

    async def model_config(self, name: str) -> dict[str, Any]:
        cfg = await self.clients[0].get_model_config(name, as_json=True)
        return dict(cfg.get("config", cfg))

    async def generate(self, model: str, prompt: str, sampling: dict[str, Any], *,
                       stream: bool, logprobs: bool, request_id: str = "") -> AsyncIterator[Piece]:
        """The responses of one request, the final one last (``Piece.final``). Raises
        OpenAIError for an error response; leaving early cancels the request in Triton."""
        inputs = [_input("text_input", prompt), _input("stream", stream),
                  _input("sampling_parameters", json.dumps(sampling)),
                  _input("exclude_input_in_output", True),
                  _input("return_finish_reason", True),
                  _input("return_num_input_tokens", True),
                  _input("return_num_output_tokens", True)]
        if logprobs:
            inputs.append(_input("return_logprobs", True))

        async def one_request() -> AsyncIterator[dict[str, Any]]:
            yield {"model_name": model, "inputs": inputs, "request_id": request_id}

        call = next(self._next).stream_infer(one_request())
        finished = False
        try:
            async for result, error in call:
                if error is not None:
                    finished = True
                    raise from_triton(str(error))
                piece = parse_response(result.get_response())
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
