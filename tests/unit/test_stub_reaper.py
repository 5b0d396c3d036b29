"""frontends/triton/stub_reaper.py: a stub without an engine process (bls, unary, the
pre/postprocessing models, engine_process=off) that outlives tritonserver, stuck in a call
that holds the GIL, is SIGKILLed by its reaper; a stub that exits by itself is left alone;
the reaper never outlives its stub."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from inflight.frontends.triton.stub_reaper import StubReaper, reaper_for_this_stub
from inflight.testing.procs import DEADLINE_S, gone, wait_for

# a "stub": starts its reaper for the given server, prints the reaper's pid, then either
# blocks holding the GIL (stuck) or exits once the server is gone (healthy)
STUB = """
import ctypes, sys, time
from inflight.engine.process import start_time
from inflight.frontends.triton.stub_reaper import StubReaper
r = StubReaper(int(sys.argv[1]), grace_s=float(sys.argv[2]))
print(r.proc.pid, flush=True)
if sys.argv[3] == "stuck":
    while True:
        ctypes.PyDLL(None).pause()  # PyDLL: the GIL stays held, no Python thread can run
while start_time(int(sys.argv[1])) is not None:  # None: gone or a zombie
    time.sleep(0.05)
sys.exit(0)
"""


@contextmanager
def _running(kind: str, grace: str = "0.5") -> Iterator[tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], int]]:
    """(server, stub, reaper pid); both processes killed at the end whatever happened."""
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    stub = subprocess.Popen([sys.executable, "-c", STUB, str(server.pid), grace, kind],
                            stdout=subprocess.PIPE)
    try:
        assert stub.stdout is not None
        reaper = int(stub.stdout.readline() or 0)
        assert reaper, "the stub did not start its reaper"
        yield server, stub, reaper
    finally:
        for p in (server, stub):
            p.kill()
            p.wait()


@pytest.mark.parametrize("kind,grace,code", [("stuck", "0.5", -signal.SIGKILL), ("healthy", "30", 0)])
def test_a_stuck_stub_is_killed_and_a_healthy_one_left_alone(kind: str, grace: str, code: int) -> None:
    """Stuck (GIL held): SIGKILLed once the server is gone; healthy: exits by itself (code 0)
    within the grace. Either way the reaper ends with its stub."""
    with _running(kind, grace) as (server, stub, reaper):
        assert stub.poll() is None and not gone(reaper)
        server.kill()
        server.wait()
        assert stub.wait(DEADLINE_S) == code
        wait_for(lambda: gone(reaper), "the reaper to end with its stub")


def test_stop_ends_the_reaper_and_no_reaper_outside_a_stub() -> None:
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        r = StubReaper(server.pid)
        assert r.proc is not None and r.proc.poll() is None
        pid = r.proc.pid

        def named() -> bool:  # it names itself first thing (child_boot)
            with open(f"/proc/{pid}/comm") as f:
                return f.read().strip() == "inflight-reaper"

        wait_for(named, "the reaper to name itself")
        r.stop()
        assert r.proc.poll() is not None
    finally:
        server.kill()
        server.wait()
    assert reaper_for_this_stub() is None  # pytest's parent is not tritonserver
    if os.path.isdir("/proc/self"):
        assert StubReaper(2**22 + 12345).proc is None  # no such server: nothing to watch


def test_a_reaper_that_cannot_start_does_not_fail_the_model(monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """Inside a stub (parent named tritonserver) with no python executable to start it: a
    warning, no reaper, no exception (the model still loads)."""
    import builtins

    from inflight.engine import client
    from inflight.engine.client import EngineStartError

    real_open = builtins.open

    def fake_open(path, *a, **kw):  # type: ignore[no-untyped-def]
        if path == f"/proc/{os.getppid()}/comm":
            import io
            return io.StringIO("tritonserver\n")
        return real_open(path, *a, **kw)

    def no_python() -> str:
        raise EngineStartError("no python3.11 executable found near /x")

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(client, "python_executable", no_python)
    assert reaper_for_this_stub() is None
    assert "stub reaper not started (EngineStartError" in caplog.text
