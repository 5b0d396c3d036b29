"""What completions and chat share: fanning a request out into one engine request per
choice, priming a stream (errors before the first token become HTTP errors), usage."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from inflight.frontends.openai.errors import OpenAIError
from inflight.frontends.openai.streaming import DONE, fan_in, sse
from inflight.frontends.openai.triton_client import Piece, TritonBridge


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class Usage:
    """Exact counts from the model: prompt tokens once per prompt, output tokens per choice."""

    def __init__(self, choices: int, n: int) -> None:
        self.n = n
        self.prompt = [0] * choices
        self.output = [0] * choices

    def add(self, i: int, piece: Piece) -> None:
        if piece.num_input_tokens is not None:
            self.prompt[i] = piece.num_input_tokens
        if piece.num_output_tokens is not None:
            self.output[i] = piece.num_output_tokens

    def to_openai(self) -> dict[str, int]:
        prompt = sum(self.prompt[i] for i in range(0, len(self.prompt), self.n))
        completion = sum(self.output)
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion}


def open_streams(bridge: TritonBridge, model: str, jobs: list[tuple[str, dict[str, Any]]], *,
                 stream: bool, logprobs: bool, request_id: str) -> AsyncIterator[tuple[int, Piece]]:
    """One engine request per (prompt, sampling_parameters); (choice index, piece) as they come."""
    return fan_in([bridge.generate(model, prompt, sp, stream=stream, logprobs=logprobs,
                                   request_id=request_id) for prompt, sp in jobs])


async def collect(pieces: AsyncIterator[tuple[int, Piece]],
                  on_piece: Callable[[int, Piece], None]) -> None:
    async with contextlib.aclosing(pieces):  # type: ignore[type-var]
        async for i, piece in pieces:
            on_piece(i, piece)


async def primed_sse(pieces: AsyncIterator[tuple[int, Piece]],
                     chunks: Callable[[int, Piece], list[dict[str, Any]]],
                     tail: Callable[[], list[dict[str, Any]]]) -> AsyncIterator[bytes]:
    """Wait for the first piece (an error before it raises here, so the route answers with
    an HTTP status), then return the SSE body: ``chunks(i, piece)`` per piece, ``tail()``
    after the last, ``[DONE]``. A later error becomes one ``{"error": ...}`` event."""
    try:
        first = await pieces.__anext__()
    except StopAsyncIteration:
        first = None
    except BaseException:
        await pieces.aclose()  # type: ignore[attr-defined]
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                for c in chunks(*first):
                    yield sse(c)
                async for i, piece in pieces:
                    for c in chunks(i, piece):
                        yield sse(c)
            for c in tail():
                yield sse(c)
        except OpenAIError as e:
            yield sse(e.body())
        finally:
            await pieces.aclose()  # type: ignore[attr-defined]
        yield DONE

    return body()
