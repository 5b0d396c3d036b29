"""``inflight-client``: send a prompt to a Triton server and stream the text to stdout."""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from inflight.client.inputs import (
    MODEL_KINDS,
    ModelKind,
    SamplingParams,
    build_inputs,
    build_json_payload,
    model_kind_for,
)

DEFAULT_URLS = {"grpc": "localhost:8001", "http": "localhost:8000"}

DESCRIPTION = """\
Send PROMPT to an inflight (or any TensorRT-LLM / vLLM backend) Triton server and print
the generated text; with streaming on (the default) text appears as it is generated.

Two request contracts, picked from the model name (override with --kind):
  ensemble  TensorRT-LLM backend contract (models 'ensemble', 'tensorrt_llm_bls', ...):
            text_input, max_tokens, stream, temperature, top_k, top_p, seed ... [batch, 1]
  llm       vLLM backend contract (model 'llm'): text_input, stream, exclude_input_in_output
            and sampling_parameters as a JSON string
"""

EPILOG = """\
examples:
  inflight-client "The capital of France is"
  inflight-client "Once upon a time" --max-tokens 64 --temperature 0.8 --top-p 0.95 --seed 1
  inflight-client "Hello" --model llm                      # vLLM-style single model
  inflight-client "Hello" --protocol http --url localhost:8000
  inflight-client "Hello" --batch 4 --no-stream            # 4 sequences, printed at the end
  echo "Hello" | inflight-client -

exit status: 0 ok, 1 the server reported an error or was unreachable, 2 bad arguments,
130 interrupted (the in-flight request is cancelled on the server).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inflight-client",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("prompt", help="the prompt text; '-' reads it from stdin")
    conn = parser.add_argument_group("connection")
    conn.add_argument(
        "--url",
        help="server address, host:port (default: localhost:8001 for "
        "grpc, localhost:8000 for http)",
    )
    conn.add_argument(
        "--protocol",
        choices=("grpc", "http"),
        default="grpc",
        help="gRPC bidirectional stream, or HTTP generate/generate_stream with "
        "server-sent events (default: %(default)s)",
    )
    conn.add_argument("--model", default="ensemble", help="model name (default: %(default)s)")
    conn.add_argument(
        "--kind",
        choices=MODEL_KINDS,
        help="request contract (default: 'llm' for model llm, else 'ensemble')",
    )
    conn.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="longest wait for any one response (default: %(default)s)",
    )
    gen = parser.add_argument_group("generation")
    gen.add_argument(
        "--max-tokens",
        type=int,
        default=128,
        metavar="N",
        help="tokens to generate at most (default: %(default)s)",
    )
    gen.add_argument("--temperature", type=float, help="0 = greedy; unset = server default")
    gen.add_argument("--top-k", type=int, metavar="K", help="sample among the K likeliest")
    gen.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling mass, (0, 1]")
    gen.add_argument("--seed", type=int, help="random seed (uint64) for reproducible sampling")
    gen.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="WORD",
        help="stop when WORD is generated (repeatable)",
    )
    gen.add_argument("--echo", action="store_true", help="include the prompt in the output")
    gen.add_argument(
        "--ignore-eos",
        action="store_true",
        help="keep generating past end-of-sequence up to --max-tokens (benchmarks)",
    )
    gen.add_argument(
        "--no-stream",
        action="store_true",
        help="one response with the whole text instead of streamed deltas",
    )
    gen.add_argument(
        "--batch",
        type=int,
        default=1,
        metavar="N",
        help="generate N sequences for the prompt: one batched request for the "
        "ensemble over gRPC, else N concurrent requests (default: 1)",
    )
    gen.add_argument(
        "--seed-input",
        default="seed",
        metavar="NAME",
        help="ensemble input name for the seed (older TensorRT-LLM ensembles: "
        "random_seed) (default: %(default)s)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="print timing (first response, total, responses) to stderr",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        request = _Request.from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        if args.batch == 1:
            _stream_to_stdout(request)
        else:
            _print_batch(request, args.batch)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except _request_errors() as exc:  # server errors, refused connections, timeouts
        newline = "\n" if request.wrote else ""  # end a half-written line of text first
        print(f"{newline}inflight-client: error: {_explain(exc, request)}", file=sys.stderr)
        return 1
    return 0


def _request_errors() -> tuple[type[Exception], ...]:
    """What a request may raise: socket errors and timeouts (OSError), server errors
    (RuntimeError subclasses), and tritonclient's InferenceServerException, which
    ``async_stream_infer`` raises when the gRPC stream failed before the request was queued
    (a refused connection races the enqueue)."""
    try:
        from tritonclient.utils import InferenceServerException
    except ImportError:
        return (OSError, RuntimeError)
    return (OSError, RuntimeError, InferenceServerException)


def _explain(exc: Exception, request: _Request) -> str:
    """The error's text, or, when nothing listens at the address, the same connection
    message whatever the protocol raised (errno, gRPC status, a dead-stream error)."""
    host, port = _host_port(request.url, request.args.protocol)
    try:
        socket.create_connection((host, port), timeout=3.0).close()
    except OSError as probe:
        return (f"cannot connect to {host}:{port} ({_reason(probe)}); is tritonserver running? "
                f"start one with `inflight serve REPO`, or pass --url HOST:PORT (default "
                f"{DEFAULT_URLS[request.args.protocol]} for --protocol {request.args.protocol})")
    return str(exc) or type(exc).__name__


def _host_port(url: str, protocol: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else f"//{url}")
    default = int(DEFAULT_URLS[protocol].rsplit(":", 1)[1])
    return parts.hostname or "localhost", parts.port or default


def _reason(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or str(exc)


class _Request:
    """Everything one invocation sends, and how to send it."""

    def __init__(
        self, args: argparse.Namespace, kind: ModelKind, params: SamplingParams, prompt: str
    ) -> None:
        self.args = args
        self.kind = kind
        self.params = params
        self.prompt = prompt
        self.url: str = args.url or DEFAULT_URLS[args.protocol]
        self.wrote = False  # some text is on stdout already

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> _Request:
        if args.batch < 1:
            raise ValueError(f"--batch must be >= 1, got {args.batch}")
        kind: ModelKind = args.kind or model_kind_for(args.model)
        exclude = None if kind == "ensemble" else True  # vLLM echoes the prompt by default
        if args.echo:
            exclude = False
        params = SamplingParams(
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            seed=args.seed,
            stop=tuple(args.stop),
            stream=not args.no_stream,
            exclude_input_in_output=exclude,
            ignore_eos=args.ignore_eos or None,
        )
        prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
        return cls(args, kind, params, prompt)

    def deltas(self, batch: int = 1) -> Iterator[tuple[int, str]]:
        """``(sequence index, text delta)`` as responses arrive."""
        if self.args.protocol == "http":
            return self._http_deltas()
        return self._grpc_deltas(batch)

    def _grpc_deltas(self, batch: int) -> Iterator[tuple[int, str]]:
        from inflight.client.grpc_stream import stream_generate

        inputs = build_inputs(
            self.kind, [self.prompt] * batch, self.params, seed_input=self.args.seed_input
        )
        for outputs, _ in stream_generate(
            self.url, self.args.model, inputs, timeout=self.args.timeout
        ):
            yield from _grpc_text(outputs)

    def _http_deltas(self) -> Iterator[tuple[int, str]]:
        from inflight.client.http import generate, generate_stream

        payload = build_json_payload(
            self.kind, self.prompt, self.params, seed_input=self.args.seed_input
        )
        if self.params.stream:
            events = generate_stream(self.url, self.args.model, payload, timeout=self.args.timeout)
        else:
            events = iter([generate(self.url, self.args.model, payload, timeout=self.args.timeout)])
        for event in events:
            text = event.get("text_output")
            if text is not None:
                yield 0, "".join(text) if isinstance(text, list) else str(text)


def _grpc_text(outputs: dict[str, np.ndarray]) -> Iterator[tuple[int, str]]:
    """Rows of ``text_output`` ([rows, ...]; first column = first beam) with their index."""
    from inflight.client.grpc_stream import decode_text

    text = outputs.get("text_output")
    if text is None:
        return
    rows = text.reshape(text.shape[0] if text.ndim > 1 else 1, -1)
    index = outputs.get("batch_index")
    indices = [int(i) for i in index.reshape(-1)] if index is not None else range(len(rows))
    for i, row in zip(indices, rows, strict=True):
        yield i, decode_text(row[:1])[0]


def _stream_to_stdout(request: _Request) -> None:
    with _Timer(request.args.verbose) as timer:
        for _, delta in request.deltas():
            timer.tick()
            request.wrote = request.wrote or bool(delta)
            sys.stdout.write(delta)
            sys.stdout.flush()
    sys.stdout.write("\n")


def _print_batch(request: _Request, batch: int) -> None:
    texts = [""] * batch
    with _Timer(request.args.verbose) as timer:
        if request.args.protocol == "grpc" and request.kind == "ensemble":
            _gather(request.deltas(batch), texts, timer.tick)
        else:
            with ThreadPoolExecutor(max_workers=batch) as pool:
                singles = [pool.submit(_collect_one, request, timer.tick) for _ in range(batch)]
                texts = [f.result() for f in singles]
    for i, text in enumerate(texts):
        print(f"--- sequence {i} ---\n{text}")


def _collect_one(request: _Request, tick: Callable[[], None]) -> str:
    texts = [""]
    _gather(request.deltas(), texts, tick)
    return texts[0]


def _gather(deltas: Iterator[tuple[int, str]], texts: list[str], tick: Callable[[], None]) -> None:
    for i, delta in deltas:
        tick()
        texts[i] += delta


class _Timer:
    """Optional stderr timing: time to first response, total time, response count."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.start = time.perf_counter()
        self.first: float | None = None
        self.count = 0

    def tick(self) -> None:
        self.count += 1
        if self.first is None:
            self.first = time.perf_counter() - self.start

    def __enter__(self) -> _Timer:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            total = time.perf_counter() - self.start
            first = f"{self.first * 1e3:.0f} ms" if self.first is not None else "-"
            print(
                f"\n[first response {first}, total {total:.2f} s, {self.count} responses]",
                file=sys.stderr,
            )


if __name__ == "__main__":
    sys.exit(main())
