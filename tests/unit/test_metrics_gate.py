"""Metrics touch Triton only while a request is in flight (a fake pb, no server).

Triton may unload the model as soon as the last FINAL went out, and a metric update it no
longer services hangs the stub (triton/metrics.py). So: no gauge update while idle, and the
idle state is shown before the last FINAL, not after it.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

from inflight.engine.kv_cache import KVStats
from inflight.engine.loop import EngineStats
from inflight.frontends.triton import metrics as metrics_mod
from inflight.frontends.triton.metrics import Metrics
from inflight.frontends.triton.serving import TritonCall

EVENTS: list[tuple[str, Any]] = []  # ("set", (labels, value)) / ("send", flags), in order


class FakeMetric:
    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels

    def set(self, v: float) -> None:
        EVENTS.append(("set", (self.labels.get("kv_cache_block_type"), v)))

    def increment(self, v: float) -> None:
        EVENTS.append(("inc", v))

    def observe(self, v: float) -> None:
        EVENTS.append(("observe", v))


class FakeFamily:
    GAUGE, COUNTER, HISTOGRAM = 0, 1, 2

    def __init__(self, name: str, description: str, kind: int) -> None:
        self.name = name

    def Metric(self, labels: dict[str, str], buckets: Any = None) -> FakeMetric:  # noqa: N802
        return FakeMetric(labels)


class FakeSender:
    def send(self, response: Any = None, flags: int = 0) -> None:
        EVENTS.append(("send", flags))


def stats(used: int) -> EngineStats:
    kv = KVStats(total_blocks=10, free_blocks=10 - used, used_blocks=used, cached_blocks=0,
                 reused_blocks_total=0, lookup_blocks_total=0)
    return EngineStats(0, 1 if used else 0, 5, kv, 0, time.monotonic())


class FakeLoop:
    def __init__(self) -> None:
        self.stats = stats(0)
        self.now = stats(0)
        self.engine = SimpleNamespace(cfg=SimpleNamespace(max_batch_size=4, block_size=16))

    def fresh_stats(self) -> EngineStats:
        return self.now


def kv_used_sets() -> list[float]:
    return [e[1] for k, e in EVENTS if k == "set" and e[0] == "used"]


def start_metrics() -> tuple[FakeLoop, Any, Metrics]:
    EVENTS.clear()
    loop = FakeLoop()
    pb = SimpleNamespace(MetricFamily=FakeFamily, TRITONSERVER_RESPONSE_COMPLETE_FINAL=1)
    return loop, pb, Metrics(pb, "engine", "1", loop)  # type: ignore[arg-type]


def test_idle_shown_before_the_last_final_and_nothing_while_idle(monkeypatch) -> None:
    monkeypatch.setattr(metrics_mod, "REPORT_INTERVAL_S", 0.01)
    loop, pb, m = start_metrics()
    try:
        calls = []
        for _ in range(2):
            m.call_opened()
            calls.append(TritonCall(FakeSender(), None, remaining=1, observer=m))
        loop.stats = stats(3)  # busy: the reporter shows it
        deadline = time.monotonic() + 5
        while 3 not in kv_used_sets():
            assert time.monotonic() < deadline, "the reporter never showed the busy state"
            time.sleep(0.005)
        loop.now = stats(0)  # both requests' blocks freed by the time their finals go out
        calls[0].send(pb, "a", finishes=1)  # another call still open: no idle refresh
        assert kv_used_sets()[-1] == 3
        calls[1].send(pb, "b", finishes=1)
        sends = [i for i, (k, _) in enumerate(EVENTS) if k == "send"]
        idle = [i for i, (k, e) in enumerate(EVENTS) if k == "set" and e == ("used", 0)]
        assert idle and idle[-1] < sends[-1], "the idle state must be shown before the last FINAL"
        after = len(EVENTS)
        loop.stats = stats(7)  # whatever the engine snapshot says now, the model is idle
        time.sleep(0.1)  # ten reporter intervals
        assert EVENTS[after:] == [], "metric IPC while no request is in flight"
    finally:
        m.close()


def test_gate_serializes_the_reporter_with_the_last_final(monkeypatch) -> None:
    """The reporter never updates a gauge between the idle refresh and the FINAL send."""
    monkeypatch.setattr(metrics_mod, "REPORT_INTERVAL_S", 0.0005)
    loop, pb, m = start_metrics()
    stop = threading.Event()

    def churn() -> None:  # the engine thread: a new snapshot all the time
        i = 0
        while not stop.is_set():
            i += 1
            loop.stats = stats(1 + i % 5)

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(200):
            m.call_opened()
            TritonCall(FakeSender(), None, remaining=1, observer=m).send(pb, "x", finishes=1)
            last_send = max(i for i, (k, _) in enumerate(EVENTS) if k == "send")
            # between the idle refresh and this FINAL, and after it, no busy gauge
            tail = [e for k, e in EVENTS[last_send:] if k == "set"]
            assert tail == [], tail
    finally:
        stop.set()
        t.join()
        m.close()


class GoneSwitch:
    """A ServerLink whose answer the test flips."""

    def __init__(self) -> None:
        self.up = True

    def alive(self, fresh: bool = False) -> bool:
        return self.up


def test_the_reporter_stops_once_tritonserver_is_gone(monkeypatch) -> None:
    """A gauge update to a server that is gone never returns and keeps the stub alive (it
    holds the GIL and the mutex the stub's own exit needs): none once it is gone."""
    monkeypatch.setattr(metrics_mod, "REPORT_INTERVAL_S", 0.01)
    EVENTS.clear()
    loop, server = FakeLoop(), GoneSwitch()
    pb = SimpleNamespace(MetricFamily=FakeFamily, TRITONSERVER_RESPONSE_COMPLETE_FINAL=1)
    m = Metrics(pb, "engine", "1", loop, server=server)  # type: ignore[arg-type]
    try:
        m.call_opened()  # a request in flight: the reporter refreshes on every change
        loop.stats = stats(3)
        deadline = time.monotonic() + 5
        while 3 not in kv_used_sets():
            assert time.monotonic() < deadline, "the reporter never showed the busy state"
            time.sleep(0.005)
        server.up = False
        after = len(EVENTS)
        loop.stats = stats(5)
        m._thread.join(5)
        assert not m._thread.is_alive(), "the reporter still runs with tritonserver gone"
        assert EVENTS[after:] == [], "metric IPC after tritonserver was gone"
    finally:
        m.close()
