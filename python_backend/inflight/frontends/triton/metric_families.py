"""The metric families the peers' dashboards and CI read, and the engine snapshot -> values.

- TensorRT-LLM (`nv_trt_llm_*`, `nv_llm_*_token_len`): the families, label keys and label
  values of tensorrtllm_backend's custom metrics reporter, one gauge per (family, label).
  Each value also has the peer's iteration-stats key ("Active Request Count", ...): the
  stats line logged at verbose level carries the same values under those keys, as the
  peer's backend logs them (its CI compares that line with /metrics).
- vLLM (`vllm:*`): the families of vllm_backend's metrics, reported when the model's
  `REPORT_CUSTOM_METRICS` parameter is true.

Values inflight has no counterpart for are reported with their neutral value (documented in
docs/compatibility.md): no disaggregated serving, no micro batches, no paused requests.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

from inflight.config import parse_bool
from inflight.engine.loop import EngineStats
from inflight.errors import ConfigError

# family -> (description, label key, [(stats key, label value)])
Group = tuple[str, str, list[tuple[str, str]]]
REQUEST: Group = ("TRT LLM request metrics", "request_type", [
    ("Active Request Count", "active"), ("Max Request Count", "max"),
    ("Scheduled Requests", "scheduled"), ("Context Requests", "context"),
    ("Waiting Requests", "waiting")])
MEMORY: Group = ("TRT LLM runtime memory metrics", "memory_type", [
    ("Runtime CPU Memory Usage", "cpu"), ("Runtime GPU Memory Usage", "gpu"),
    ("Runtime Pinned Memory Usage", "pinned")])
KV_CACHE: Group = ("TRT LLM KV cache block metrics", "kv_cache_block_type", [
    ("Max KV cache blocks", "max"), ("Free KV cache blocks", "free"),
    ("Used KV cache blocks", "used"), ("Tokens per KV cache block", "tokens_per"),
    ("Reused KV cache blocks", "reused"), ("Fraction used KV cache blocks", "fraction")])
DISAGGREGATED: Group = ("TRT LLM disaggregated serving metrics", "disaggregated_serving_type", [
    ("KV cache transfer time", "kv_cache_transfer_ms"), ("Request count", "request_count")])
INFLIGHT_BATCHER: Group = ("TRT LLM inflight_batcher-specific metrics", "inflight_batcher_specific_metric", [
    ("Total Context Tokens", "total_context_tokens"), ("Generation Requests", "generation_requests"),
    ("MicroBatch ID", "micro_batch_id"), ("Paused Requests", "paused_requests")])
V1: Group = ("TRT LLM v1-specific metrics", "v1_specific_metric", [
    ("Total Context Tokens", "total_context_tokens"),
    ("Total Generation Tokens", "total_generation_tokens"),
    ("Empty Generation Slots", "empty_generation_slots")])
GENERAL: Group = ("General TRT LLM metrics", "general_type", [
    ("Timestamp", "timestamp"), ("Iteration Counter", "iteration_counter")])
TOKEN_LEN_BUCKETS = [10.0, 50.0, 100.0, 500.0, 1000.0]
# gpt_model_type (the peer's batching_strategy): which batcher family the peer reports
GPT_MODEL_TYPES = {"v1": True, "V1": True, "inflight_batching": False, "inflight_fused_batching": False}
STATS_TIME_FORMAT = "%m-%d-%Y %H:%M:%S.%f"


@dataclass(frozen=True)
class MetricsOptions:
    """What the model's parameters say about its metrics."""

    v1: bool = False  # gpt_model_type=V1: the peer's v1 family instead of inflight_batcher
    vllm: bool = False  # REPORT_CUSTOM_METRICS=true: the vLLM backend's families
    max_model_len: int = 0


def metrics_options(params: dict[str, str], max_model_len: int = 0) -> MetricsOptions:
    """From the model's (filled) parameters; an unknown gpt_model_type fails model load with
    the peer's wording."""
    gpt = params.get("gpt_model_type", "inflight_fused_batching")
    if gpt not in GPT_MODEL_TYPES:
        raise ConfigError(f"Invalid gpt_model_type {gpt!r}. Must be v1/inflight_batching/"
                          "inflight_fused_batching.")
    report = parse_bool(params.get("REPORT_CUSTOM_METRICS", "false"), "REPORT_CUSTOM_METRICS",
                        "config.pbtxt parameter")
    return MetricsOptions(GPT_MODEL_TYPES[gpt], report, max_model_len)


