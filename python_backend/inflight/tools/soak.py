"""`inflight soak`: a bounded reliability soak against a local tritonserver.

Starts a server on loopback with the tiny model (or connects to ``--url`` on 127.0.0.1),
runs ``--streams`` concurrent gRPC streams of mixed lengths on the `llm` model for
``--duration`` seconds (at most ``--max-requests``), cancelling or disconnecting
``--cancel-rate`` of them at a random point, and reports requests, errors by type, the RSS
of the server's process tree over time (PNG plot), KV usage, and the invariants: one
terminal event per request, nothing after it, KV used blocks back to zero when idle.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from inflight.testing.streams import Outcome, kv_used_and_active, metric, run_stream

PROMPTS = ["Once upon a time", "The quick brown fox jumps over", "1 2 3 4 5 6",
           "In a distant galaxy, the captain said", "def main():"]
MAX_DURATION_S = 24 * 3600.0


@dataclass
class SoakStats:
    requests: int = 0
    completed: int = 0
    cancelled: int = 0
    invariant_failures: list[str] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (s, MiB)
    kv_used: list[tuple[float, float]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def tree_rss_mib(pid: int) -> float:
    """RSS of ``pid`` and all its descendants (MiB), from /proc."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
            children[int(stat[1])].append(int(d.name))
            rss[int(d.name)] = int(stat[21])
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total * 4096 / 2**20


def _error_type(msg: str) -> str:
    head = msg.split(":", 1)[0].strip()
    return head if len(head) < 60 else msg[:60]


def _one_request(url: str, rng: random.Random, cancel_rate: float) -> Outcome:
    max_tokens = rng.choice([4, 16, 64, 200])
    inputs = {"text_input": np.array([rng.choice(PROMPTS).encode()], dtype=object),
              "stream": np.array([True]),
              "sampling_parameters": np.array([json.dumps(
                  {"max_tokens": max_tokens, "temperature": rng.choice([0.0, 0.8]),
                   "seed": rng.randrange(2**31), "ignore_eos": rng.random() < 0.5}).encode()],
                  dtype=object)}
    cancel_at = rng.randrange(0, max_tokens) if rng.random() < cancel_rate else None
    cancel = (lambda o: len(o.texts) >= cancel_at) if cancel_at is not None else None
    return run_stream(url, "llm", inputs, timeout=120, quiet=0.05, cancel_when=cancel)


def _worker(url: str, seed: int, deadline: float, budget: list[int], cancel_rate: float,
            stats: SoakStats) -> None:
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        with stats.lock:
            if budget[0] <= 0:
                return
            budget[0] -= 1
            stats.requests += 1
        out = _one_request(url, rng, cancel_rate)
        with stats.lock:
            try:
                out.check()
            except AssertionError as e:
                stats.invariant_failures.append(str(e)[:300])
            if out.cancelled_by_client:
                stats.cancelled += 1
            elif out.errors:
                stats.errors[_error_type(out.error)] += 1
            else:
                stats.completed += 1


def _sample(metrics_url: str, pid: int | None, t0: float, stop: threading.Event,
            stats: SoakStats, interval: float) -> None:
    while not stop.wait(interval):
        now = time.monotonic() - t0
        if pid is not None:
            stats.rss.append((now, tree_rss_mib(pid)))
        stats.kv_used.append((now, kv_used_and_active(metrics_url, "llm")[0]))


