"""Issue 13's measurement in one command: the same workload through the offline engine, the
`llm` model and the `ensemble` through a real tritonserver, then a load curve on `llm`, with
py-spy samples of the stub and the engine process while the 1000 arrivals are served.

    python benchmarks/serve_ratio.py --model llama-3.1-8b --dataset sharegpt --num-requests 1000 \
        --rates 2,10,20,30,40,inf --curve-requests 100 --pyspy --out bench-results/serve13
    python benchmarks/serve_ratio.py --model tiny:llama --dataset fixed --isl 32 --osl 64 \
        --num-requests 300 --max-seq-len 512 --out bench-results/cpu-ratio     # the CPU table

``--set engine_process=off`` serves with the engine thread inside the stub (the design before
issue 13), for a before/after on the same machine. Prints one summary table at the end and
writes summary.json (+ the serve JSONs, curve plot, py-spy stacks) under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any


def _workload(a: argparse.Namespace, tok: Any) -> Any:
    from inflight.tools.bench.dataset import sharegpt_like, token_norm_dist

    vocab = len(tok) - 3
    return (sharegpt_like(a.num_requests, vocab, a.seed) if a.dataset == "sharegpt"
            else token_norm_dist(a.num_requests, a.isl, a.osl, vocab, seed=a.seed))


def _engine_sets(sets: list[str], model: str) -> dict[str, Any]:
    """The --set values that are engine settings (e.g. cuda_graph_max_tokens), parsed as a
    repository's would be, so the offline engine runs with them too; serving-only keys
    (engine_process, stream_interval, ...) are left to the servers."""
    from inflight.frontends.triton.params import parse_parameters

    eng, _ = parse_parameters({"model_path": model, **dict(kv.split("=", 1) for kv in sets)},
                              source="--set")
    return {k: v for k, v in eng.items() if k not in ("model", "tokenizer")}


def offline(a: argparse.Namespace) -> None:
    """Child mode: the offline engine on the same prompts, re-tokenized as the server does."""
    from inflight.tools.bench.cli import resolve_bench_model
    from inflight.tools.bench.offline import make_engine, run_engine
    from transformers import AutoTokenizer

    model, tokdir, fmt = resolve_bench_model(a.model)
    tok = AutoTokenizer.from_pretrained(tokdir or model)
    wl = _workload(a, tok)
    wl = type(wl)([tok(tok.decode(p))["input_ids"] for p in wl.prompts], wl.output_lens)
    kw = {"load_format": fmt, "dtype": a.dtype, "max_seq_len": a.max_seq_len,
          "max_batch_size": a.max_batch_size, "tensor_parallel_size": a.tensor_parallel_size}
    eng = make_engine(model, tokdir, **{**kw, **_engine_sets(a.set, model)})
    from inflight.engine.warmup import warm_up

    warm_up(eng)  # the same warm-up as a server's engine before it reports ready
    run_engine(eng, type(wl)(wl.prompts[:8], [4] * 8), desc="warm-up")
    res = run_engine(eng, wl, desc="offline")
    print("OFFLINE " + json.dumps({k: v for k, v in res.items() if not k.startswith("_")}), flush=True)


def _ready(http: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _pids(model: str, root: int) -> dict[str, int]:
    """Under the launcher ``root``: tritonserver, every model's stub (``stub:<model>``; ``stub``
    for ``model``) and the engine process of ``model`` (``engine``)."""
    from inflight.testing.procs import descendants

    mine = descendants(root)
    out: dict[str, int] = {}
    for p in mine.values():
        if p.comm == "tritonserver":
            out["tritonserver"] = p.pid
        elif "triton_python_backend_stub" in p.cmdline:
            name = p.cmdline.split("/1/model.py")[0].rsplit("/", 1)[-1]
            out["stub" if name == model else f"stub:{name}"] = p.pid
    stub = out.get("stub")
    eng = next((p.pid for p in mine.values() if p.ppid == stub and p.comm == "inflight-engine"), None)
    if eng is not None:
        out["engine"] = eng
    return out


def _cpu_s(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds of each named process still alive."""
    from inflight.testing.procs import proc

    return {k: p.cpu_s for k, pid in pids.items() if (p := proc(pid)) is not None}


def _top_frames(path: str, n: int = 12) -> list[tuple[str, float]]:
    """py-spy raw (collapsed) stacks -> the functions in most samples (inclusive), %."""
    total, incl = 0, Counter()
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            if not count.isdigit():
                continue
            c = int(count)
            total += c
            for fr in {fr.split(" (")[0] for fr in stack.split(";")[1:]}:  # [0]: the thread
                incl[fr] += c
    return [(fr, round(100 * c / total, 1)) for fr, c in incl.most_common(n)] if total else []


