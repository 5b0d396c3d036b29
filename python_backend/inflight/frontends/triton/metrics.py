"""Custom metrics on Triton's /metrics endpoint.

The TensorRT-LLM backend's families with its label sets and values, and with the
vLLM profile's `REPORT_CUSTOM_METRICS` the vLLM backend's (triton/metric_families.py), plus
what users asked for: histograms of time to first token, time per output
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
under the same lock (`call_closing`). Once tritonserver itself is gone the reporter stops
(``ServerLink``, triton/health.py: an update then never returns and keeps the stub from
exiting); the sender thread, which makes the other updates, stops too (triton/serving.py).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from inflight.engine.loop import EngineLoop, EngineStats
from inflight.frontends.triton.health import ServerLink
from inflight.frontends.triton.metric_families import (
    TOKEN_LEN_BUCKETS,
    VLLM_E2E_BUCKETS,
    VLLM_N_BUCKETS,
    VLLM_TPOT_BUCKETS,
    VLLM_TTFT_BUCKETS,
    EpochClock,
    MetricsOptions,
    buckets_1_2_5,
    epoch_micros,
    gauge_value,
    gpu_memory_bytes,
    stats_values,
    trtllm_groups,
)
from inflight.outputs import RequestMetrics, SequenceUpdate

LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]
TPOT_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0]
REPORT_INTERVAL_S = 0.5
log = logging.getLogger(__name__)


class Metrics:
    def __init__(self, pb: Any, model: str, version: str, loop: EngineLoop,
                 options: MetricsOptions | None = None, server: ServerLink | None = None) -> None:
        """``server``: the stub's tritonserver (None: assumed alive, for tests)."""
        self.loop = loop
        self.server = server
        self.opts = options or MetricsOptions()
        self.pb = pb
        mf = pb.MetricFamily
        base = {"model": model, "version": str(version)}
        self._families: list[Any] = []

        def fam(name: str, desc: str, kind: Any) -> Any:
            f = mf(name=name, description=desc, kind=kind)
            self._families.append(f)
            return f

        # the peer's families, label keys and values; (stats key, gauge) in the peer's order
        self.peer: list[tuple[str, Any]] = []
        for name, (desc, key, rows) in trtllm_groups(self.opts.v1).items():
            kind = mf.COUNTER if name.endswith("disaggregated_serving_metrics") else mf.GAUGE
            f = fam(name, desc, kind)
            self.peer += [(stat, f.Metric(labels={**base, key: label})) for stat, label in rows]
        hist = mf.HISTOGRAM
        self.input_len = fam("nv_llm_input_token_len", "TRT LLM response metrics", hist).Metric(
            labels={**base, "response_metric_type": "total_input_tokens"}, buckets=TOKEN_LEN_BUCKETS)
        self.output_len = fam("nv_llm_output_token_len", "TRT LLM response metrics", hist).Metric(
            labels={**base, "response_metric_type": "total_output_tokens"}, buckets=TOKEN_LEN_BUCKETS)
        self.kv_reusable = fam("inflight_kv_cache_reusable_blocks", "KV blocks holding a reusable "
                               "prefix (free or in use)", mf.GAUGE).Metric(labels=base)
        self.kv_hit_rate = fam("inflight_kv_cache_reuse_hit_rate", "Prefix-cache hit rate over "
                               "looked-up blocks", mf.GAUGE).Metric(labels=base)
        self.ttft = fam("inflight_time_to_first_token_seconds", "Time to first token", hist).Metric(
            labels=base, buckets=LATENCY_BUCKETS)
        self.tpot = fam("inflight_time_per_output_token_seconds",
                        "Mean inter-token latency of a sequence", hist).Metric(labels=base, buckets=TPOT_BUCKETS)
        self.e2e = fam("inflight_e2e_request_latency_seconds", "End-to-end request latency", hist).Metric(
            labels=base, buckets=LATENCY_BUCKETS)
        self.queue = fam("inflight_request_queue_time_seconds", "Time from arrival to first schedule",
                         hist).Metric(labels=base, buckets=LATENCY_BUCKETS)
        self.prompt_tokens = fam("inflight_prompt_tokens_total", "Prompt tokens processed (once "
                                 "per request, whatever its n)", mf.COUNTER).Metric(labels=base)
        self.gen_tokens = fam("inflight_generation_tokens_total", "Tokens generated", mf.COUNTER
                              ).Metric(labels=base)
        fin = fam("inflight_request_success_total", "Finished sequences by finish reason", mf.COUNTER)
        self.finished = {r: fin.Metric(labels={**base, "finish_reason": r})
                         for r in ("stop", "length", "abort", "error")}
        self.vllm = VllmMetrics(fam, mf, base, self.opts.max_model_len) if self.opts.vllm else None
        cfg = loop.engine.cfg
        self._max_batch, self._block_size = int(cfg.max_batch_size), int(cfg.block_size)
        self._device = str(getattr(cfg, "device", "cpu"))
        self._clock = EpochClock()
        self._logger = getattr(pb, "Logger", None)
        self._items: dict[str, int] = {}  # engine id -> output tokens of its finished sequences
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

    def on_final(self, stream: Any, u: SequenceUpdate) -> None:
        """A sequence finished (sender thread). Per sequence: finish reasons, latencies, tokens
        generated; per request (batch item), once its last sequence finished: the prompt
        tokens (counted once whatever its n) and the token-length histograms."""
        m = u.metrics
        if m is None:
            return
        self.finished.get(u.finish_reason or "error", self.finished["error"]).increment(1)
        self.gen_tokens.increment(m.num_output_tokens)
        if m.ttft is not None:
            self.ttft.observe(m.ttft)
        if m.queue_time is not None:
            self.queue.observe(m.queue_time)
        if m.e2e is not None:
            self.e2e.observe(m.e2e)
        tpot = None
        if m.first_token_time is not None and m.finished_time is not None and m.num_output_tokens > 1:
            tpot = (m.finished_time - m.first_token_time) / (m.num_output_tokens - 1)
            self.tpot.observe(tpot)
        if self.vllm is not None:
            self.vllm.on_sequence(m, tpot)
        n = int(stream.item.params.n) if stream is not None else 1
        key = stream.engine_id if stream is not None else u.request_id
        done = self._items.pop(key, 0) + m.num_output_tokens
        if stream is not None and stream.finals + 1 < n:  # more sequences of this item to come
            self._items[key] = done
            return
        self.prompt_tokens.increment(m.num_prompt_tokens)
        self.input_len.observe(m.num_prompt_tokens)
        self.output_len.observe(done)
        if self.vllm is not None:
            self.vllm.on_request(m.num_prompt_tokens, done, n)

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
        epoch = epoch_micros(self._clock.epoch(s.timestamp))
        values = stats_values(s, self._max_batch, self._block_size, epoch, self.opts.v1,
                              gpu_memory_bytes(self._device))
        for key, gauge in self.peer:
            if key not in ("KV cache transfer time", "Request count"):  # counters, never moved
                gauge.set(gauge_value(key, values[key], epoch))
        self.kv_reusable.set(s.kv.cached_blocks)
        self.kv_hit_rate.set(s.kv.hit_rate)
        if self.vllm is not None:
            self.vllm.set_gauges(s)
        if self._logger is not None:  # the peer's iteration-stats line (verbose log level)
            self._logger.log_verbose(json.dumps(values))

    def _report(self) -> None:
        while not self._stop.wait(REPORT_INTERVAL_S):
            with self._gate:
                if not self._open_calls:  # idle: the gauges already show it (module doc)
                    continue
                if self.server is not None and not self.server.alive():
                    log.warning("tritonserver is gone: the metrics reporter stops")
                    return
                self._refresh(self.loop.stats)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


