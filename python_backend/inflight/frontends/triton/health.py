"""Engine health for the Triton models: what happens after the engine loop died.

A step fault already ends every in-flight request with an error and makes new requests
fail with UNAVAILABLE (`EngineLoop`). The watcher here also takes the model out of
service so that ``/v2/models/<name>/ready`` turns red: it asks Triton to unload the model
(``pb_utils.unload_model``). Triton allows that only with ``--model-control-mode
explicit``; the recovery path is then ``POST /v2/repository/models/<name>/load`` (a fresh
engine). In ``none`` mode Triton refuses the unload: the model keeps answering UNAVAILABLE
and the operator restarts the server (see docs/reliability.md).

Fault injection (tests only, and only when the server runs with
INFLIGHT_ALLOW_FAULT_INJECTION=1): ``fault_injection_step`` in config.pbtxt makes the engine
raise at that step; ``fault_injection_step_delay_ms`` slows every step down.

Whether tritonserver itself still runs (``ServerLink``): a call into Triton made after the
server is gone never returns (python backend 2.51: no timeout on any stub -> server round
trip), and some of them keep the stub from ever exiting (see ServerLink). The threads of the
engine models ask it before they touch Triton.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from inflight import env
from inflight.engine.process import start_time
from inflight.errors import ConfigError

log = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """The step fault a test asked for."""


def check_fault_injection(step: int, delay_ms: int) -> None:
    if not env.allow_fault_injection():
        raise ConfigError("fault_injection_step / fault_injection_step_delay_ms are set but "
                          "INFLIGHT_ALLOW_FAULT_INJECTION=1 is not; fault injection is for tests")
    if step < 0 or delay_ms < 0:
        raise ConfigError(f"fault injection values must be >= 0, got {step}, {delay_ms}")


def fault_hook(loop: Any, step: int, delay_ms: int = 0) -> Callable[[], None]:
    """A hook for ``EngineLoop._fault_hook`` (and the engine process's loop): raises once the
    engine ran ``step`` steps (0: never) and sleeps ``delay_ms`` before every step (a slow
    device, for timing tests)."""
    check_fault_injection(step, delay_ms)

    def hook() -> None:
        if delay_ms:
            time.sleep(delay_ms / 1000.0)
        if step and loop.engine.num_steps >= step:
            raise InjectedFault(f"injected fault at engine step {loop.engine.num_steps}")

    return hook


SERVER_CHECK_S = 0.1  # ServerLink.alive(): /proc read at most this often (getppid every call)


class ServerLink:
    """Whether tritonserver, the parent of this python-backend stub, still runs.

    Every call a model makes into Triton (a response, ``is_cancelled()``, a metric update,
    ``unload_model``) is a round trip that the 2.51 stub waits for without a timeout, so once
    tritonserver is gone it never returns. Worse, two kinds of them keep the stub from ever
    exiting: ``unload_model`` and metric updates wait holding the GIL and the stub's
    stub-to-parent mutex, and ``is_cancelled()`` waits inside the stub's stub-to-parent thread;
    the stub's own "parent died" exit takes that mutex and joins that thread
    (``TerminateStubToParentQueueMonitor``), so it blocks for good. Seen: after an exit timeout
    the engine process saw the server gone and exited, the health watcher took that for an
    engine fault and called ``unload_model``; the `engine` stub slept in a futex until the
    launcher killed it. The engine models' own threads (health watcher, sender, metrics
    reporter) therefore ask ``alive()`` before they touch Triton, and stop once it is False.

    Gone means: the stub was re-parented (``getppid()`` changed: the server exited), or the
    server's pid no longer names the process that started at its start time (a zombie counts
    as gone: the engine process uses the same test, engine/process.py, so when it exits for
    this reason ``alive()`` already says so). Once gone, always gone.
    """

    def __init__(self, pid: int | None = None) -> None:
        self.pid = os.getppid() if pid is None else pid
        self._parent = self.pid == os.getppid()  # the stub's case: getppid() changes with it
        self.start = start_time(self.pid)  # None: no /proc to read, getppid() alone decides
        self._gone = False
        self._next_check = time.monotonic() + SERVER_CHECK_S

    def alive(self, fresh: bool = False) -> bool:
        """Cheap enough for every response: ``getppid()`` on each call, the /proc start time
        at most every SERVER_CHECK_S (and now when ``fresh``)."""
        if self._gone:
            return False
        if self._parent and os.getppid() != self.pid:
            self._gone = True
        elif self.start is not None and (fresh or time.monotonic() >= self._next_check):
            self._next_check = time.monotonic() + SERVER_CHECK_S
            self._gone = start_time(self.pid) != self.start
        return not self._gone


class EngineWatcher:
    """Waits for the engine loop to stop; after a fault, unloads the model (see above). When
    the engine ended because tritonserver is gone (the engine process watches it) there is
    nothing to unload, and asking would hang the stub for good (ServerLink)."""

    def __init__(self, pb: Any, model_name: str, loop: Any, server: ServerLink | None = None) -> None:
        """``loop``: an EngineLoop or an EngineClient (the engine process); ``server``: the
        stub's tritonserver (None: assumed alive, for tests)."""
        self.pb = pb
        self.model_name = model_name
        self.loop = loop
        self.server = server
        self.closing = False
        self.unload_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="inflight-health", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.loop.wait_stopped()
        if self.closing or self.loop.dead_reason is None:
            return  # a normal shutdown
        if self.server is not None and not self.server.alive(fresh=True):
            log.warning("model %s: %s; tritonserver is gone, nothing to unload", self.model_name,
                        self.loop.dead_reason)
            return
        log.error("model %s: %s; taking it out of service", self.model_name, self.loop.dead_reason)
        try:
            self.pb.unload_model(self.model_name)
        except Exception as e:  # noqa: BLE001 - Triton refuses unless model control is explicit
            self.unload_error = str(e)
            log.error("model %s: cannot unload itself (%s); it answers UNAVAILABLE until "
                      "tritonserver is restarted", self.model_name, e)

    def close(self) -> None:
        self.closing = True
