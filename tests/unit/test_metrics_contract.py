"""Metric names, label sets and values the peers' dashboards and CI read (issue 12), with a
fake pb (no server): the TensorRT-LLM families with their exact label sets, the verbose
iteration-stats line carrying the same values under the peer's keys, the token-length
histograms per request (prompt counted once when n > 1), the vLLM families behind
REPORT_CUSTOM_METRICS, the timestamp in epoch microseconds."""

from __future__ import annotations

import datetime as dt
import json
import time
from types import SimpleNamespace
from typing import Any

import pytest
from inflight.engine.kv_cache import KVStats
from inflight.engine.loop import EngineStats
from inflight.errors import ConfigError
from inflight.frontends.triton.metric_families import buckets_1_2_5, metrics_options
from inflight.frontends.triton.metrics import Metrics
from inflight.outputs import RequestMetrics, SequenceUpdate


class Fam:
    GAUGE, COUNTER, HISTOGRAM = "gauge", "counter", "histogram"
    made: list[Fam] = []

    def __init__(self, name: str, description: str, kind: str) -> None:
        self.name, self.kind, self.metrics = name, kind, []
        Fam.made.append(self)

    def Metric(self, labels: dict[str, str], buckets: Any = None) -> Any:  # noqa: N802
        m = SimpleNamespace(labels=labels, buckets=buckets, value=0.0, obs=[])
        m.set = lambda v, m=m: setattr(m, "value", v)
        m.increment = lambda v, m=m: setattr(m, "value", m.value + v)
        m.observe = lambda v, m=m: m.obs.append(v)
        self.metrics.append(m)
        return m


class Logger:
    lines: list[str] = []

    @staticmethod
    def log_verbose(msg: str) -> None:
        Logger.lines.append(msg)


def _stats(used: int = 3, running: int = 2, waiting: int = 1) -> EngineStats:
    kv = KVStats(total_blocks=10, free_blocks=10 - used, used_blocks=used, cached_blocks=1,
                 reused_blocks_total=4, lookup_blocks_total=8)
    return EngineStats(waiting, running, 7, kv, 12, time.monotonic())


def _metrics(**params: str) -> Metrics:
    Fam.made.clear()
    Logger.lines.clear()
    loop = SimpleNamespace(stats=_stats(), fresh_stats=_stats,
                           engine=SimpleNamespace(cfg=SimpleNamespace(max_batch_size=8, block_size=16)))
    pb = SimpleNamespace(MetricFamily=Fam, Logger=Logger)
    return Metrics(pb, "tensorrt_llm", "1", loop, metrics_options(params, 512))  # type: ignore[arg-type]


def _family(name: str) -> Fam:
    return next(f for f in Fam.made if f.name == name)


def _labels(name: str, key: str) -> list[str]:
    return [m.labels[key] for m in _family(name).metrics]


def test_trtllm_families_have_the_peer_label_sets() -> None:
    m = _metrics()
    try:
        assert _labels("nv_trt_llm_request_metrics", "request_type") == [
            "active", "max", "scheduled", "context", "waiting"]
        assert _labels("nv_trt_llm_runtime_memory_metrics", "memory_type") == ["cpu", "gpu", "pinned"]
        assert _labels("nv_trt_llm_kv_cache_block_metrics", "kv_cache_block_type") == [
            "max", "free", "used", "tokens_per", "reused", "fraction"]
        assert _labels("nv_trt_llm_inflight_batcher_metrics", "inflight_batcher_specific_metric") == [
            "total_context_tokens", "generation_requests", "micro_batch_id", "paused_requests"]
        assert _labels("nv_trt_llm_general_metrics", "general_type") == ["timestamp", "iteration_counter"]
        assert _family("nv_trt_llm_disaggregated_serving_metrics").kind == Fam.COUNTER
        for f in Fam.made:
            for x in f.metrics:
                assert {"model", "version"} <= set(x.labels) and x.labels["model"] == "tensorrt_llm"
        for name, kind in (("nv_llm_input_token_len", "total_input_tokens"),
                           ("nv_llm_output_token_len", "total_output_tokens")):
            (h,) = _family(name).metrics
            assert h.labels == {"model": "tensorrt_llm", "version": "1", "response_metric_type": kind}
            assert h.buckets == [10.0, 50.0, 100.0, 500.0, 1000.0]
        assert not any(f.name.startswith("vllm:") for f in Fam.made)  # REPORT_CUSTOM_METRICS unset
    finally:
        m.close()


