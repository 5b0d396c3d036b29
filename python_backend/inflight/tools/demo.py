"""`inflight demo`: the whole product in one command, on any machine (no GPU needed).

Builds a tiny random-weight model locally (or takes --model), writes its model repository,
starts a real tritonserver, streams a completion over gRPC to the terminal, stops the server.
The tiny model has random weights: its text is gibberish by design (the point is the path:
tokenizer, engine, streaming, detokenizer). Give --model a real checkpoint for real text.
Exit status 0 when the completion streamed and the server stopped cleanly; otherwise 1, and
the server log is kept and its path printed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

import numpy as np


def _stream(grpc_url: str, model: str, prompt: str, max_tokens: int) -> tuple[str, float, int]:
    import json

    from inflight.client.grpc_stream import GrpcStream, decode_text

    if model == "llm":
        inputs = {"text_input": np.array([prompt.encode()], dtype=object),
                  "stream": np.array([True]),
                  "sampling_parameters": np.array([json.dumps({"max_tokens": max_tokens, "temperature": 0}).encode()],
                                                  dtype=object)}
    else:
        inputs = {"text_input": np.array([[prompt.encode()]], dtype=object),
                  "max_tokens": np.array([[max_tokens]], dtype=np.int32),
                  "temperature": np.array([[0.0]], dtype=np.float32),
                  "stream": np.array([[True]])}
    text, t0, ttft, n = "", time.monotonic(), 0.0, 0
    with GrpcStream(grpc_url) as s:
        for r in s.generate(model, inputs, timeout=300):
            for delta in decode_text(r.outputs.get("text_output")):
                if delta and not ttft:
                    ttft = time.monotonic() - t0
                sys.stdout.write(delta)
                sys.stdout.flush()
                text += delta
                n += 1
    sys.stdout.write("\n")
    return text, ttft, n


def _cmd_demo(a: argparse.Namespace) -> int:
    from inflight.tools.cli import resolve_model
    from inflight.tools.repo import build
    from inflight.tools.serve.process import TritonServer

    model_dir = resolve_model(a.model)
    if a.model.startswith("tiny:"):
        print(f"[inflight] {a.model} is a tiny model with random weights: expect gibberish text "
              "(give --model a real checkpoint directory for real text)", file=sys.stderr)
    fd, log_path = tempfile.mkstemp(prefix="inflight-demo-", suffix=".log")
    os.close(fd)
    ok = False
    with tempfile.TemporaryDirectory(prefix="inflight-repo-") as repo:
        layout = "llm" if a.served_model == "llm" else "ensemble"
        build(model_dir, repo, layout, {"max_tokens_in_paged_kv_cache": "8192", "max_seq_len": "1024"})
        print(f"[inflight] model {model_dir}\n[inflight] repository {repo} ({layout} layout)", file=sys.stderr)
        server = TritonServer(log_path=log_path)
        server.start(repo, http_port=0, grpc_port=0, metrics_port=0)
        try:
            print("[inflight] starting tritonserver ...", file=sys.stderr)
            server.wait_ready(timeout=a.ready_timeout)
            assert server.endpoints is not None
            print(f"[inflight] ready: gRPC {server.endpoints.grpc_url}, HTTP {server.endpoints.http_url}; "
                  f"streaming from model '{a.served_model}':\n", file=sys.stderr)
            sys.stdout.write(a.prompt)
            _text, ttft, n = _stream(server.endpoints.grpc_url, a.served_model, a.prompt, a.max_tokens)
            print(f"[inflight] {n} streamed responses, first after {ttft * 1000:.0f} ms; stopping server",
                  file=sys.stderr)
            ok = True
        except Exception as e:  # noqa: BLE001 - reported with the log below
            print(f"[inflight] demo failed: {type(e).__name__}: {e}", file=sys.stderr)
        finally:
            code = server.stop(a.stop_timeout)
    if ok and code == 0 and not server.reaped:
        os.unlink(log_path)
        print("[inflight] server stopped cleanly", file=sys.stderr)
        return 0
    why = (f"tritonserver exited with {code}" if code != 0 else
           f"tritonserver left {len(server.reaped)} process(es) behind" if server.reaped else
           "the completion failed")
    print(f"[inflight] {why}; server log kept: {log_path}", file=sys.stderr)
    return 1


def add_demo_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", help="serve a tiny model with tritonserver and stream a completion",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", nargs="?", default="The weather today is",
                   help="prompt text (default: %(default)r)")
    p.add_argument("--model", default="tiny:llama", help="checkpoint dir or tiny:FAMILY (default: %(default)s)")
    p.add_argument("--served-model", default="ensemble", choices=["ensemble", "bls", "llm"],
                   help="which Triton model to call (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for the server")
    p.add_argument("--stop-timeout", type=float, default=60.0,
                   help="seconds for tritonserver to drain and exit before it is killed")
    p.set_defaults(func=_cmd_demo)
    return p