def _plot(stats: SoakStats, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    if stats.rss:
        ax[0].plot(*zip(*stats.rss))
    ax[0].set_ylabel("server tree RSS (MiB)")
    if stats.kv_used:
        ax[1].plot(*zip(*stats.kv_used))
    ax[1].set_ylabel("KV blocks used")
    ax[1].set_xlabel("seconds")
    fig.suptitle("inflight soak")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _start_server(model: str, work: Path) -> Any:
    from inflight.tools.repo import build
    from inflight.tools.serve import TritonServer

    repo = work / "repo"
    build(model, str(repo), "llm", {"max_tokens_in_paged_kv_cache": "2048", "max_seq_len": "512"})
    server = TritonServer(log_path=work / "tritonserver.log")
    server.start(repo, http_port=0, grpc_port=0, metrics_port=0, host="127.0.0.1")
    server.wait_ready(600)
    return server


def wait_idle(metrics_url: str, model: str = "llm", timeout: float = 60.0
              ) -> tuple[float, float]:
    """(KV used blocks, active requests) of ``model`` once both are 0, or at the timeout."""
    deadline = time.monotonic() + timeout
    used, active = kv_used_and_active(metrics_url, model)
    while (used or active) and time.monotonic() < deadline:
        time.sleep(0.2)
        used, active = kv_used_and_active(metrics_url, model)
    return used, active


def on_loopback(url: str) -> bool:
    """Load tools only ever target this machine: ``url``'s host must be loopback."""
    if url.rsplit(":", 1)[0] in ("127.0.0.1", "localhost"):
        return True
    print("error: --url must be on loopback (127.0.0.1 / localhost)", file=sys.stderr)
    return False


def run_soak(a: argparse.Namespace) -> int:
    work = Path(a.out or tempfile.mkdtemp(prefix="inflight-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    server = None
    if a.url:
        if not on_loopback(a.url):
            return 2
        grpc_url, metrics_url, pid = a.url, a.metrics_url, a.server_pid
    else:
        from inflight.tools.cli import resolve_model

        server = _start_server(resolve_model(a.model), work)
        assert server.endpoints is not None
        grpc_url, metrics_url, pid = server.endpoints.grpc_url, server.endpoints.metrics_url, server.pid
    try:
        stats = SoakStats()
        t0 = time.monotonic()
        stop = threading.Event()
        sampler = threading.Thread(target=_sample, args=(metrics_url, pid, t0, stop, stats,
                                                         a.sample_interval), daemon=True)
        sampler.start()
        budget = [a.max_requests]
        workers = [threading.Thread(target=_worker, args=(grpc_url, a.seed + i, t0 + a.duration,
                                                          budget, a.cancel_rate, stats))
                   for i in range(a.streams)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        used, active = wait_idle(metrics_url)
        stop.set()
        sampler.join(5)
        aborted = metric(metrics_url, "inflight_request_success_total", finish_reason="abort",
                         model="llm")
        report = _report(stats, time.monotonic() - t0, used, active, aborted)
        _plot(stats, work / "soak_rss.png")
        (work / "soak.json").write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
        print(f"plot: {work / 'soak_rss.png'}")
        return 0 if report["invariants_ok"] else 1
    finally:
        if server is not None:
            server.stop()


def _report(stats: SoakStats, elapsed: float, used: float, active: float, aborted: float
            ) -> dict[str, Any]:
    rss = [m for _, m in stats.rss]
    return {
        "elapsed_s": round(elapsed, 1), "requests": stats.requests,
        "completed": stats.completed, "client_cancelled": stats.cancelled,
        "errors": dict(stats.errors), "engine_aborts": aborted,
        "rss_mib_first": round(rss[0], 1) if rss else None,
        "rss_mib_max": round(max(rss), 1) if rss else None,
        "rss_mib_last": round(rss[-1], 1) if rss else None,
        "kv_used_max": max((k for _, k in stats.kv_used), default=0.0),
        "kv_used_idle": used, "active_idle": active,
        "invariant_failures": stats.invariant_failures[:20],
        "invariants_ok": not stats.invariant_failures and used == 0 and active == 0
        and not stats.errors,
    }


def add_soak_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("soak", help="bounded reliability soak against a local tritonserver",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny:llama", help="checkpoint for the server it starts")
    p.add_argument("--url", default="", help="gRPC host:port of a running server (loopback only)")
    p.add_argument("--metrics-url", default="http://127.0.0.1:8002/metrics")
    p.add_argument("--server-pid", type=int, default=None, help="for RSS when using --url")
    p.add_argument("--duration", type=float, default=300.0, help="seconds (bounded to 24 h)")
    p.add_argument("--max-requests", type=int, default=1_000_000)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--cancel-rate", type=float, default=0.2)
    p.add_argument("--sample-interval", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="directory for soak.json and soak_rss.png")
    storm = p.add_argument_group("cancel storm (--cancel-storm; see inflight.tools.cancel_storm)")
    storm.add_argument("--cancel-storm", action="store_true",
                       help="cancel requests at random points on ensemble, bls, llm and engine "
                       "instead of the soak; checks one terminal event each, KV back to 0, no "
                       "leaked stub or shm")
    storm.add_argument("--per-model", type=int, default=1000, help="requests per model")
    storm.add_argument("--models", default="ensemble,bls,llm,engine",
                       help="comma-separated models to storm (default: %(default)s)")
    storm.add_argument("--kills", type=int, default=5,
                       help="client processes SIGKILLed mid-stream, per model")
    storm.add_argument("--http-url", default="http://127.0.0.1:8000", help="with --url")
    p.set_defaults(func=_checked_run)
    return p


def _checked_run(a: argparse.Namespace) -> int:
    if a.cancel_storm:
        if a.per_model < 1 or a.streams < 1 or a.kills < 0:
            print("error: need --per-model >= 1, --streams >= 1, --kills >= 0", file=sys.stderr)
            return 2
        from inflight.tools.cancel_storm import run_cli

        return run_cli(a)
    if not 0 < a.duration <= MAX_DURATION_S or a.streams < 1 or not 0 <= a.cancel_rate <= 1:
        print("error: need 0 < --duration <= 86400, --streams >= 1, 0 <= --cancel-rate <= 1",
              file=sys.stderr)
        return 2
    return run_soak(a)
