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
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from inflight import env
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


class EngineWatcher:
    """Waits for the engine loop to stop; after a fault, unloads the model (see above)."""

    def __init__(self, pb: Any, model_name: str, loop: Any) -> None:
        """``loop``: an EngineLoop or an EngineClient (the engine process)."""
        self.pb = pb
        self.model_name = model_name
        self.loop = loop
        self.closing = False
        self.unload_error: str | None = None
        self._thread = threading.Thread(target=self._run, name="inflight-health", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.loop.wait_stopped()
        if self.closing or self.loop.dead_reason is None:
            return  # a normal shutdown
        log.error("model %s: %s; taking it out of service", self.model_name, self.loop.dead_reason)
        try:
            self.pb.unload_model(self.model_name)
        except Exception as e:  # noqa: BLE001 - Triton refuses unless model control is explicit
            self.unload_error = str(e)
            log.error("model %s: cannot unload itself (%s); it answers UNAVAILABLE until "
                      "tritonserver is restarted", self.model_name, e)

    def close(self) -> None:
        self.closing = True