class VllmMetrics:
    """vllm_backend's `vllm:*` families (REPORT_CUSTOM_METRICS=true). The per-token latency
    histogram gets one observation per inter-token gap, each the sequence's mean gap (the
    engine keeps a sequence's first and last token times, not every token's)."""

    def __init__(self, fam: Any, mf: Any, base: dict[str, str], max_model_len: int) -> None:
        hist = mf.HISTOGRAM
        self.prompt = fam("vllm:prompt_tokens_total", "Number of prefill tokens processed.",
                          mf.COUNTER).Metric(labels=base)
        self.generation = fam("vllm:generation_tokens_total", "Number of generation tokens "
                              "processed.", mf.COUNTER).Metric(labels=base)
        self.ttft = fam("vllm:time_to_first_token_seconds", "Histogram of time to first token "
                        "in seconds.", hist).Metric(labels=base, buckets=VLLM_TTFT_BUCKETS)
        self.tpot = fam("vllm:time_per_output_token_seconds", "Histogram of time per output "
                        "token in seconds.", hist).Metric(labels=base, buckets=VLLM_TPOT_BUCKETS)
        self.e2e = fam("vllm:e2e_request_latency_seconds", "Histogram of end to end request "
                       "latency in seconds.", hist).Metric(labels=base, buckets=VLLM_E2E_BUCKETS)
        tokens = buckets_1_2_5(max(max_model_len, 1))
        self.request_prompt = fam("vllm:request_prompt_tokens", "Number of prefill tokens "
                                  "processed.", hist).Metric(labels=base, buckets=tokens)
        self.request_generation = fam("vllm:request_generation_tokens", "Number of generation "
                                      "tokens processed.", hist).Metric(labels=base, buckets=tokens)
        self.n = fam("vllm:request_params_n", "Histogram of the n request parameter.",
                     hist).Metric(labels=base, buckets=VLLM_N_BUCKETS)
        self.running = fam("vllm:num_requests_running", "Number of requests currently running "
                           "on GPU.", mf.GAUGE).Metric(labels=base)
        self.waiting = fam("vllm:num_requests_waiting", "Number of requests waiting to be "
                           "processed.", mf.GAUGE).Metric(labels=base)
        self.kv_usage = fam("vllm:gpu_cache_usage_perc", "GPU KV-cache usage. 1 means 100 percent "
                            "usage.", mf.GAUGE).Metric(labels=base)

    def on_sequence(self, m: RequestMetrics, tpot: float | None) -> None:
        self.generation.increment(m.num_output_tokens)
        if m.ttft is not None:
            self.ttft.observe(m.ttft)
        if m.e2e is not None:
            self.e2e.observe(m.e2e)
        if tpot is not None:
            for _ in range(m.num_output_tokens - 1):
                self.tpot.observe(tpot)

    def on_request(self, prompt_tokens: int, output_tokens: int, n: int) -> None:
        self.prompt.increment(prompt_tokens)
        self.request_prompt.observe(prompt_tokens)
        self.request_generation.observe(output_tokens)
        self.n.observe(n)

    def set_gauges(self, s: EngineStats) -> None:
        self.running.set(s.num_running)
        self.waiting.set(s.num_waiting)
        self.kv_usage.set(s.kv.used_blocks / s.kv.total_blocks if s.kv.total_blocks else 0.0)
