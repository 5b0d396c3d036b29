"""`inflight bench {throughput,latency,serve,profile,reuse,scheduler}`: JSON results and PNG plots.

Models are real configs shipped with the project (``--model llama-3.1-8b``, ``llama-3.2-1b``,
``qwen2.5-0.5b``, ``qwen2.5-7b``) with ``load_format=dummy``, or any checkpoint directory.
"""

from __future__ import annotations

import argparse
import importlib.resources
import json
import os
import sys
from typing import Any

SHIPPED = ("llama-3.1-8b", "llama-3.1-70b", "llama-3.2-1b", "qwen2.5-0.5b", "qwen2.5-7b")


def resolve_bench_model(name: str) -> tuple[str, str | None, str]:
    """-> (model dir, tokenizer dir or None, load_format)."""
    from inflight.errors import ConfigError, did_you_mean
    from inflight.model_source import TINY_PREFIX, resolve_model
    from inflight.testing.tiny import tiny_model_dir

    if name in SHIPPED:
        path = str(importlib.resources.files("inflight.tools.bench") / "configs" / name)
        return path, tiny_model_dir("llama"), "dummy"
    if os.sep not in name and not name.startswith(TINY_PREFIX) and not os.path.exists(name):
        raise ConfigError(f"--model {name!r} does not exist: it is no checkpoint directory and no "
                          f"shipped config{did_you_mean(name, SHIPPED)}")
    return resolve_model(name), None, "auto"


def _engine_kwargs(a: argparse.Namespace, load_format: str) -> dict[str, Any]:
    kw: dict[str, Any] = {"load_format": a.load_format or load_format, "dtype": a.dtype,
                          "max_seq_len": a.max_seq_len, "max_batch_size": a.max_batch_size,
                          "max_num_tokens": a.max_num_tokens,
                          "kv_cache_free_gpu_mem_fraction": a.kv_fraction,
                          "attention_backend": a.attention_backend,
                          "enforce_eager": a.enforce_eager, "overlap_scheduler": a.overlap_scheduler,
                          "overlap_min_running": a.overlap_min_running,
                          "cuda_graph_max_tokens": a.cuda_graph_max_tokens,
                          "quantization": a.quantization, "kv_cache_dtype": a.kv_cache_dtype,
                          "tensor_parallel_size": a.tensor_parallel_size}
    if a.kv_tokens:
        kw["max_tokens_in_paged_kv_cache"] = a.kv_tokens
    return kw


def _finish(command: str, res: dict[str, Any], out: str, name: str, plots: list[str | None],
            trace: str | None = None) -> None:
    """Save the JSON record, print it (stdout), then a one-line summary (stderr)."""
    from inflight.tools.bench import report

    clean = _strip({k: _strip(v) for k, v in res.items()})
    path = report.save(clean, out, name)
    print(json.dumps(clean, indent=2))
    print(report.summary(command, clean, path, plots, trace), file=sys.stderr)


def _cmd_offline(a: argparse.Namespace) -> int:
    from inflight.tools.bench import report
    from inflight.tools.bench.dataset import token_norm_dist
    from inflight.tools.bench.offline import make_engine, run_engine, run_latency

    model, tok, fmt = resolve_bench_model(a.model)
    os.makedirs(a.out, exist_ok=True)
    engine = make_engine(model, tok, **_engine_kwargs(a, fmt))
    vocab = engine.model_config.vocab_size
    name = f"{a.command_name}-{os.path.basename(model.rstrip('/'))}-{a.isl}-{a.osl}"
    plots: list[str | None] = []
    if a.command_name == "latency":
        res: dict[str, Any] = {"model": a.model, "inflight": run_latency(engine, a.isl, a.osl, a.iters, vocab)}
    else:
        wl = token_norm_dist(a.num_requests, a.isl, a.osl, vocab, a.isl_stdev, a.osl_stdev, seed=a.seed)
        run_engine(engine, token_norm_dist(min(8, a.num_requests), a.isl, 8, vocab, seed=99), desc="warmup")
        res = {"model": a.model, "isl": a.isl, "osl": a.osl, "num_requests": a.num_requests,
               "inflight": run_engine(engine, wl)}
        plots.append(report.plot_latencies({"TTFT": res["inflight"]["_ttft"], "TPOT": res["inflight"]["_tpot"]},
                                           os.path.join(a.out, f"{name}.png"), name))
    if a.baseline == "hf":
        res["hf"] = _hf(a, model, engine, vocab)
        key = "decode_tok_s" if a.command_name == "latency" else "output_tok_s"
        res["ratio_vs_hf"] = res["inflight"][key] / res["hf"][key]
        plots.append(report.plot_bars({"inflight": res["inflight"][key], "transformers": res["hf"][key]},
                                      os.path.join(a.out, f"{name}-vs-hf.png"), name, key.replace("_", " ")))
    res["engine_config"] = {k: v for k, v in _engine_kwargs(a, fmt).items()}
    _finish(a.command_name, res, a.out, name, plots)
    return 0


