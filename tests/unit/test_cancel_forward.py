"""Postprocessing forwards an ensemble's cancellation to the engine (no server: a fake pb)."""

from __future__ import annotations

from typing import Any

import numpy as np
from inflight.triton.cancel_forward import MAX_TRACKED, CancelForwarder, stop_engine_request


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


def test_cancelled_step_stops_exactly_that_engine_request_once() -> None:
    pb, clock = FakePb(), Clock()
    fwd = CancelForwarder(pb, "my_engine", poll_s=0.1, now=clock)
    assert fwd.cancelled(FakeRequest(True), step(7))
    assert len(pb.stops) == 1
    model, rid, inputs = pb.stops[0]
    assert model == "my_engine" and rid == ""
    assert inputs["stop"].tolist() == [[True]] and inputs["engine_request_key"].tolist() == [[7]]
    # later steps of the same request: refused without another poll or stop
    later = FakeRequest(True)
    assert fwd.cancelled(later, step(7)) and later.polls == 0 and len(pb.stops) == 1


def test_polls_at_most_once_per_interval_per_request() -> None:
    pb, clock = FakePb(), Clock()
    fwd = CancelForwarder(pb, "engine", poll_s=0.1, now=clock)
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
    fwd = CancelForwarder(pb, "engine")
    alone = FakeRequest(True)
    assert not fwd.cancelled(alone, {"output_ids": np.array([[[1, 2]]], dtype=np.int32)})
    final = FakeRequest(True)
    assert not fwd.cancelled(final, step(3, finish_reason=np.array([[b"length"]], dtype=object)))
    assert alone.polls == final.polls == 0 and pb.stops == []


def test_tracking_is_bounded() -> None:
    pb, clock = FakePb(), Clock()
    fwd = CancelForwarder(pb, "engine", now=clock)
    for key in range(MAX_TRACKED + 50):
        fwd.cancelled(FakeRequest(False), step(key))
    assert len(fwd._polled) == MAX_TRACKED
    assert 0 not in fwd._polled and MAX_TRACKED + 49 in fwd._polled


def test_stop_by_client_id_for_bls() -> None:
    pb = FakePb()
    stop_engine_request(pb, "engine", request_id="bls-x-3")
    (model, rid, inputs), = pb.stops
    assert rid == "bls-x-3" and "engine_request_key" not in inputs and inputs["stop"].all()
