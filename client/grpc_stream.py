"""Streaming inference over Triton's bidirectional gRPC stream (``tritonclient.grpc``).

>>> from inflight.client.grpc_stream import stream_generate      # doctest: +SKIP
>>> for outputs, is_final in stream_generate("localhost:8001", "llm", inputs):
...     print(outputs.get("text_output"), is_final)

Requests ask for an empty final response (``enable_empty_final_response``), so every
request ends with exactly one response whose ``is_final`` is True, which may carry no
outputs. A :class:`GrpcStream` runs one request at a time on one gRPC stream: errors on a
Triton stream carry no request id, so one request per stream is what keeps them attributable
(run several streams for concurrency, as perf_analyzer does).
"""

from __future__ import annotations

import functools
import queue
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, NamedTuple

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

__all__ = [
    "GrpcStream",
    "StreamError",
    "StreamResponse",
    "collect",
    "decode_text",
    "stream_generate",
    "to_infer_inputs",
]

_Item = tuple[Any, "InferenceServerException | None"]


class StreamResponse(NamedTuple):
    """One streamed response: output name -> array, and whether it is the last one."""

    outputs: dict[str, np.ndarray]
    is_final: bool


class StreamError(RuntimeError):
    """The server answered a streamed request with an error (message is the server's)."""


class GrpcStream:
    """One gRPC stream to ``url`` (``host:port``), used for one request at a time.

    Leaving :meth:`generate`'s iterator before the final response (``break``, an
    exception, a timeout) cancels the request on the server
    (``stop_stream(cancel_requests=True)``); the next request opens a new stream.
    """

    def __init__(self, url: str, *, verbose: bool = False, headers: dict[str, str] | None = None):
        self.url = _grpc_target(url)
        self._client = grpcclient.InferenceServerClient(self.url, verbose=verbose)
        self._headers = headers
        self._queue: queue.Queue[_Item] | None = None
        self._in_flight = False  # a request on the stream has not had its final response

    def generate(
        self,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        request_id: str = "",
        parameters: Mapping[str, Any] | None = None,
        outputs: list[str] | None = None,
        timeout: float | None = 60.0,
    ) -> Iterator[StreamResponse]:
        """Send one request; iterate its responses in order, the final one last.

        ``timeout`` bounds the wait for each response (seconds; None waits forever) and
        raises ``TimeoutError`` after cancelling the request.
        """
        responses = self._open()
        self._in_flight = True
        self._client.async_stream_infer(
            model,
            to_infer_inputs(inputs),
            request_id=request_id,
            parameters=dict(parameters) if parameters else None,
            outputs=[grpcclient.InferRequestedOutput(n) for n in outputs] if outputs else None,
            enable_empty_final_response=True,
        )
        return self._responses(responses, model, timeout)

    def _responses(
        self, responses: queue.Queue[_Item], model: str, timeout: float | None
    ) -> Iterator[StreamResponse]:
        finished = False
        try:
            while True:
                try:
                    result, error = responses.get(timeout=timeout)
                except queue.Empty:
                    raise TimeoutError(f"{model}: no response within {timeout}s") from None
                if error is not None:
                    raise StreamError(f"{model}: {_error_text(error)}")
                response = _to_stream_response(result)
                if response.is_final:
                    finished = True
                    self._in_flight = False
                yield response
                if finished:
                    return
        finally:
            if not finished:
                self.cancel()

    def cancel(self) -> None:
        """Cancel what is in flight on this stream and close it."""
        if self._queue is not None:
            self._queue = None
            self._in_flight = False
            self._client.stop_stream(cancel_requests=True)

    def close(self) -> None:
        """Cancel a request still in flight, else close the stream gracefully: a cancel after
        the final response is not free for the server (with an ensemble, tritonserver 2.51
        then kept the ensemble loaded for its whole exit timeout on shutdown)."""
        if self._in_flight:
            self.cancel()
        elif self._queue is not None:
            self._queue = None
            self._client.stop_stream()
        self._client.close()

    def _open(self) -> queue.Queue[_Item]:
        if self._queue is None:
            # A fresh queue per stream: late responses of a cancelled stream land in the
            # old queue, never in the next request's.
            self._queue = queue.Queue()
            callback = functools.partial(_enqueue, self._queue)
            self._client.start_stream(callback=callback, headers=self._headers)
        return self._queue

    def __enter__(self) -> GrpcStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def stream_generate(
    url: str,
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    request_id: str = "",
    parameters: Mapping[str, Any] | None = None,
    timeout: float | None = 60.0,
) -> Iterator[StreamResponse]:
    """One request on its own stream: yields ``(outputs, is_final)`` until the final one.

    Closing the iterator early (``break``) cancels the request on the server.
    """
    with GrpcStream(url) as stream:
        yield from stream.generate(
            model, inputs, request_id=request_id, parameters=parameters, timeout=timeout
        )


def collect(
    url: str,
    model: str,
    inputs: Mapping[str, np.ndarray],
    **kwargs: Any,
) -> list[dict[str, np.ndarray]]:
    """Run :func:`stream_generate` to the end; the outputs of every non-empty response."""
    return [outputs for outputs, _ in stream_generate(url, model, inputs, **kwargs) if outputs]


def to_infer_inputs(inputs: Mapping[str, np.ndarray]) -> list[grpcclient.InferInput]:
    """numpy arrays -> ``InferInput`` (object/str/bytes arrays become BYTES)."""
    infer_inputs = []
    for name, array in inputs.items():
        array = np.asarray(array)
        if array.dtype.kind == "U":
            array = array.astype(np.object_)
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        infer_inputs.append(tensor)
    return infer_inputs


def decode_text(array: np.ndarray | None) -> list[str]:
    """A BYTES output (any shape) -> its strings, row-major, decoded as UTF-8."""
    if array is None:
        return []
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in array.reshape(-1)]


def _enqueue(
    responses: queue.Queue[_Item], result: Any, error: InferenceServerException | None
) -> None:
    responses.put((result, error))


def _to_stream_response(result: Any) -> StreamResponse:
    response = result.get_response()
    final = response.parameters.get("triton_final_response")
    outputs = {out.name: result.as_numpy(out.name) for out in response.outputs}
    return StreamResponse(outputs, bool(final.bool_param) if final is not None else True)


def _error_text(error: InferenceServerException) -> str:
    message = error.message()
    return message if isinstance(message, str) and message else str(error)


def _grpc_target(url: str) -> str:
    """tritonclient.grpc wants ``host:port``; accept ``grpc://host:port`` too."""
    for scheme in ("grpc://", "http://"):
        if url.startswith(scheme):
            return url[len(scheme) :]
    return url
