"""`inflight bench throughput` and `inflight bench latency`: the offline engine, and the same
workload through Hugging Face transformers (`--baseline hf`) in the same run."""

from __future__ import annotations

import time
from typing import Any

from tqdm.auto import tqdm

from inflight import env
from inflight.config import EngineConfig
from inflight.engine.core import LLMEngine
from inflight.outputs import SequenceUpdate
from inflight.sampling_params import SamplingParams
from inflight.tools.bench.dataset import Workload
from inflight.tools.bench.report import percentiles


def make_engine(model: str, tokenizer: str | None, **kw: Any) -> LLMEngine:
    return LLMEngine(EngineConfig.from_kwargs(model, tokenizer=tokenizer, **kw))


def run_engine(engine: LLMEngine, wl: Workload, desc: str = "inflight") -> dict[str, Any]:
    """Queue every request at once, step until all finish. Returns throughput and latency
    figures (genai-perf definitions: TPOT = (e2e - ttft) / (output tokens - 1))."""
    finals: list[SequenceUpdate] = []
    t0 = time.perf_counter()
    for i, (p, n) in enumerate(zip(wl.prompts, wl.output_lens)):
        sp = SamplingParams(max_tokens=n, min_tokens=n, temperature=0.0, ignore_eos=True, detokenize=False)
        engine.add_request(f"b{i}", p, sp, callback=lambda u: finals.append(u) if u.finished else None)
    bar = tqdm(total=wl.num_requests, desc=desc, unit="req", disable=env.disable_progress())
    steps = 0
    while engine.has_unfinished():
        before = len(finals)
        engine.step()
        steps += 1
        bar.update(len(finals) - before)
    if engine.runner.device.type == "cuda":
        import torch

        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    bar.close()
    return summarize(finals, wl, wall, steps)


def summarize(finals: list[SequenceUpdate], wl: Workload, wall: float, steps: int) -> dict[str, Any]:
    ms = [u.metrics for u in finals if u.metrics is not None]
    out_tokens = sum(m.num_output_tokens for m in ms)
    ttft = [m.ttft for m in ms if m.ttft is not None]
    tpot = [(m.e2e - m.ttft) / (m.num_output_tokens - 1) for m in ms
            if m.e2e is not None and m.ttft is not None and m.num_output_tokens > 1]
    return {
        "requests": len(ms), "wall_s": wall, "steps": steps,
        "input_tokens": wl.input_tokens, "output_tokens": out_tokens,
        "output_tok_s": out_tokens / wall, "total_tok_s": (out_tokens + wl.input_tokens) / wall,
        "req_s": len(ms) / wall,
        "ttft_s": percentiles(ttft), "tpot_s": percentiles(tpot),
        "e2e_s": percentiles([m.e2e for m in ms if m.e2e is not None]),
        "preemptions": sum(m.num_preemptions for m in ms),
        "_ttft": ttft, "_tpot": tpot,
    }


def run_latency(engine: LLMEngine, isl: int, osl: int, iters: int, vocab: int) -> dict[str, Any]:
    """Batch 1: decode tok/s per user and ms per output token, median over iterations."""
    from inflight.tools.bench.dataset import token_norm_dist

    wl = token_norm_dist(1, isl, osl, vocab, seed=1)
    run_engine(engine, wl, desc="warmup")
    runs = [run_engine(engine, wl, desc=f"latency {i + 1}/{iters}") for i in range(iters)]
    tpot = sorted(r["tpot_s"]["mean"] for r in runs)[len(runs) // 2]
    ttft = sorted(r["ttft_s"]["mean"] for r in runs)[len(runs) // 2]
    e2e = sorted(r["wall_s"] for r in runs)[len(runs) // 2]
    return {"isl": isl, "osl": osl, "iters": iters, "decode_tok_s": 1.0 / tpot,
            "ms_per_token": tpot * 1000.0, "ttft_ms": ttft * 1000.0, "e2e_s": e2e,
            "tok_s_e2e": osl / e2e}
