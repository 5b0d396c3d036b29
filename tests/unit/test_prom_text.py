"""inflight.tools.prom_text: Triton's /metrics text read by name and labels, histograms' sums
and counts, and the load curve's engine columns built from two scrapes."""

from __future__ import annotations

import pytest
from inflight.tools import prom_text
from inflight.tools.bench.serve import engine_means

BODY = """\
# HELP inflight_time_to_first_token_seconds Time to first token
# TYPE inflight_time_to_first_token_seconds histogram
inflight_time_to_first_token_seconds_count{model="llm",version="1"} 4
inflight_time_to_first_token_seconds_sum{model="llm",version="1"} 0.1
inflight_time_to_first_token_seconds_bucket{model="llm",version="1",le="0.02"} 1
inflight_time_to_first_token_seconds_count{model="engine",version="1"} 10
inflight_time_to_first_token_seconds_sum{model="engine",version="1"} 2.5
inflight_request_queue_time_seconds_count{model="llm",version="1"} 4
inflight_request_queue_time_seconds_sum{model="llm",version="1"} 0.004
nv_trt_llm_request_metrics{model="llm",request_type="active",version="1"} 3
nv_trt_llm_request_metrics{model="llm",request_type="max",version="1"} 256
nv_trt_llm_request_metrics_total{model="llm"} 99
nv_gpu_power_usage 120.5
label_with_quote{note="a \\"b\\" c",model="llm"} 7
"""


def test_samples_match_name_and_labels_exactly() -> None:
    assert prom_text.total(BODY, "nv_trt_llm_request_metrics", request_type="active") == 3
    assert prom_text.total(BODY, "nv_trt_llm_request_metrics") == 259  # not the _total family
    assert prom_text.total(BODY, "nv_trt_llm_request_metrics", model="engine") == 0
    assert prom_text.total(BODY, "nv_gpu_power_usage") == 120.5  # no labels
    assert prom_text.total(BODY, "inflight_time_to_first_token_seconds") == 0  # only _sum/_count/_bucket
    assert prom_text.samples(BODY, "label_with_quote") == [({"note": 'a \\"b\\" c', "model": "llm"}, 7.0)]


def test_histogram_snapshots_and_what_happened_between_two() -> None:
    h = prom_text.histogram(BODY, "inflight_time_to_first_token_seconds", model="llm")
    assert (h.sum, h.count) == (0.1, 4) and h.mean == pytest.approx(0.025)
    later = prom_text.histogram(BODY.replace("} 4\n", "} 6\n", 1).replace("} 0.1\n", "} 0.16\n", 1),
                                "inflight_time_to_first_token_seconds", model="llm")
    d = later.since(h)
    assert d.count == 2 and d.mean == pytest.approx(0.03)
    assert prom_text.HistogramSnapshot(1.0, 0).mean is None


def test_engine_means_in_ms_per_model_and_none_without_requests() -> None:
    after = BODY.replace('_count{model="llm",version="1"} 4', '_count{model="llm",version="1"} 8')
    after = after.replace('seconds_sum{model="llm",version="1"} 0.1', 'seconds_sum{model="llm",version="1"} 0.22')
    got = engine_means(BODY, after, "llm")
    assert got["engine_ttft_mean_ms"] == pytest.approx(30.0)  # 0.12 s over 4 requests
    assert got["engine_queue_mean_ms"] == pytest.approx(0.0)  # its count moved, its sum did not
    assert engine_means(BODY, BODY, "engine") == {"engine_ttft_mean_ms": None, "engine_queue_mean_ms": None}
