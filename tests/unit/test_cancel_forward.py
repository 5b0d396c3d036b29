"""Postprocessing forwards an ensemble's cancellation to the engine (no server: a fake pb)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
import pytest
from inflight.frontends.triton.cancel_forward import (
    MAX_TRACKED,
    CancelForwarder,
    StopSocket,
    send_stop,
)


class FakePb:
    def __init__(self) -> None:
        self.stops: list[tuple[str, str, dict[str, np.ndarray]]] = []

    def Tensor(self, name: str, arr: np.ndarray) -> tuple[str, np.ndarray]:  # noqa: N802
        return (name, arr)

    def InferenceRequest(self, model_name: str, request_id: str, inputs: list[Any],  # noqa: N802
                         requested_output_names: list[str]) -> Any:
        pb = self

        class Req:
            def exec(self, decoupled: bool) -> list[Any]:
                assert decoupled
                pb.stops.append((model_name, request_id, dict(inputs)))
                return []

        return Req()


class FakeRequest:
    def __init__(self, cancelled: bool) -> None:
        self._cancelled = cancelled
        self.polls = 0

    def is_cancelled(self) -> bool:
        self.polls += 1
        return self._cancelled


def step(key: int, **extra: np.ndarray) -> dict[str, np.ndarray]:
    return {"engine_request_key": np.array([[key]], dtype=np.uint64),
            "text_delta": np.array([[b"x"]], dtype=object), **extra}


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Engine:
    """A StopSocket under a unique engine model name, drained as the sender thread does."""

    def __init__(self) -> None:
        self.name = f"engine-{uuid.uuid4().hex[:8]}"
        self.socket = StopSocket(self.name)
        self.stops: list[int | str] = []

    def wait_stops(self, n: int) -> list[int | str]:
        deadline = time.monotonic() + 10
        while len(self.stops) < n:
            assert time.monotonic() < deadline, self.stops
            self.stops += self.socket.drain()
            time.sleep(0.001)
        return self.stops


@pytest.fixture()
def engine():
    e = Engine()
    yield e
    e.socket.close()


def test_cancelled_step_stops_exactly_that_engine_request_once(engine: Engine) -> None:
    pb, clock = FakePb(), Clock()
    fwd = CancelForwarder(engine.name, poll_s=0.1, now=clock)
    assert fwd.cancelled(FakeRequest(True), step(7))
    assert engine.wait_stops(1) == [7]
    # later steps of the same request: refused without another poll or stop
    later = FakeRequest(True)
    assert fwd.cancelled(later, step(7)) and later.polls == 0
    assert not fwd.cancelled(FakeRequest(False), step(8))
    time.sleep(0.05)
    assert engine.stops + engine.socket.drain() == [7]
    assert pb.stops == []  # no Triton (BLS) request at all


def test_stop_socket_carries_full_uint64_keys_and_client_ids(engine: Engine) -> None:
    import socket

    from inflight.frontends.triton.cancel_forward import stop_address

    send_stop(engine.name, "some-id")
    send_stop(engine.name, "unary--0")  # 8 bytes: still a client id, not a key
    send_stop(engine.name, 2**64 - 1)
    send_stop(engine.name, 0)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"untagged", stop_address(engine.name))  # malformed: ignored
    send_stop(engine.name, "last")
    assert engine.wait_stops(5) == ["some-id", "unary--0", 2**64 - 1, 0, "last"]
    assert engine.socket.drain() == []


def test_send_stop_without_a_listener_does_not_raise() -> None:
    send_stop(f"nobody-{uuid.uuid4().hex[:8]}", 5)


def test_polls_at_most_once_per_interval_per_request() -> None:
    pb, clock = FakePb(), Clock()
    fwd = CancelForwarder("engine", poll_s=0.1, now=clock)
    reqs = [FakeRequest(False) for _ in range(5)]
    for r in reqs:
        assert not fwd.cancelled(r, step(1))
        clock.t += 0.03
    assert [r.polls for r in reqs] == [1, 0, 0, 0, 1]  # t = 0, 0.03, 0.06, 0.09, 0.12
    other = FakeRequest(False)
    assert not fwd.cancelled(other, step(2)) and other.polls == 1  # each request on its own
    assert pb.stops == []


def test_standalone_and_final_steps_are_not_polled() -> None:
    pb = FakePb()
    fwd = CancelForwarder("engine")
    alone = FakeRequest(True)
    assert not fwd.cancelled(alone, {"output_ids": np.array([[[1, 2]]], dtype=np.int32)})
    final = FakeRequest(True)
    assert not fwd.cancelled(final, step(3, finish_reason=np.array([[b"length"]], dtype=object)))
    assert alone.polls == final.polls == 0 and pb.stops == []


def test_tracking_is_bounded() -> None:
    clock = Clock()
    fwd = CancelForwarder("engine", now=clock)
    for key in range(MAX_TRACKED + 50):
        fwd.cancelled(FakeRequest(False), step(key))
    assert len(fwd._polled) == MAX_TRACKED
    assert 0 not in fwd._polled and MAX_TRACKED + 49 in fwd._polled


def test_client_id_stops_for_bls(engine: Engine) -> None:
    send_stop(engine.name, "bls-x-3")
    assert engine.wait_stops(1) == ["bls-x-3"]


def test_many_streaming_requests_share_the_poll_budget() -> None:
    """Up to POLL_ALL streaming requests: each polled every poll_s; with more, the interval
    grows with the load (issue 13: one IPC round trip per response otherwise) but each is
    still polled at least once per POLL_CYCLE_S."""
    from inflight.frontends.triton.cancel_forward import POLL_ALL, POLL_CYCLE_S

    def run(n: int, dt: float = 0.05) -> list[int]:
        """Polls per request in seconds 1-4 (the first second measures the load)."""
        clock = Clock()
        fwd = CancelForwarder("engine", poll_s=0.1, now=clock)
        reqs = [FakeRequest(False) for _ in range(n)]
        before = []
        for i in range(round(4.0 / dt)):
            if i == round(1.0 / dt):
                before = [r.polls for r in reqs]
            for k, r in enumerate(reqs):
                assert not fwd.cancelled(r, step(k))
            clock.t += dt
        return [r.polls - b for r, b in zip(reqs, before)]

    few = run(POLL_ALL)  # every 0.1 s (every other response here): ~20-30 polls in 3 s
    assert min(few) >= 20
    many = run(10 * POLL_ALL)  # every POLL_CYCLE_S: 3 polls in 3 s
    assert all(2 <= p <= 4 for p in many), sorted(set(many))
    assert POLL_CYCLE_S == 1.0


def test_a_cancel_is_still_seen_under_load(engine: Engine) -> None:
    clock = Clock()
    fwd = CancelForwarder(engine.name, poll_s=0.1, now=clock)
    for _ in range(20):  # 640 requests streaming for 2 s
        for k in range(640):
            fwd.cancelled(FakeRequest(False), step(k))
        clock.t += 0.1
    victim, polled_at = FakeRequest(True), None
    for _ in range(11):  # the victim's responses for the next 1.1 s
        if fwd.cancelled(victim, step(5)):
            polled_at = clock.t
            break
        clock.t += 0.1
    assert polled_at is not None and polled_at <= 2.0 + 1.0 + 1e-9
    assert engine.wait_stops(1) == [5]
