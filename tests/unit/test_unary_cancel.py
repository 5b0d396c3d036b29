"""The unary front model's cancellation watch without a server: a cancelled request's engine
request is stopped exactly once, by its client id, and the request learns it was stopped."""

from __future__ import annotations

import threading

from inflight.frontends.triton.unary_model import CancelWatch


class Sender:
    def __init__(self) -> None:
        self.cancelled = False
        self.polls = 0

    def is_cancelled(self) -> bool:
        self.polls += 1
        return self.cancelled


def test_a_cancelled_request_is_stopped_once_and_reported() -> None:
    stops: list[tuple[str, str]] = []
    watch = CancelWatch("tensorrt_llm", stop=lambda engine, rid: stops.append((engine, rid)))
    a, b = Sender(), Sender()
    watch._live.update({"unary--0": a, "unary-x-1": b})  # as watch() registers them, no thread
    assert watch.poll_once() == [] and stops == []
    a.cancelled = True
    assert watch.poll_once() == ["unary--0"]
    assert stops == [("tensorrt_llm", "unary--0")]
    assert watch.poll_once() == [] and a.polls == 2  # not polled (nor stopped) again
    assert watch.done("unary--0") is True and watch.done("unary-x-1") is False
    assert watch.poll_once() == [] and b.polls == 3  # done: no longer polled
    watch.close()


def test_the_watch_thread_stops_a_cancelled_request() -> None:
    stopped: list[str] = []
    hit = threading.Event()

    def stop(engine: str, rid: str) -> None:
        stopped.append(rid)
        hit.set()

    watch = CancelWatch("engine", poll_s=0.01, stop=stop)
    sender = Sender()
    sender.cancelled = True
    watch.watch("r1", sender)
    assert hit.wait(10)
    watch.close()
    assert stopped == ["r1"] and watch.done("r1") is True