def test_stats_line_carries_the_gauge_values_and_an_epoch_timestamp() -> None:
    before = time.time()
    m = _metrics()
    try:
        stats = json.loads(Logger.lines[-1])
        gauges = {stat: g.value for stat, g in m.peer}
        assert set(stats) == set(gauges)  # one stats key per nv_trt_llm gauge, as the peer
        for key, value in stats.items():
            if key != "Timestamp":
                assert float(value) == gauges[key], key
        assert stats["Active Request Count"] == 3 and stats["Used KV cache blocks"] == 3
        assert stats["Max Request Count"] == 8 and stats["Tokens per KV cache block"] == 16
        micros = int(gauges["Timestamp"])
        assert before - 1 <= micros / 1e6 <= time.time() + 1  # epoch microseconds
        logged = dt.datetime.strptime(stats["Timestamp"], "%m-%d-%Y %H:%M:%S.%f")
        assert logged == dt.datetime.fromtimestamp(micros / 1e6, dt.timezone.utc).replace(tzinfo=None)
    finally:
        m.close()


def test_v1_batching_reports_the_v1_family_and_a_bad_type_fails_load() -> None:
    m = _metrics(gpt_model_type="V1")
    try:
        assert _labels("nv_trt_llm_v1_metrics", "v1_specific_metric") == [
            "total_context_tokens", "total_generation_tokens", "empty_generation_slots"]
        assert not any(f.name == "nv_trt_llm_inflight_batcher_metrics" for f in Fam.made)
        assert len(json.loads(Logger.lines[-1])) == len(m.peer) == 21
    finally:
        m.close()
    with pytest.raises(ConfigError, match="Invalid gpt_model_type"):
        metrics_options({"gpt_model_type": "INVALID"})


def _final(index: int, prompt: int, out: int) -> SequenceUpdate:
    t = time.monotonic()
    rm = RequestMetrics(t - 1.0, t - 0.9, t - 0.5, t, prompt, out, 0, 0)
    return SequenceUpdate("r", index, [], "", finished=True, finish_reason="length", metrics=rm)


def _stream(n: int) -> Any:
    return SimpleNamespace(engine_id="r:0", finals=0, item=SimpleNamespace(params=SimpleNamespace(n=n)))


def test_prompt_counted_once_per_request_with_n_sequences() -> None:
    m = _metrics(REPORT_CUSTOM_METRICS="true")
    try:
        s = _stream(2)
        m.on_final(s, _final(0, 30, 5))
        assert m.input_len.obs == [] and m.prompt_tokens.value == 0  # one sequence still running
        s.finals = 1
        m.on_final(s, _final(1, 30, 7))
        assert m.input_len.obs == [30] and m.output_len.obs == [12]
        assert m.prompt_tokens.value == 30 and m.gen_tokens.value == 12
        v = m.vllm
        assert v is not None
        assert v.prompt.value == 30 and v.generation.value == 12
        assert v.request_prompt.obs == [30] and v.request_generation.obs == [12] and v.n.obs == [2]
        assert len(v.tpot.obs) == 4 + 6 and len(v.ttft.obs) == 2  # one per inter-token gap
    finally:
        m.close()


def test_vllm_families_behind_report_custom_metrics() -> None:
    m = _metrics(REPORT_CUSTOM_METRICS="true")
    try:
        names = {f.name for f in Fam.made if f.name.startswith("vllm:")}
        assert names == {
            "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
            "vllm:time_to_first_token_seconds", "vllm:time_per_output_token_seconds",
            "vllm:e2e_request_latency_seconds", "vllm:request_prompt_tokens",
            "vllm:request_generation_tokens", "vllm:request_params_n",
            "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:gpu_cache_usage_perc"}
        assert _family("vllm:prompt_tokens_total").kind == Fam.COUNTER
        assert _family("vllm:num_requests_running").metrics[0].value == 2
        assert _family("vllm:request_prompt_tokens").metrics[0].buckets == buckets_1_2_5(512)
    finally:
        m.close()
    assert buckets_1_2_5(512) == [1, 2, 5, 10, 20, 50, 100, 200, 500]
