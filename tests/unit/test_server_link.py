"""ServerLink (triton/health.py): whether the stub's tritonserver still runs, and the health
watcher that must not ask a server that is gone to unload the model.

Every call into Triton waits for the server's reply without a timeout (python backend 2.51),
and ``unload_model`` waits holding the GIL and the mutex the stub's own "parent died" exit
needs: one such call after the server ended left the `engine` stub alive for good (the engine
process saw the server gone and exited, the watcher took that for an engine fault)."""

from __future__ import annotations

import subprocess
import sys
import threading

from inflight.frontends.triton.health import EngineWatcher, ServerLink
from inflight.testing.procs import DEADLINE_S, wait_for


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])


def test_alive_until_the_server_ends_even_before_it_is_reaped() -> None:
    server = _sleeper()
    try:
        link = ServerLink(server.pid)  # not our parent here: the /proc start time decides
        assert link.alive(fresh=True) and link.alive()
        server.kill()  # not reaped yet: a zombie counts as gone, as for the engine process
        wait_for(lambda: not link.alive(fresh=True), "a killed, unreaped server to count as gone")
        server.wait()
        assert not link.alive() and not link.alive(fresh=True)  # once gone, always gone
    finally:
        server.kill()
        server.wait()


def test_our_own_parent_is_alive() -> None:
    link = ServerLink()  # pytest's parent, as a stub's is tritonserver
    assert link.alive() and link.alive(fresh=True)


class StoppedLoop:
    """An engine that ended with a fault (dead_reason), as EngineClient after its process exit."""

    def __init__(self) -> None:
        self.dead_reason: str | None = None
        self.stopped = threading.Event()

    def wait_stopped(self, timeout: float | None = None) -> bool:
        return self.stopped.wait(timeout)

    def stop(self, reason: str) -> None:
        self.dead_reason = reason
        self.stopped.set()


class BlockingPb:
    """unload_model blocks forever (the 2.51 stub with its server gone) unless it is up."""

    def __init__(self, server_up: bool) -> None:
        self.server_up = server_up
        self.unloads: list[str] = []
        self.forever = threading.Event()

    def unload_model(self, name: str) -> None:
        self.unloads.append(name)
        if not self.server_up:
            self.forever.wait()
        raise RuntimeError("explicit model control mode is required")  # what 'none' mode says


def test_watcher_does_not_ask_a_server_that_is_gone() -> None:
    server = _sleeper()
    link = ServerLink(server.pid)
    server.kill()
    server.wait()
    pb, loop = BlockingPb(server_up=False), StoppedLoop()
    watcher = EngineWatcher(pb, "engine", loop, link)
    try:
        loop.stop("engine process exited unexpectedly (code 2)")
        watcher._thread.join(DEADLINE_S)
        assert not watcher._thread.is_alive(), "the watcher is stuck in unload_model"
        assert pb.unloads == []
    finally:
        pb.forever.set()


def test_watcher_still_unloads_after_a_fault_while_the_server_runs() -> None:
    pb, loop = BlockingPb(server_up=True), StoppedLoop()
    watcher = EngineWatcher(pb, "engine", loop, ServerLink())
    loop.stop("engine step failed: InjectedFault")
    watcher._thread.join(DEADLINE_S)
    assert pb.unloads == ["engine"]
    assert watcher.unload_error == "explicit model control mode is required"
