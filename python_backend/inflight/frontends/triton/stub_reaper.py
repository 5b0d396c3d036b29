"""The stub reaper: a small child process that ends its python-backend stub if the stub
outlives tritonserver.

A stub thread caught in a call into a tritonserver that stopped answering (a response, an
``is_cancelled()`` poll, a metric update: 2.51's stub calls have no timeout) holds the GIL and
the mutex the stub's own exit needs, so the stub never exits and nothing inside it can run
to end it (triton/health.py ``ServerLink``; docs/reliability.md). The `engine` and `llm`
models' engine process ends such a stub (``engine_process`` on, engine/process.py
``end_stuck_parent``); every other stub starts this reaper: the `bls` and `unary` models
(their cancellation-poll threads), the pre/postprocessing models, and `engine`/`llm` with
``engine_process=off``.

The reaper is ``python -c BOOT SPEC`` (inflight/child_boot.py: SIGKILLed when the stub's
thread that started it ends, named ``inflight-reaper``), imports nothing heavy, and checks
every ``CHECK_S`` whether its stub is gone (then it exits) or tritonserver is gone (then
:func:`end_stuck_parent`: the stub has ``STUB_GRACE_S`` to exit by itself, else SIGKILL).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from typing import Any

from inflight.child_boot import boot_script
from inflight.engine.process import end_stuck_parent, start_time

log = logging.getLogger(__name__)

# a stub still alive this long after its tritonserver ended is stuck in a call to it (a
# healthy stub exits within ~0.3 s): the engine process or the reaper SIGKILLs it
STUB_GRACE_S = 2.0
CHECK_S = 0.25  # how often the reaper looks
BOOT = boot_script("'inflight-reaper'", "inflight.frontends.triton.stub_reaper:main")


class StubReaper:
    """Starts the reaper of this process (a stub) for the server ``server_pid`` (default: the
    parent, i.e. tritonserver); ``stop()`` at the model's finalize."""

    def __init__(self, server_pid: int | None = None, grace_s: float = STUB_GRACE_S) -> None:
        from inflight.engine.client import python_executable

        server = os.getppid() if server_pid is None else server_pid
        start = start_time(server)
        self.proc: subprocess.Popen[bytes] | None = None
        if start is None:  # no /proc (or the server is already gone): nothing to watch
            log.warning("stub reaper: cannot read /proc/%d; a stub stuck after its server "
                        "ends will not be ended", server)
            return
        spec = {"parent": os.getpid(), "sys_path": list(sys.path), "server": [server, start],
                "grace_s": grace_s}
        self.proc = subprocess.Popen([python_executable(), "-c", BOOT, json.dumps(spec)],
                                     stdin=subprocess.DEVNULL, close_fds=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def reaper_for_this_stub() -> StubReaper | None:
    """A reaper when this process is a python-backend stub (its parent is tritonserver);
    None elsewhere (the models' unit tests run them in pytest)."""
    try:
        with open(f"/proc/{os.getppid()}/comm") as f:
            parent = f.read().strip()
    except OSError:
        return None
    if parent != "tritonserver":
        return None
    try:
        return StubReaper()
    except Exception as e:  # noqa: BLE001 - a safety net must not fail the model's load
        log.warning("stub reaper not started (%s: %s): a stub stuck after its server ends "
                    "will not be ended", type(e).__name__, e)
        return None


def main(spec: dict[str, Any]) -> None:
    """The reaper's loop (in the child)."""
    logging.basicConfig(level=logging.INFO, format="[inflight reaper %(process)d] %(levelname)s %(message)s")
    parent = int(spec["parent"])
    server, start = (int(v) for v in spec["server"])
    while True:
        if os.getppid() != parent:  # the stub is gone: nothing left to do
            return
        if start_time(server) != start:
            end_stuck_parent(parent, float(spec["grace_s"]), "stub reaper")
            return
        time.sleep(CHECK_S)
