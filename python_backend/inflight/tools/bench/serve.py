"""`inflight bench serve`: drive a running tritonserver through `ensemble` or `llm` with
tritonclient gRPC streaming, at a fixed concurrency or a Poisson request rate.

Metrics follow genai-perf: TTFT (first response), ITL (gaps between responses), TPOT
((e2e - ttft) / (output tokens - 1)), E2E, output tok/s and req/s over the whole run.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from inflight import env
from inflight.tools.bench.report import percentiles


@dataclass
class Trace:
    sent: float = 0.0
    times: list[float] = field(default_factory=list)
    output_tokens: int = 0
    error: str | None = None
    done: bool = False


def request_inputs(kind: str, prompt: str, max_tokens: int) -> list[Any]:
    import tritonclient.grpc as g

    def t(name: str, arr: np.ndarray, dtype: str) -> Any:
        x = g.InferInput(name, list(arr.shape), dtype)
        x.set_data_from_numpy(arr)
        return x

    if kind == "llm":
        sp = json.dumps({"max_tokens": max_tokens, "min_tokens": max_tokens, "temperature": 0,
                         "ignore_eos": True})
        return [t("text_input", np.array([prompt.encode()], dtype=object), "BYTES"),
                t("stream", np.array([True]), "BOOL"),
                t("sampling_parameters", np.array([sp.encode()], dtype=object), "BYTES"),
                t("return_num_output_tokens", np.array([True]), "BOOL")]
    return [t("text_input", np.array([[prompt.encode()]], dtype=object), "BYTES"),
            t("max_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32"),
            t("min_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32"),
            t("temperature", np.array([[0.0]], dtype=np.float32), "FP32"),
            t("ignore_eos", np.array([[True]]), "BOOL"),
            t("stream", np.array([[True]]), "BOOL"),
            t("return_num_output_tokens", np.array([[True]]), "BOOL")]


async def _run(url: str, model: str, kind: str, prompts: list[str], max_tokens: list[int],
               rate: float, concurrency: int, streams: int, seed: int) -> tuple[list[Trace], float]:
    import tritonclient.grpc.aio as aio

    traces = [Trace() for _ in prompts]
    sem = asyncio.Semaphore(concurrency)
    rng = np.random.default_rng(seed)
    bar = tqdm(total=len(prompts), desc=f"serve {model}", unit="req", disable=env.disable_progress())
    clients = [aio.InferenceServerClient(url) for _ in range(streams)]

    async def gen(k: int):  # type: ignore[no-untyped-def]
        for i in range(k, len(prompts), streams):
            await sem.acquire()
            traces[i].sent = time.perf_counter()
            yield {"model_name": model, "inputs": request_inputs(kind, prompts[i], max_tokens[i]),
                   "request_id": str(i), "enable_empty_final_response": True}

    async def pace() -> None:  # Poisson arrivals: release the semaphore on schedule
        for _ in prompts:
            await asyncio.sleep(rng.exponential(1.0 / rate))
            sem.release()

    errors: list[str] = []

    async def read(k: int) -> None:
        # A stream ends when each of its requests got a final response or an error. An error
        # response carries no request id, so it is counted, not attributed: requests left
        # without a final response are the failed ones.
        remaining = len(range(k, len(prompts), streams))
        async for result, error in clients[k].stream_infer(gen(k)):
            if error is not None:
                errors.append(str(error))
                remaining -= 1
                bar.update(1)
                if rate == float("inf"):
                    sem.release()
            else:
                resp = result.get_response()
                tr = traces[int(resp.id)]
                now = time.perf_counter()
                n = result.as_numpy("num_output_tokens")
                if n is not None:
                    tr.output_tokens = int(n.reshape(-1)[0])
                if result.as_numpy("text_output") is not None:
                    tr.times.append(now)
                if resp.parameters["triton_final_response"].bool_param:
                    tr.done = True
                    remaining -= 1
                    bar.update(1)
                    if rate == float("inf"):
                        sem.release()
            if remaining <= 0:
                return

    if rate != float("inf"):
        sem = asyncio.Semaphore(0)
    t0 = time.perf_counter()
    tasks = [read(k) for k in range(streams)] + ([pace()] if rate != float("inf") else [])
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    bar.close()
    for c in clients:
        await c.close()
    for tr in traces:
        if not tr.done:
            tr.error = "no final response"
    if errors:
        print(f"{len(errors)} request(s) failed; first error: {errors[0]}", file=sys.stderr)
    return traces, wall


def run_serve(url: str, model: str, prompts: list[str], max_tokens: list[int], *, rate: float = float("inf"),
              concurrency: int = 256, streams: int = 4, seed: int = 0,
              endpoint: str = "grpc", api_key: str = "none") -> dict[str, Any]:
    """``endpoint`` grpc: Triton's gRPC stream to ``model``; openai: the OpenAI front end at
    ``url`` (streamed /v1/completions, the same prompts and token counts)."""
    traces: list[Any]
    cpu0 = time.process_time()
    if endpoint == "openai":
        from inflight.client.openai_load import run_openai, summarize_errors

        traces, wall = asyncio.run(run_openai(url, model, prompts, max_tokens, rate=rate,
                                              concurrency=min(concurrency, len(prompts)),
                                              seed=seed, api_key=api_key))
        n_err, first = summarize_errors(traces)
        if n_err:
            print(f"{n_err} request(s) failed; first error: {first}", file=sys.stderr)
    else:
        kind = "llm" if model == "llm" else "ensemble"
        traces, wall = asyncio.run(_run(url, model, kind, prompts, max_tokens, rate,
                                        min(concurrency, len(prompts)),
                                        min(streams, len(prompts)), seed))
    client_cpu = time.process_time() - cpu0
    ok = [t for t in traces if t.error is None and t.done and t.times]
    ttft = [t.times[0] - t.sent for t in ok]
    start = min((t.sent for t in ok), default=0.0)
    # the slowest first tokens, which request (send order) and when: an outlier that is the
    # run's first request is a one-time cost, one in the middle a stall
    ok_ids = {id(t) for t in ok}
    slowest = sorted(((t.times[0] - t.sent, i, t.sent - start) for i, t in enumerate(traces)
                      if id(t) in ok_ids), reverse=True)[:3]
    e2e = [t.times[-1] - t.sent for t in ok]
    itl = [b - a for t in ok for a, b in zip(t.times, t.times[1:])]
    tpot = [(t.times[-1] - t.times[0]) / (t.output_tokens - 1) for t in ok if t.output_tokens > 1]
    out_tokens = sum(t.output_tokens for t in ok)
    return {"model": model, "endpoint": endpoint, "requests": len(traces), "errors": len(traces) - len(ok),
            "wall_s": wall, "output_tokens": out_tokens, "output_tok_s": out_tokens / wall,
            "req_s": len(ok) / wall, "rate": rate, "concurrency": concurrency,
            # streamed responses (gRPC) / chunks (OpenAI) received, and the load generator's own
            # CPU seconds over the run: near wall_s means the generator, not the server, was
            # the bottleneck
            "chunks": sum(len(t.times) for t in ok), "client_cpu_s": client_cpu,
            "ttft_s": percentiles(ttft), "itl_s": percentiles(itl), "tpot_s": percentiles(tpot),
            "e2e_s": percentiles(e2e), "_ttft": ttft, "_itl": itl, "_tpot": tpot,
            "ttft_slowest": [{"request": i, "sent_at_s": round(at, 3), "ttft_ms": round(v * 1000, 3)}
                             for v, i, at in slowest]}


def parse_rates(text: str) -> list[float]:
    """'2,10,20,inf' -> [2.0, 10.0, 20.0, inf]; every rate > 0."""
    rates = []
    for part in text.split(","):
        part = part.strip().lower()
        r = float("inf") if part in ("inf", "unlimited", "max") else float(part)
        if not r > 0:
            raise ValueError(f"request rate must be > 0 or inf, got {part!r}")
        rates.append(r)
    if not rates:
        raise ValueError("no request rate given")
    return rates


def curve_row(res: dict[str, Any]) -> dict[str, Any]:
    """One point of a load curve: what was offered, what came out, latencies in ms."""
    def ms(d: dict[str, float], p: str) -> float | None:
        return round(d[p] * 1000, 3) if p in d else None

    return {"rate": res["rate"], "req_s": res["req_s"], "output_tok_s": res["output_tok_s"],
            "errors": res["errors"], "ttft_p50_ms": ms(res["ttft_s"], "p50"),
            "ttft_p99_ms": ms(res["ttft_s"], "p99"), "itl_p50_ms": ms(res["itl_s"], "p50"),
            "itl_p99_ms": ms(res["itl_s"], "p99"), "ttft_slowest": res.get("ttft_slowest", [])}


ENGINE_HISTOGRAMS = {"engine_ttft_mean_ms": "inflight_time_to_first_token_seconds",
                     "engine_queue_mean_ms": "inflight_request_queue_time_seconds"}


def engine_means(before: str, after: str, model: str) -> dict[str, float | None]:
    """The engine's own mean TTFT and queue time (ms) over the requests that finished between
    two scrapes of Triton's /metrics: measured from the request's arrival in the engine, so
    the client's TTFT minus this is the front door (gRPC, tritonserver, the stub, the IPC)."""
    from inflight.tools import prom_text

    out: dict[str, float | None] = {}
    for key, name in ENGINE_HISTOGRAMS.items():
        d = prom_text.histogram(after, name, model=model).since(prom_text.histogram(before, name, model=model))
        out[key] = None if d.mean is None else round(d.mean * 1000, 3)
    return out


