"""CPU cost of the OpenAI front end per streamed chunk, against Triton's gRPC stream (issue 16).

One tritonserver serving a tiny `llm` model (stream_interval 1: one response per token), one
front end (``python -m inflight.frontends.openai``) against it, and the same workload through
both paths, alternating (``inflight bench serve --endpoint grpc|openai``). Reported per run:
req/s, the chunks (gRPC responses / SSE chunks) received, the CPU seconds of the load
generator over its run (its own ``process_time``), of the front end (every process of its
tree, from /proc) and of the server (tritonserver with its stubs and engine process). CPU seconds per chunk
is the fair figure on a small shared machine, where wall-clock rates mostly say who got a core.

    python benchmarks/openai_cpu.py [--requests 300] [--isl 32] [--osl 64] [--rounds 2]
        [--workers 1] [--scripted] [--out bench-results/openai-cpu]

``--scripted``: benchmarks/scripted_triton.py instead of tritonserver: every token exactly one
response and a server that costs little CPU, so the per-chunk figures of the clients and of
the front end are exact (with the tiny model the `llm` model coalesces responses under load
and skips none of the tokens that decode to no text, so chunks and responses differ).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args[:3]} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} not ready after {timeout}s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--isl", type=int, default=32)
    p.add_argument("--osl", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--workers", type=int, default=None, help="front end --workers (unset: its default)")
    p.add_argument("--endpoints", default="grpc,openai")
    p.add_argument("--scripted", action="store_true",
                   help="benchmarks/scripted_triton.py (20 ms between tokens) as the server")
    p.add_argument("--out", default="bench-results/openai-cpu")
    a = p.parse_args()
    from inflight.testing.procs import tree_cpu_s
    from inflight.testing.tiny import tiny_model_dir
    from inflight.tools.repo import build

    os.makedirs(a.out, exist_ok=True)
    tiny = tiny_model_dir("llama")
    repo = tempfile.mkdtemp(prefix="openai-cpu-repo.")
    grpc, http, metrics, port = free_port(), free_port(), free_port(), free_port()
    log = open(os.path.join(a.out, "server.log"), "wb")
    if a.scripted:
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "scripted_triton.py")
        server = subprocess.Popen([sys.executable, script, str(grpc)], stdout=log, stderr=log)
    else:
        build(tiny, repo, "llm", {"max_seq_len": "512", "max_batch_size": "256",
                                  "max_num_tokens": "8192", "stream_interval": "1"}, force=True)
        server = subprocess.Popen([sys.executable, "-m", "inflight.tools.cli", "serve", repo,
                                   "--grpc-port", str(grpc), "--http-port", str(http),
                                   "--metrics-port", str(metrics)], stdout=log, stderr=log)
    front = None
    try:
        if not a.scripted:
            wait_http(f"http://127.0.0.1:{http}/v2/health/ready", server)
        front = subprocess.Popen([sys.executable, "-m", "inflight.frontends.openai",
                                  "--triton-url", f"127.0.0.1:{grpc}", "--port", str(port),
                                  *(["--workers", str(a.workers)] if a.workers else [])],
                                 stdout=log, stderr=log)
        wait_http(f"http://127.0.0.1:{port}/health", front)
        rows = []
        for r in range(a.rounds):
            for ep in a.endpoints.split(","):
                url = f"127.0.0.1:{port}" if ep == "openai" else f"127.0.0.1:{grpc}"
                out = os.path.join(a.out, f"{ep}-{r}")
                f0, s0 = tree_cpu_s(front.pid), tree_cpu_s(server.pid)
                subprocess.run([sys.executable, "-m", "inflight.tools.cli", "bench", "serve",
                                "--endpoint", ep, "--url", url, "--served-model", "llm",
                                "--dataset", "fixed", "--isl", str(a.isl), "--osl", str(a.osl),
                                "--num-requests", str(a.requests), "--tokenizer", tiny,
                                "--out", out], check=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
                f1, s1 = tree_cpu_s(front.pid), tree_cpu_s(server.pid)
                with open(os.path.join(out, f"serve-{ep}-llm-fixed-{a.requests}.json")) as f:
                    res = json.load(f)
                n = max(res["chunks"], 1)
                row = {"endpoint": ep, "round": r, "req_s": round(res["req_s"], 2),
                       "errors": res["errors"], "chunks": res["chunks"],
                       "output_tokens": res["output_tokens"],
                       "wall_s": round(res["wall_s"], 2),
                       "client_cpu_s": round(res["client_cpu_s"], 2),
                       "frontend_cpu_s": round(f1 - f0, 2) if ep == "openai" else None,
                       "server_cpu_s": round(s1 - s0, 2),
                       "client_us_per_chunk": round(1e6 * res["client_cpu_s"] / n, 1),
                       "frontend_us_per_chunk": round(1e6 * (f1 - f0) / n, 1)
                       if ep == "openai" else None}
                rows.append(row)
                print(json.dumps(row), flush=True)
        with open(os.path.join(a.out, "openai-cpu.json"), "w") as f:
            json.dump({"workers": a.workers, "requests": a.requests, "isl": a.isl,
                       "osl": a.osl, "scripted": a.scripted, "rows": rows}, f, indent=1)
    finally:
        for proc in (front, server):
            if proc is not None and proc.poll() is None:
                proc.send_signal(2)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(repo, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
