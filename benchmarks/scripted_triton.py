"""A scripted stand-in for tritonserver's gRPC endpoint, to measure what sits in front of it.

It serves one `llm`-contract model: every ``ModelStreamInfer`` request is answered with
``max_tokens`` (from its ``sampling_parameters``) responses of two characters each, one every
``--delay-ms``, the last one final with ``finish_reason`` "length", each with the token counts;
requests on one stream run concurrently (as Triton runs them). The responses are serialized
once each, so the server costs little CPU, and every token is exactly one response (no
coalescing): CPU seconds per chunk of a client or of the OpenAI front end are then exact
figures. Also answers ServerReady, ModelReady, RepositoryIndex and ModelConfig.

    python benchmarks/scripted_triton.py PORT [--delay-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import grpc
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb


def _bytes(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<I", len(raw)) + raw


def response(request_id: str, index: int, count: int) -> bytes:
    """Response ``index`` of ``count`` as serialized ``ModelStreamInferResponse`` bytes."""
    final = index == count - 1
    r = pb.ModelInferResponse(model_name="llm", model_version="1", id=request_id)
    for name, dtype, raw in (("text_output", "BYTES", _bytes("ab")),
                             ("finish_reason", "BYTES", _bytes("length" if final else "")),
                             ("num_input_tokens", "UINT32", struct.pack("<I", 8)),
                             ("num_output_tokens", "UINT32", struct.pack("<I", index + 1))):
        out = r.outputs.add()
        out.name, out.datatype = name, dtype
        out.shape.append(1)
        r.raw_output_contents.append(raw)
    r.parameters["triton_final_response"].bool_param = final
    return pb.ModelStreamInferResponse(infer_response=r).SerializeToString()


def max_tokens(req: pb.ModelInferRequest) -> int:
    names = [t.name for t in req.inputs]
    raw = req.raw_input_contents[names.index("sampling_parameters")]
    return int(json.loads(raw[4:]).get("max_tokens", 16))


def make_stream(delay: float) -> Any:
    async def stream(requests: AsyncIterator[pb.ModelInferRequest],
                     context: Any) -> AsyncIterator[bytes]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def one(req: pb.ModelInferRequest) -> None:
            n = max_tokens(req)
            for i in range(n):
                await asyncio.sleep(delay)
                await queue.put(response(req.id, i, n))

        async def read() -> None:
            tasks = [asyncio.create_task(one(req)) async for req in requests]
            await asyncio.gather(*tasks)
            await queue.put(None)

        reader = asyncio.create_task(read())
        try:
            while (msg := await queue.get()) is not None:
                yield msg
        finally:
            reader.cancel()

    return stream


def _unary(answer: Any, request_type: Any) -> grpc.RpcMethodHandler:
    async def handler(request: Any, context: Any) -> Any:
        return answer

    return grpc.unary_unary_rpc_method_handler(
        handler, request_deserializer=request_type.FromString,
        response_serializer=lambda m: m.SerializeToString())


async def serve(port: int, delay: float) -> None:
    server = grpc.aio.server(options=[("grpc.max_concurrent_streams", 100000)])
    config = mc.ModelConfig(name="llm", input=[mc.ModelInput(name="text_input"),
                                               mc.ModelInput(name="sampling_parameters")])
    index = pb.RepositoryIndexResponse(models=[pb.RepositoryIndexResponse.ModelIndex(
        name="llm", version="1", state="READY")])
    handlers = {
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
            make_stream(delay), request_deserializer=pb.ModelInferRequest.FromString),
        "ServerReady": _unary(pb.ServerReadyResponse(ready=True), pb.ServerReadyRequest),
        "ModelReady": _unary(pb.ModelReadyResponse(ready=True), pb.ModelReadyRequest),
        "RepositoryIndex": _unary(index, pb.RepositoryIndexRequest),
        "ModelConfig": _unary(pb.ModelConfigResponse(config=config), pb.ModelConfigRequest),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService", handlers)])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("port", type=int)
    p.add_argument("--delay-ms", type=float, default=20.0, help="between two responses of a request")
    a = p.parse_args()
    asyncio.run(serve(a.port, a.delay_ms / 1000.0))