def _pyspy(pids: dict[str, int], out: str, delay: float, seconds: int) -> threading.Thread:
    spy = shutil.which("py-spy")

    def run() -> None:
        time.sleep(delay)
        procs = []
        for name, pid in pids.items():
            for gil in ((False, True) if name == "stub" else (False,)):
                tag = f"{name}{'-gil' if gil else ''}"
                cmd = [spy, "record", "-p", str(pid), "-d", str(seconds), "-r", "100", "--format", "raw",
                       "--nonblocking", "-o", os.path.join(out, f"pyspy-{tag}.txt")] + (["--gil"] if gil else [])
                procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            subprocess.run([spy, "dump", "-p", str(pid)], stdout=open(os.path.join(out, f"pyspy-dump-{name}.txt"), "w"),
                           stderr=subprocess.STDOUT, timeout=30)
        for p in procs:
            p.wait(seconds + 30)

    t = threading.Thread(target=run, daemon=True)
    if spy and pids:
        t.start()
    return t


def serve_layout(a: argparse.Namespace, layout: str, prompts: list[str], lens: list[int], tokdir: str,
                 results: dict[str, Any]) -> None:
    from inflight.tools.bench.cli import resolve_bench_model
    from inflight.tools.bench.serve import curve_row, plot_curve, run_curve, run_serve
    from inflight.tools.repo import build

    model, _, fmt = resolve_bench_model(a.model)
    sets = dict(kv.split("=", 1) for kv in a.set)
    engine_only = {k: sets.pop(k) for k in ("engine_process", "warmup") if k in sets}  # not templated
    kw = {"load_format": fmt, "dtype": a.dtype, "max_seq_len": str(a.max_seq_len),
          "max_batch_size": str(a.max_batch_size), "stream_interval": str(a.stream_interval),
          "tokenizer_dir": tokdir, "tensor_parallel_size": str(a.tensor_parallel_size), **sets}
    repo = tempfile.mkdtemp(prefix=f"serve13-{layout}-")
    build(model, repo, layout, kw, force=True)
    for k, v in engine_only.items():
        from inflight.testing.repos import add_parameter

        add_parameter(Path(repo) / ("llm" if layout == "llm" else "engine") / "config.pbtxt", k, v)
    if layout == "ensemble":  # only the models the ensemble uses: one engine on the device
        for extra in ("bls", "ensemble_unary"):
            shutil.rmtree(os.path.join(repo, extra), ignore_errors=True)
    port = a.port
    log = open(os.path.join(a.out, f"tritonserver-{layout}.log"), "w")
    t0 = time.monotonic()
    srv = subprocess.Popen([sys.executable, "-m", "inflight.tools.cli", "serve", repo, "--http-port",
                            str(port), "--grpc-port", str(port + 1), "--metrics-port", str(port + 2)],
                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while not _ready(port):
            if srv.poll() is not None or time.monotonic() - t0 > a.ready_timeout:
                raise RuntimeError(f"{layout} server not ready (see tritonserver-{layout}.log)")
            time.sleep(1)
        ready_s = time.monotonic() - t0
        engine_model = "llm" if layout == "llm" else "engine"
        pids = _pids(engine_model, srv.pid)
        print(f"== {layout}: ready after {ready_s:.0f} s, processes {pids}", flush=True)
        cpu0 = _cpu_s(pids)
        spied = {k: v for k, v in pids.items() if k in ("stub", "engine", "stub:postprocessing")}
        spy = _pyspy(spied, a.out, a.pyspy_delay, a.pyspy_seconds) if a.pyspy else None
        url = f"localhost:{port + 1}"
        res = run_serve(url, layout, prompts, lens, concurrency=len(prompts))
        cpu = {k: round(v - cpu0[k], 2) for k, v in _cpu_s(pids).items() if k in cpu0}
        row = curve_row(res)
        row.update({"ready_s": round(ready_s, 1), "cpu_s": cpu, "wall_s": round(res["wall_s"], 2)})
        results[layout] = row
        print(f"   {layout}: {row}", flush=True)
        if spy is not None:
            spy.join(a.pyspy_delay + a.pyspy_seconds + 60)
            for f in sorted(os.listdir(a.out)):
                if f.startswith("pyspy-") and not f.startswith("pyspy-dump") and f.endswith(".txt"):
                    results.setdefault("pyspy", {})[f"{layout}:{f[6:-4]}"] = _top_frames(os.path.join(a.out, f))
                    os.replace(os.path.join(a.out, f), os.path.join(a.out, f"{layout}-{f}"))
        if layout == "llm" and a.rates:
            from inflight.tools.bench.serve import parse_rates

            rows = run_curve(url, layout, prompts[:a.curve_requests], lens[:a.curve_requests],
                             parse_rates(a.rates), concurrency=a.curve_requests,
                             metrics_url=f"http://127.0.0.1:{port + 2}/metrics")
            results["curve"] = rows
            plot_curve(rows, os.path.join(a.out, "load-curve.png"), f"{a.model} llm load curve")
    finally:
        os.killpg(srv.pid, signal.SIGINT)
        try:
            srv.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(srv.pid, signal.SIGKILL)
        shutil.rmtree(repo, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--dataset", default="sharegpt", choices=["sharegpt", "fixed"])
    p.add_argument("--num-requests", type=int, default=1000)
    p.add_argument("--isl", type=int, default=128)
    p.add_argument("--osl", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-seq-len", type=int, default=4096)
    p.add_argument("--max-batch-size", type=int, default=256)
    p.add_argument("--stream-interval", type=int, default=1)
    p.add_argument("--tensor-parallel-size", "--tp", type=int, default=1,
                   help="GPUs per engine, offline and served alike (issue 15)")
    p.add_argument("--layouts", default="llm,ensemble")
    p.add_argument("--rates", default="", help="load curve on llm, e.g. 2,10,20,30,40,inf")
    p.add_argument("--curve-requests", type=int, default=100)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="repository parameter for both layouts (e.g. engine_process=off)")
    p.add_argument("--pyspy", action="store_true",
                   help="py-spy the stub, the engine process and the postprocessing stub")
    p.add_argument("--pyspy-delay", type=float, default=5.0)
    p.add_argument("--pyspy-seconds", type=int, default=8)
    p.add_argument("--no-offline", action="store_true")
    p.add_argument("--port", type=int, default=18100)
    p.add_argument("--ready-timeout", type=float, default=300)
    p.add_argument("--out", default="bench-results/serve-ratio")
    p.add_argument("--offline-child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.offline_child:
        offline(a)
        return 0
    os.makedirs(a.out, exist_ok=True)
    os.environ.setdefault("INFLIGHT_NO_PROGRESS", "1")
    from inflight.tools.bench.cli import resolve_bench_model
    from transformers import AutoTokenizer

    model, tokdir, _ = resolve_bench_model(a.model)
    tokdir = tokdir or model
    tok = AutoTokenizer.from_pretrained(tokdir)
    wl = _workload(a, tok)
    prompts = [tok.decode(q) for q in wl.prompts]
    results: dict[str, Any] = {"model": a.model, "requests": a.num_requests, "set": a.set}
    if not a.no_offline:  # its own process: the device memory is free again for the servers
        t0 = time.monotonic()
        out = subprocess.run([sys.executable, *sys.argv, "--offline-child"], capture_output=True, text=True)
        line = next((x for x in out.stdout.splitlines() if x.startswith("OFFLINE ")), None)
        if line is None:
            print(out.stdout[-3000:], out.stderr[-3000:], file=sys.stderr)
            return 1
        off = json.loads(line[8:])
        results["offline"] = {"req_s": off["req_s"], "output_tok_s": off["output_tok_s"],
                              "wall_s": round(time.monotonic() - t0, 1)}
        print(f"== offline: {results['offline']}", flush=True)
    def stop(*_: Any) -> None:  # `timeout` sends SIGTERM: still print what was measured
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        for layout in a.layouts.split(","):
            try:
                serve_layout(a, layout, prompts, wl.output_lens, tokdir, results)
            except Exception as e:  # noqa: BLE001 - report and go on with the next layout
                print(f"!! {layout}: {type(e).__name__}: {e}", flush=True)
                results[layout] = {"error": str(e)}
    except KeyboardInterrupt:
        print("!! interrupted: the summary shows what was measured so far", flush=True)
    finally:
        with open(os.path.join(a.out, "summary.json"), "w") as f:
            json.dump(results, f, indent=1)
        print_summary(results)
    return 0


def print_summary(r: dict[str, Any]) -> None:
    base = r.get("offline", {}).get("req_s")
    print(f"\n{'path':10} {'req/s':>8} {'out tok/s':>10} {'ratio':>6} {'TTFT p50':>10} {'ITL p50':>9} "
          f"{'ITL p99':>9} {'errors':>6}  cpu s (stub / engine)")
    for name in ("offline", "llm", "ensemble"):
        x = r.get(name)
        if not x or "error" in x:
            print(f"{name:10} {x.get('error') if x else 'not run'}")
            continue
        ratio = f"{x['req_s'] / base:.2f}" if base else "-"
        cpu = x.get("cpu_s", {})
        print(f"{name:10} {x['req_s']:8.2f} {x['output_tok_s']:10.0f} {ratio:>6} "
              f"{_ms(x.get('ttft_p50_ms')):>10} {_ms(x.get('itl_p50_ms')):>9} {_ms(x.get('itl_p99_ms')):>9} "
              f"{x.get('errors', 0):>6}  {cpu.get('stub', '-')} / {cpu.get('engine', '-')}")
        others = {k: v for k, v in cpu.items() if k not in ("stub", "engine")}
        if others:
            print(f"{'':10} cpu s of the other processes: {others}")
    for row in r.get("curve", []):
        print(f"  rate {row['rate']:>5}: {row['req_s']:7.2f} req/s  TTFT p50 {_ms(row['ttft_p50_ms'])} "
              f"p99 {_ms(row['ttft_p99_ms'])}  ITL p50 {_ms(row['itl_p50_ms'])} p99 {_ms(row['itl_p99_ms'])}"
              f"  errors {row['errors']}"
              + (f"  engine TTFT mean {_ms(row['engine_ttft_mean_ms'])} (queue {_ms(row['engine_queue_mean_ms'])})"
                 if "engine_ttft_mean_ms" in row else ""))
    for tag, frames in r.get("pyspy", {}).items():
        print(f"  py-spy {tag}: " + "; ".join(f"{fr} {pc}%" for fr, pc in frames[:8]))


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}ms"


if __name__ == "__main__":
    sys.exit(main())