def trtllm_groups(v1: bool) -> dict[str, Group]:
    return {"nv_trt_llm_request_metrics": REQUEST, "nv_trt_llm_runtime_memory_metrics": MEMORY,
            "nv_trt_llm_kv_cache_block_metrics": KV_CACHE,
            "nv_trt_llm_disaggregated_serving_metrics": DISAGGREGATED,
            ("nv_trt_llm_v1_metrics" if v1 else "nv_trt_llm_inflight_batcher_metrics"):
                V1 if v1 else INFLIGHT_BATCHER,
            "nv_trt_llm_general_metrics": GENERAL}


class EpochClock:
    """EngineStats timestamps are time.monotonic(); the peer reports epoch time."""

    def __init__(self) -> None:
        self.offset = time.time() - time.monotonic()

    def epoch(self, monotonic: float) -> float:
        return monotonic + self.offset


def gpu_memory_bytes(device: str) -> int:
    if not device.startswith("cuda"):
        return 0
    import torch

    return int(torch.cuda.memory_allocated()) if torch.cuda.is_available() else 0


def epoch_micros(epoch: float) -> int:
    return int(epoch * 1e6)


def stats_values(s: EngineStats, max_batch_size: int, block_size: int, epoch_us: int,
                 v1: bool, gpu_bytes: int = 0) -> dict[str, Any]:
    """The peer's iteration-stats keys -> values for snapshot ``s`` (Timestamp as its string,
    UTC, of exactly ``epoch_us``)."""
    when = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=epoch_us)
    kv = s.kv
    out: dict[str, Any] = {
        "Active Request Count": s.num_running + s.num_waiting, "Iteration Counter": s.num_steps,
        "Max Request Count": max_batch_size, "Runtime CPU Memory Usage": 0,
        "Runtime GPU Memory Usage": gpu_bytes, "Runtime Pinned Memory Usage": 0,
        "Timestamp": when.strftime(STATS_TIME_FORMAT),
        # the snapshot does not split running requests into context and generation phases:
        # every scheduled request counts as a generation request (docs/compatibility.md)
        "Context Requests": 0, "Scheduled Requests": s.num_running,
        "Total Context Tokens": s.step_tokens, "Waiting Requests": s.num_waiting,
        "Free KV cache blocks": kv.free_blocks, "Max KV cache blocks": kv.total_blocks,
        "Tokens per KV cache block": block_size, "Used KV cache blocks": kv.used_blocks,
        "Reused KV cache blocks": kv.reused_blocks_total,
        "Fraction used KV cache blocks": kv.used_blocks / kv.total_blocks if kv.total_blocks else 0.0,
        "KV cache transfer time": 0, "Request count": 0,
    }
    if v1:
        out.update({"Total Generation Tokens": 0,
                    "Empty Generation Slots": max(max_batch_size - s.num_running, 0)})
    else:
        out.update({"Generation Requests": s.num_running, "MicroBatch ID": 0, "Paused Requests": 0})
    return out


def gauge_value(key: str, value: Any, epoch_us: int) -> float:
    """A stats value as the gauge shows it (Timestamp: epoch microseconds)."""
    return float(epoch_us) if key == "Timestamp" else float(value)


# ---- vLLM backend ----------------------------------------------------------------------------
VLLM_TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                     2.5, 5.0, 7.5, 10.0]
VLLM_TPOT_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5]
VLLM_E2E_BUCKETS = [1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0]
VLLM_N_BUCKETS = [1.0, 2.0, 5.0, 10.0, 20.0]


def buckets_1_2_5(limit: int) -> list[float]:
    """1, 2, 5, 10, 20, 50, ... up to ``limit`` (vLLM's token-count buckets)."""
    out: list[float] = []
    exp = 0
    while True:
        for m in (1, 2, 5):
            v = m * 10 ** exp
            if v > limit:
                return out
            out.append(float(v))
        exp += 1
