"""`inflight bench profile` and `inflight bench reuse`: where a decode step's time goes, and
what a prefix-cache hit saves.

profile: B requests decode together; the steady decode steps are timed (wall per step), then
profiled with ``torch.profiler``. The report gives the GPU-busy time per step (kernel time
from the trace), the host time of each engine phase (schedule, prepare, execute, sample,
complete, advance; CPU wall clock, no sync), the top kernels, and a Chrome trace to open in
Perfetto. Wall per step minus GPU-busy per step is the host time the GPU waits for.

reuse: one long prompt sent twice with ``enable_kv_cache_reuse``: the second request's TTFT
against the first's, and its reused block count (what the Triton output
``kv_cache_reused_blocks`` reports).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch

from inflight.engine.core import LLMEngine
from inflight.sampling_params import SamplingParams
from inflight.tools.bench.dataset import token_norm_dist

PHASES = {  # engine attribute path -> phase name
    ("scheduler", "schedule"): "schedule",
    ("runner", "prepare"): "prepare",
    ("runner", "execute"): "execute (launch)",
    ("sampler", "sample"): "sample (launch)",
    ("", "_complete"): "complete (sync + postprocess)",
    ("", "_postprocess"): "postprocess",
    ("scheduler", "advance"): "advance",
}


def _sync(engine: LLMEngine) -> None:
    if engine.runner.device.type == "cuda":
        torch.cuda.synchronize()


def _instrument(engine: LLMEngine, totals: dict[str, float]) -> Callable[[], None]:
    """Wrap the engine's phases with wall-clock timers; returns the undo function."""
    undo: list[Callable[[], None]] = []
    for (owner, name), label in PHASES.items():
        obj = getattr(engine, owner) if owner else engine
        fn = getattr(obj, name, None)
        if fn is None:
            continue

        def timed(*a: Any, _fn: Any = fn, _label: str = label, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return _fn(*a, **kw)
            finally:
                totals[_label] += time.perf_counter() - t

        setattr(obj, name, timed)
        undo.append(lambda o=obj, n=name: delattr(o, n))
    return lambda: [u() for u in undo]


def _decoding_engine(engine: LLMEngine, batch: int, isl: int, steps: int) -> None:
    """Queue `batch` requests long enough for warm-up + two measured phases, and step until
    every one of them is decoding."""
    wl = token_norm_dist(batch, isl, 1, engine.vocab_size, seed=5)
    sp = SamplingParams(max_tokens=3 * steps + 64, min_tokens=3 * steps + 64, temperature=0.0,
                        ignore_eos=True, detokenize=False)
    for i, p in enumerate(wl.prompts):
        engine.add_request(f"p{i}", p, sp)
    while engine.scheduler.num_waiting or engine.last_step_tokens != batch or engine.num_steps < 8:
        engine.step()


def check_batch(batch: int, max_batch_size: int, max_num_tokens: int) -> None:
    """One decode step must hold the whole batch, or steady decode is never reached."""
    cap = min(max_batch_size, max_num_tokens)
    if not 1 <= batch <= cap:
        raise ValueError(f"--batch must be in [1, {cap}] (max_batch_size and max_num_tokens "
                         f"bound one decode step; raise --max-batch-size), got {batch}")


def run_profile(engine: LLMEngine, batch: int, isl: int, steps: int, trace: str | None
                ) -> dict[str, Any]:
    check_batch(batch, engine.cfg.max_batch_size, engine.cfg.max_num_tokens)
    _decoding_engine(engine, batch, isl, steps)
    _sync(engine)
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.step()
    _sync(engine)
    wall = (time.perf_counter() - t0) / steps
    totals: dict[str, float] = defaultdict(float)
    undo = _instrument(engine, totals)
    try:
        for _ in range(steps):
            engine.step()
        _sync(engine)
    finally:
        undo()
    host = {k: 1e3 * v / steps for k, v in totals.items()}
    res: dict[str, Any] = {"batch": batch, "isl": isl, "steps": steps, "overlap": engine.overlap,
                           "cuda_graphs": engine.runner.graphs is not None,
                           "wall_ms_per_step": 1e3 * wall, "decode_tok_s": batch / wall,
                           "host_ms_per_step": host}
    if engine.runner.device.type == "cuda":
        res.update(_trace(engine, steps, trace))
    for rid in list(engine.children):
        engine.abort(rid)
    while engine.has_unfinished():
        engine.step()
    return res


def _trace(engine: LLMEngine, steps: int, path: str | None) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            engine.step()
        torch.cuda.synchronize()
    if path:
        prof.export_chrome_trace(path)
    kernels: dict[str, tuple[float, int]] = {}
    busy = 0.0
    for ev in prof.key_averages():
        dev = getattr(ev, "self_device_time_total", None)
        if dev is None:
            dev = getattr(ev, "self_cuda_time_total", 0.0)
        if dev and getattr(ev, "device_type", None) is not None and "CUDA" in str(ev.device_type):
            kernels[ev.key] = (dev / 1e3 / steps, ev.count // steps)  # ms per step, calls per step
            busy += dev / 1e3 / steps
    top = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:15]
    return {"gpu_busy_ms_per_step": busy,
            "top_kernels_ms_per_step": [{"kernel": k[:120], "ms": round(v[0], 4), "calls": v[1]}
                                        for k, v in top]}


def run_reuse(engine: LLMEngine, prompt_len: int, repeats: int = 3) -> dict[str, Any]:
    """TTFT of a long prompt the first time and when its blocks are cached (median of
    `repeats` distinct prompts)."""
    if not engine.cfg.enable_kv_cache_reuse:
        raise ValueError("the engine needs enable_kv_cache_reuse=True")
    sp = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True, detokenize=False)
    wl = token_norm_dist(repeats + 1, prompt_len, 1, engine.vocab_size, seed=11)
    first, second, reused = [], [], []
    for i, p in enumerate(wl.prompts):
        for attempt in range(2):
            finals: list[Any] = []
            engine.add_request(f"reuse{i}-{attempt}", p, sp,
                               callback=lambda u, f=finals: f.append(u) if u.finished else None)
            while engine.has_unfinished():
                engine.step()
            _sync(engine)
            m = finals[0].metrics
            if i == 0:
                continue  # warm-up prompt (kernel autotuning, allocator)
            (first if attempt == 0 else second).append(m.ttft)
            if attempt == 1:
                reused.append(m.kv_reused_blocks)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    return {"prompt_len": prompt_len, "repeats": repeats,
            "ttft_first_ms": 1e3 * med(first), "ttft_repeat_ms": 1e3 * med(second),
            "speedup": med(first) / med(second), "reused_blocks": reused,
            "blocks_per_prompt": -(-prompt_len // engine.cfg.block_size)}
