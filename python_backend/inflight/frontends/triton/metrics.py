"""Custom metrics on Triton's /metrics endpoint.

Families of the TensorRT-LLM backend (same names and label keys, so existing dashboards
work) plus what its users asked for: histograms of time to first token, time per output
token, end-to-end latency and queue time, and token counters. Gauges are refreshed by a
reporter thread once per interval; counters and histograms are updated once per finished
sequence from the sender thread, never per token.

Every metric update is an IPC round trip to tritonserver, and one that Triton no longer
services hangs the python stub for good: it waits for the reply holding the GIL, so the
model's finalize never runs, tritonserver gives up on the unload at its exit timeout and the
stub is left orphaned (seen with 2.51: a SIGTERM half a second after the last request). Triton
unloads a model only once no request is in flight, so metrics are touched only while one is:
the reporter refreshes gauges only while a call is open (and the state changed), and the
call whose FINAL leaves none open refreshes them to the idle state just before that FINAL,
under the same lock (`call_closing`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from inflight.engine.loop import EngineLoop, EngineStats
from inflight.outputs import SequenceUpdate

LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]
TPOT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0]
REPORT_INTERVAL_S = 0.5
log = logging.getLogger(__name__)


class Metrics:
    def __init__(self, pb: Any, model: str, version: str, loop: EngineLoop) -> None:
        self.loop = loop
        mf = pb.MetricFamily
        base = {"model": model, "version": str(version)}
        self._families: list[Any] = []

        def fam(name: str, desc: str, kind: Any) -> Any:
            f = mf(name=name, description=desc, kind=kind)
            self._families.append(f)
            return f

        req = fam("nv_trt_llm_request_metrics", "TRT LLM request metrics", mf.GAUGE)
        kv = fam("nv_trt_llm_kv_cache_block_metrics", "TRT LLM KV cache block metrics", mf.GAUGE)
        ifb = fam("nv_trt_llm_inflight_batcher_metrics", "TRT LLM inflight batcher metrics", mf.GAUGE)
        gen = fam("nv_trt_llm_general_metrics", "General TRT LLM metrics", mf.GAUGE)
        self.g = {
            "active": req.Metric(labels={**base, "request_type": "active"}),
            "max": req.Metric(labels={**base, "request_type": "max"}),
            "scheduled": req.Metric(labels={**base, "request_type": "scheduled"}),
            "waiting": req.Metric(labels={**base, "request_type": "waiting"}),
            "kv_max": kv.Metric(labels={**base, "kv_cache_block_type": "max"}),
            "kv_free": kv.Metric(labels={**base, "kv_cache_block_type": "free"}),
            "kv_used": kv.Metric(labels={**base, "kv_cache_block_type": "used"}),
            "kv_tokens_per": kv.Metric(labels={**base, "kv_cache_block_type": "tokens_per"}),
            "kv_fraction": kv.Metric(labels={**base, "kv_cache_block_type": "fraction"}),
            "kv_cached": kv.Metric(labels={**base, "kv_cache_block_type": "reusable"}),
            "kv_hit_rate": kv.Metric(labels={**base, "kv_cache_block_type": "reuse_hit_rate"}),
            "step_tokens": ifb.Metric(labels={**base, "inflight_batcher_specific_metric": "total_context_tokens"}),
            "iterations": gen.Metric(labels={**base, "general_type": "iteration_counter"}),
            "timestamp": gen.Metric(labels={**base, "general_type": "timestamp"}),
        }
        hist = mf.HISTOGRAM
        self.ttft = fam("inflight_time_to_first_token_seconds", "Time to first token", hist).Metric(
            labels=base, buckets=LATENCY_BUCKETS)
        self.tpot = fam("inflight_time_per_output_token_seconds",
                        "Mean inter-token latency of a sequence", hist).Metric(labels=base, buckets=TPOT_BUCKETS)
        self.e2e = fam("inflight_e2e_request_latency_seconds", "End-to-end request latency", hist).Metric(
            labels=base, buckets=LATENCY_BUCKETS)
        self.queue = fam("inflight_request_queue_time_seconds", "Time from arrival to first schedule",
                         hist).Metric(labels=base, buckets=LATENCY_BUCKETS)
        self.prompt_tokens = fam("inflight_prompt_tokens_total", "Prompt tokens processed", mf.COUNTER
                                 ).Metric(labels=base)
        self.gen_tokens = fam("inflight_generation_tokens_total", "Tokens generated", mf.COUNTER
                              ).Metric(labels=base)
        fin = fam("inflight_request_success_total", "Finished sequences by finish reason", mf.COUNTER)
        self.finished = {r: fin.Metric(labels={**base, "finish_reason": r})
                         for r in ("stop", "length", "abort", "error")}
        self.g["max"].set(loop.engine.cfg.max_batch_size)
        self.g["kv_tokens_per"].set(loop.engine.cfg.block_size)
        self._gate = threading.Lock()  # held around every gauge refresh and the last FINAL
        self._open_calls = 0
        self._shown: EngineStats | None = None  # the stats the gauges show
        self._refresh(loop.stats)  # during initialize: Triton services it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._report, name="inflight-metrics", daemon=True)
        self._thread.start()

    # ---- CallObserver (the serving core) ---------------------------------------------------
    def call_opened(self) -> None:
        with self._gate:
            self._open_calls += 1

    @contextmanager
    def call_closing(self) -> Iterator[None]:
        """Around a call's FINAL send: the last open call shows the idle state first."""
        with self._gate:
            self._open_calls -= 1
            if self._open_calls == 0:
                self._refresh(self.loop.fresh_stats())
            yield

    def on_final(self, _stream: Any, u: SequenceUpdate) -> None:
        m = u.metrics
        if m is None:
            return
        self.finished.get(u.finish_reason or "error", self.finished["error"]).increment(1)
        self.prompt_tokens.increment(m.num_prompt_tokens)
        self.gen_tokens.increment(m.num_output_tokens)
        if m.ttft is not None:
            self.ttft.observe(m.ttft)
        if m.queue_time is not None:
            self.queue.observe(m.queue_time)
        if m.e2e is not None:
            self.e2e.observe(m.e2e)
        if m.first_token_time is not None and m.finished_time is not None and m.num_output_tokens > 1:
            self.tpot.observe((m.finished_time - m.first_token_time) / (m.num_output_tokens - 1))

    def _refresh(self, s: EngineStats) -> None:
        """Show ``s`` (callers hold the gate). Never raises: metrics must not fail a request."""
        if s is self._shown:
            return
        self._shown = s
        try:
            self._set_gauges(s)
        except Exception:  # noqa: BLE001
            log.warning("metrics refresh failed", exc_info=True)

    def _set_gauges(self, s: EngineStats) -> None:
        g = self.g
        g["active"].set(s.num_running + s.num_waiting)
        g["scheduled"].set(s.num_running)
        g["waiting"].set(s.num_waiting)
        g["kv_max"].set(s.kv.total_blocks)
        g["kv_free"].set(s.kv.free_blocks)
        g["kv_used"].set(s.kv.used_blocks)
        g["kv_fraction"].set(s.kv.used_blocks / max(s.kv.total_blocks, 1))
        g["kv_cached"].set(s.kv.cached_blocks)
        g["kv_hit_rate"].set(s.kv.hit_rate)
        g["step_tokens"].set(s.step_tokens)
        g["iterations"].set(s.num_steps)
        g["timestamp"].set(int(s.timestamp * 1e6))

    def _report(self) -> None:
        while not self._stop.wait(REPORT_INTERVAL_S):
            with self._gate:
                if self._open_calls:  # idle: the gauges already show it (module doc)
                    self._refresh(self.loop.stats)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