def _hf(a: argparse.Namespace, model: str, engine: Any, vocab: int) -> dict[str, Any]:
    import torch

    from inflight.tools.bench.dataset import token_norm_dist
    from inflight.tools.bench.hf_baseline import load_hf, run_hf

    dev, dtype = engine.runner.device, engine.runner.dtype
    del engine  # free the KV pool before loading a second copy of the weights
    torch.cuda.empty_cache() if dev.type == "cuda" else None
    hf = load_hf(model, dtype, dev)
    n = 1 if a.command_name == "latency" else min(a.num_requests, a.hf_requests)
    wl = token_norm_dist(n, a.isl, a.osl, vocab, seed=a.seed)
    res = run_hf(hf, wl, 1 if a.command_name == "latency" else a.hf_batch_size, dev)
    if a.command_name == "latency":
        res["decode_tok_s"] = a.osl / res["wall_s"]
    return res


def _strip(v: Any) -> Any:
    return {k: x for k, x in v.items() if not k.startswith("_")} if isinstance(v, dict) else v


def _cmd_serve(a: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    from inflight.tools.bench import report
    from inflight.tools.bench.dataset import sharegpt_like, token_norm_dist
    from inflight.tools.bench.serve import run_serve

    tok = AutoTokenizer.from_pretrained(a.tokenizer or resolve_bench_model("llama-3.1-8b")[1])
    vocab = len(tok) - 3
    wl = (sharegpt_like(a.num_requests, vocab, a.seed) if a.dataset == "sharegpt"
          else token_norm_dist(a.num_requests, a.isl, a.osl, vocab, seed=a.seed))
    prompts = [tok.decode(p) for p in wl.prompts]
    os.makedirs(a.out, exist_ok=True)
    url = a.url or ("localhost:9000" if a.endpoint == "openai" else "localhost:8001")
    if a.request_rate:
        return _serve_curve(a, url, prompts, wl.output_lens)
    res = run_serve(url, a.served_model, prompts, wl.output_lens, rate=a.rate,
                    concurrency=a.concurrency, streams=a.streams, seed=a.seed,
                    endpoint=a.endpoint, api_key=os.environ.get("OPENAI_API_KEY", "none"))
    name = f"serve-{a.endpoint}-{a.served_model}-{a.dataset}-{a.num_requests}"
    plot = report.plot_latencies({"TTFT": res["_ttft"], "ITL": res["_itl"], "TPOT": res["_tpot"]},
                                 os.path.join(a.out, f"{name}.png"), name)
    _finish("serve", res, a.out, name, [plot])
    return 0 if res["errors"] == 0 else 1


def _serve_curve(a: argparse.Namespace, url: str, prompts: list[str], output_lens: list[int]) -> int:
    """--request-rate R1,R2,...: one run per Poisson rate, a JSON table and a plot."""
    from inflight.tools.bench.serve import parse_rates, plot_curve, run_curve

    try:
        rates = parse_rates(a.request_rate)
    except ValueError as e:
        print(e, file=sys.stderr)
        return 2
    rows = run_curve(url, a.served_model, prompts, output_lens, rates, metrics_url=a.metrics_url,
                     metrics_model="llm" if a.served_model == "llm" else "engine",
                     concurrency=a.concurrency, streams=a.streams, seed=a.seed,
                     endpoint=a.endpoint, api_key=os.environ.get("OPENAI_API_KEY", "none"))
    name = f"curve-{a.endpoint}-{a.served_model}-{a.dataset}-{a.num_requests}"
    plot = plot_curve(rows, os.path.join(a.out, f"{name}.png"), name)
    from inflight.tools.bench import report

    path = report.save({"model": a.served_model, "endpoint": a.endpoint, "curve": rows}, a.out, name)
    print(json.dumps(rows, indent=1))
    print(f"load curve: {len(rows)} rates; JSON {path}" + (f"; plot {plot}" if plot else ""),
          file=sys.stderr)
    return 0 if all(r["errors"] == 0 for r in rows) else 1


def _cmd_profile(a: argparse.Namespace) -> int:
    from inflight.tools.bench.offline import make_engine
    from inflight.tools.bench.profile import check_batch, run_profile, run_reuse

    model, tok, fmt = resolve_bench_model(a.model)
    os.makedirs(a.out, exist_ok=True)
    kw = _engine_kwargs(a, fmt)
    base = os.path.basename(model.rstrip("/"))
    trace = None
    if a.command_name == "reuse":
        engine = make_engine(model, tok, enable_kv_cache_reuse=True, **kw)
        res: dict[str, Any] = {"model": a.model, "inflight": run_reuse(engine, a.prompt_len, a.repeats)}
        name = f"reuse-{base}-{a.prompt_len}"
    else:
        try:  # before the (slow) engine load
            check_batch(a.batch, a.max_batch_size, a.max_num_tokens)
        except ValueError as e:
            print(e, file=sys.stderr)
            return 2
        engine = make_engine(model, tok, **kw)
        name = f"profile-{base}-b{a.batch}"
        trace = os.path.join(a.out, f"{name}.trace.json") if a.trace else None
        res = {"model": a.model, "inflight": run_profile(engine, a.batch, a.isl, a.steps, trace)}
    res["engine_config"] = kw
    _finish(a.command_name, res, a.out, name, [], trace if trace and os.path.isfile(trace) else None)
    return 0


def _engine_args(p: argparse.ArgumentParser) -> None:
    from inflight.config import EngineConfig  # light: no torch

    p.add_argument("--model", default="llama-3.1-8b",
                   help=f"shipped config ({', '.join(SHIPPED)}; dummy weights) or a checkpoint dir")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--load-format", default=None, choices=["auto", "dummy", "safetensors"])
    p.add_argument("--max-seq-len", type=int, default=4096)
    p.add_argument("--max-batch-size", type=int, default=256)
    p.add_argument("--max-num-tokens", type=int, default=8192)
    p.add_argument("--kv-fraction", type=float, default=0.9, help="kv_cache_free_gpu_mem_fraction")
    p.add_argument("--kv-tokens", type=int, default=None, help="max_tokens_in_paged_kv_cache")
    p.add_argument("--attention-backend", default="auto", choices=["auto", "torch", "triton"])
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    p.add_argument("--cuda-graph-max-tokens", type=int, default=EngineConfig.cuda_graph_max_tokens,
                   metavar="N", help="CUDA graphs also for steps with prompt tokens, up to N tokens "
                   "(0: off; default %(default)s)")
    p.add_argument("--overlap-scheduler", default="auto", choices=["auto", "on", "off"],
                   help="plan step N+1 while step N runs (auto: on for CUDA)")
    p.add_argument("--overlap-min-running", type=int, default=0, metavar="N",
                   help="overlapped steps only while >= N sequences run; below, synchronous "
                   "steps (a new request's first token one step sooner; default 0: always)")
    p.add_argument("--quantization", default="auto",
                   help="auto | none | fp8 | awq | compressed-tensors | modelopt (docs/quantization.md)")
    p.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8"])
    p.add_argument("--tensor-parallel-size", "--tp", type=int, default=1,
                   help="ranks (GPUs) the model is split over (docs/parallelism.md)")
    p.add_argument("--out", default="bench-results", help="directory for JSON and PNG files")
    p.add_argument("--seed", type=int, default=0, help="workload seed")


def _baseline_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baseline", choices=["hf"], default=None,
                   help="also run the workload through transformers.generate in this run")
    p.add_argument("--hf-batch-size", type=int, default=64)
    p.add_argument("--hf-requests", type=int, default=256, help="cap on requests sent to the HF baseline")


