"""The OpenAI load generator (client/openai_load.py): its SSE reader fed any split of a
response, and whole runs against a fake streaming server (asyncio, no front end)."""

from __future__ import annotations

import asyncio
import json
import random

import pytest

pytest.importorskip("httptools")

from inflight.client.openai_load import SSEResponse, StreamTrace, base_url, run_openai  # noqa: E402


def _chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n" % len(p) + p + b"\r\n" for p in parts) + b"0\r\n\r\n"


def _event(obj: object) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
        b"transfer-encoding: chunked\r\n\r\n")


def _choice(text: str, reason: str | None = None) -> dict:
    return {"id": "c", "object": "text_completion", "model": "m", "usage": None,
            "choices": [{"index": 0, "text": text, "finish_reason": reason, "logprobs": None}]}


USAGE = {"id": "c", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 7,
                                             "total_tokens": 10}}
# three chunks with a choice (the last one empty text with the finish reason), then usage,
# [DONE]; one event with CRLF line ends and a comment line, as other servers send them
GOOD = HEAD + _chunked(_event(_choice("Hel")) + _event(_choice("lo")),
                       b": keep-alive\r\ndata: " + json.dumps(_choice("", "length")).encode()
                       + b"\r\n\r\n",
                       _event(USAGE), b"data: [DONE]\n\n")


def feed(pieces: list[bytes], lost: bool = True) -> StreamTrace:
    """Run an SSEResponse over ``pieces`` (then the connection closes)."""
    async def go() -> StreamTrace:
        trace = StreamTrace()
        finished = asyncio.get_running_loop().create_future()
        proto = SSEResponse(trace, finished)
        for p in pieces:
            proto.data_received(p)
        if lost:
            proto.connection_lost(None)
        assert finished.done()
        return trace

    return asyncio.run(go())


def _splits(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(data):
        n = rng.randint(1, 40)
        out.append(data[i:i + n])
        i += n
    return out


@pytest.mark.parametrize("how", ["whole", "bytewise", "random0", "random1", "random2"])
def test_counts_every_chunk_in_any_split(how: str) -> None:
    pieces = {"whole": [GOOD], "bytewise": [GOOD[i:i + 1] for i in range(len(GOOD))]}.get(
        how) or _splits(GOOD, int(how[-1]))
    t = feed(pieces)
    assert t.error is None and t.done
    assert len(t.times) == 3  # usage and [DONE] are no chunks
    assert t.output_tokens == 7


@pytest.mark.parametrize("case, message", [
    (b"HTTP/1.1 400 Bad Request\r\ncontent-length: 27\r\n\r\n{\"error\": {\"message\": \"x\"}}",
     "HTTP 400"),
    (HEAD + _chunked(_event(_choice("a")), _event({"error": {"message": "engine died"}}),
                     b"data: [DONE]\n\n"), "engine died"),
    (HEAD + _chunked(_event(_choice("a"))), "without data: [DONE]"),
    (HEAD + _chunked(_event(_choice("a")), b"data: {not json\n\n", b"data: [DONE]\n\n"),
     "not JSON"),
    (HEAD + b"%x\r\n" % len(_event(_choice("a"))) + _event(_choice("a")) + b"\r\n",
     "connection closed"),  # cut before the terminating chunk
    (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n", "malformed HTTP"),
])
def test_failures_are_errors(case: bytes, message: str) -> None:
    t = feed([case])
    assert t.error is not None and message in t.error, t.error
    assert not t.done


async def _serve(requests: list[dict], scripts: dict[str, bytes]) -> asyncio.AbstractServer:
    """A fake front end: answers each POST with scripts[prompt], written in small pieces."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)}
        body = json.loads(await reader.readexactly(int(headers["content-length"])))
        requests.append({"line": lines[0], "headers": headers, "body": body})
        for piece in _splits(scripts[body["prompt"]], len(requests)):
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0)
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def test_run_against_a_fake_server() -> None:
    bad = HEAD + _chunked(_event({"error": {"message": "refused"}}), b"data: [DONE]\n\n")
    scripts = {"good": GOOD, "bad": bad}
    prompts = ["good"] * 9 + ["bad"]
    requests: list[dict] = []

    async def go() -> tuple[list[StreamTrace], float]:
        server = await _serve(requests, scripts)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await run_openai(f"127.0.0.1:{port}", "m", prompts, [7] * 10, concurrency=3,
                                    api_key="k", rate=1000.0)

    traces, wall = asyncio.run(go())
    assert wall > 0
    assert [t.error is None for t in traces] == [True] * 9 + [False]
    assert all(len(t.times) == 3 and t.output_tokens == 7 and t.done for t in traces[:9])
    assert "refused" in (traces[9].error or "")
    assert len(requests) == 10
    r = requests[0]
    assert r["line"] == "POST /v1/completions HTTP/1.1"
    assert r["headers"]["authorization"] == "Bearer k"
    assert r["body"] == {"model": "m", "prompt": r["body"]["prompt"], "max_tokens": 7,
                         "temperature": 0, "stream": True,
                         "stream_options": {"include_usage": True}, "ignore_eos": True,
                         "min_tokens": 7}


def test_refused_connection_is_an_error() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    traces, _ = asyncio.run(run_openai(f"127.0.0.1:{port}", "m", ["x"], [1]))
    assert traces[0].error is not None and not traces[0].done


def test_base_url() -> None:
    assert base_url("h:1") == "http://h:1/v1"
    assert base_url("http://h:1/v1/") == "http://h:1/v1"
    assert base_url("http://h:1/") == "http://h:1/v1"