def run_curve(url: str, model: str, prompts: list[str], max_tokens: list[int], rates: list[float],
              metrics_url: str | None = None, metrics_model: str | None = None, **kw: Any
              ) -> list[dict[str, Any]]:
    """``run_serve`` at each Poisson rate in turn (the same prompts): the load curve. With
    ``metrics_url`` (Triton's /metrics), each row also has the engine's own mean TTFT and
    queue time over that rate's requests (:func:`engine_means`) for the model that runs the
    engine, ``metrics_model`` (default ``model``; ``engine`` behind the ensemble or bls)."""
    from inflight.tools import prom_text

    rows = []
    for rate in rates:
        before = prom_text.scrape(metrics_url) if metrics_url else ""
        res = run_serve(url, model, prompts, max_tokens, rate=rate, **kw)
        rows.append(curve_row(res))
        r = rows[-1]
        if metrics_url:  # the stub records a request's metrics after its final response:
            # scrape until every completed request is counted (or 5 s)
            name, done = ENGINE_HISTOGRAMS["engine_ttft_mean_ms"], res["requests"] - res["errors"]
            first = prom_text.histogram(before, name, model=metrics_model or model)
            deadline = time.monotonic() + 5.0
            after = prom_text.scrape(metrics_url)
            while (prom_text.histogram(after, name, model=metrics_model or model).since(first).count < done
                   and time.monotonic() < deadline):
                time.sleep(0.05)
                after = prom_text.scrape(metrics_url)
            r.update(engine_means(before, after, metrics_model or model))
        engine = (f"  engine TTFT mean {r['engine_ttft_mean_ms']} ms (queue {r['engine_queue_mean_ms']} ms)"
                  if metrics_url else "")
        worst = ", ".join(f"#{w['request']} at {w['sent_at_s']} s: {w['ttft_ms']} ms"
                          for w in r["ttft_slowest"])
        print(f"rate {rate:>6}: {r['req_s']:8.2f} req/s  TTFT p50 {r['ttft_p50_ms']} ms "
              f"p99 {r['ttft_p99_ms']} ms  ITL p50 {r['itl_p50_ms']} ms p99 {r['itl_p99_ms']} ms"
              f"  errors {r['errors']}{engine}" + (f"\n    slowest TTFT: {worst}" if worst else ""),
              file=sys.stderr, flush=True)
    return rows