def add_bench_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="benchmarks (throughput, latency, serve, profile, reuse, scheduler)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bs = p.add_subparsers(dest="bench_command", metavar="BENCHMARK", required=True)
    t = bs.add_parser("throughput", help="offline: all requests queued at once")
    _engine_args(t)
    _baseline_args(t)
    t.add_argument("--num-requests", type=int, default=1000)
    t.add_argument("--isl", type=int, default=128, help="input length mean")
    t.add_argument("--osl", type=int, default=128, help="output length mean")
    t.add_argument("--isl-stdev", type=float, default=0.0)
    t.add_argument("--osl-stdev", type=float, default=0.0)
    t.set_defaults(func=_cmd_offline, command_name="throughput")
    lat = bs.add_parser("latency", help="batch 1: tok/s per user, ms per token")
    _engine_args(lat)
    _baseline_args(lat)
    lat.add_argument("--isl", type=int, default=128)
    lat.add_argument("--osl", type=int, default=256)
    lat.add_argument("--iters", type=int, default=3)
    lat.set_defaults(func=_cmd_offline, command_name="latency")
    pr = bs.add_parser("profile", help="where a decode step's time goes (torch.profiler)")
    _engine_args(pr)
    pr.add_argument("--batch", type=int, default=1, help="requests decoding together")
    pr.add_argument("--isl", type=int, default=128)
    pr.add_argument("--steps", type=int, default=50, help="decode steps timed, then profiled")
    pr.add_argument("--trace", action="store_true", help="also write a Chrome trace (.trace.json)")
    pr.set_defaults(func=_cmd_profile, command_name="profile")
    ru = bs.add_parser("reuse", help="TTFT of a repeated long prompt with prefix reuse on")
    _engine_args(ru)
    ru.add_argument("--prompt-len", type=int, default=2048)
    ru.add_argument("--repeats", type=int, default=3)
    ru.set_defaults(func=_cmd_profile, command_name="reuse")
    s = bs.add_parser("serve", help="drive a running tritonserver with tritonclient streaming")
    s.add_argument("--endpoint", default="grpc", choices=["grpc", "openai"],
                   help="grpc: Triton's gRPC stream (--url host:8001); openai: the OpenAI front "
                   "end's streamed /v1/completions (--url host:9000; key from $OPENAI_API_KEY)")
    s.add_argument("--url", default=None,
                   help="Triton gRPC host:port (default localhost:8001), or the OpenAI server's "
                   "host:port with --endpoint openai (default localhost:9000)")
    s.add_argument("--served-model", default="ensemble", help="ensemble | llm | bls")
    s.add_argument("--dataset", default="sharegpt", choices=["sharegpt", "fixed"])
    s.add_argument("--num-requests", type=int, default=1000)
    s.add_argument("--isl", type=int, default=128)
    s.add_argument("--osl", type=int, default=128)
    s.add_argument("--rate", type=float, default=float("inf"), help="Poisson requests/s (inf: all at once)")
    s.add_argument("--request-rate", default=None, metavar="R1,R2,...",
                   help="a load curve: one run per Poisson rate (e.g. 2,10,20,30,40,inf), "
                        "req/s, TTFT and ITL p50/p99 per rate in one JSON and a plot")
    s.add_argument("--metrics-url", default=None, metavar="URL",
                   help="with --request-rate: Triton's /metrics (e.g. http://localhost:8002/metrics);"
                        " each rate then also reports the engine's own mean TTFT and queue time, "
                        "so the client's TTFT splits into engine and front door")
    s.add_argument("--concurrency", type=int, default=1000)
    s.add_argument("--streams", type=int, default=4, help="gRPC streams to spread requests over")
    s.add_argument("--tokenizer", default=None, help="tokenizer dir used to make prompt text")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default="bench-results")
    s.set_defaults(func=_cmd_serve)
    try:
        from inflight.tools.bench.scheduler_bench import add_parser as add_scheduler

        add_scheduler(bs)
    except (ImportError, AttributeError):
        pass
    return p
