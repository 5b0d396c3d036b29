"""Clients built on ``tritonclient`` (packaged as ``inflight.client``).

- :mod:`inflight.client.inputs`: request tensors for the ``ensemble`` (TensorRT-LLM) and
  ``llm`` (vLLM) contracts, no server needed;
- :mod:`inflight.client.grpc_stream`: streaming over gRPC (``GrpcStream``, ``stream_generate``);
- :mod:`inflight.client.http`: the HTTP generate extension with server-sent events;
- :mod:`inflight.client.cli`: the ``inflight-client`` command.

Nothing is imported here, so ``import inflight.client`` stays cheap (no grpc).
"""