def plot_curve(rows: list[dict[str, Any]], path: str, title: str) -> str | None:
    """Achieved req/s, TTFT and ITL (p50, p99) against the offered rate; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    finite = [r["rate"] for r in rows if r["rate"] != float("inf")]
    top = (max(finite) * 1.25) if finite else 1.0
    xs = [r["rate"] if r["rate"] != float("inf") else top for r in rows]
    labels = [f"{r['rate']:g}" if r["rate"] != float("inf") else "inf" for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].plot(xs, [r["req_s"] for r in rows], "o-", label="achieved")
    axes[0].plot(finite, finite, ":", color="gray", label="offered")
    axes[0].set_ylabel("requests/s")
    for ax, key, name in ((axes[1], "ttft", "TTFT"), (axes[2], "itl", "ITL")):
        for p, style in (("p50", "o-"), ("p99", "s--")):
            ax.plot(xs, [r[f"{key}_{p}_ms"] or float("nan") for r in rows], style, label=f"{name} {p}")
        ax.set_ylabel("ms")
        ax.set_yscale("log")
    if any(r.get("engine_ttft_mean_ms") is not None for r in rows):  # the engine's share
        axes[1].plot(xs, [r.get("engine_ttft_mean_ms") or float("nan") for r in rows], "^:",
                     label="TTFT mean, in the engine")
    for ax in axes:
        ax.set_xticks(xs, labels)
        ax.set_xlabel("offered rate (requests/s, Poisson)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
