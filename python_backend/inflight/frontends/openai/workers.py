"""Running the HTTP server: one process, or N worker processes sharing the listening socket.

A worker is a whole front end (its own event loop, ASGI app, gRPC channels to Triton and
model registry), so the per-chunk work (a gRPC read, an SSE write) spreads over cores. The
parent binds the port and supervises the workers (uvicorn's ``Multiprocess``: SIGINT/SIGTERM
stop them, a crashed worker is replaced); each worker also watches its parent and stops when
the parent is gone (SIGKILL included), so no worker outlives it.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from inflight.frontends.openai.config import OpenAIConfig

log = logging.getLogger(__name__)
PARENT_POLL_S = 0.5
MAX_DEFAULT_WORKERS = 4


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_workers(cores: int | None = None) -> int:
    """A quarter of the usable cores, at least 1 and at most 4: tritonserver, its python stubs
    and the engine process need the other cores. 1 on the 2-core dev machine, 4 on the 16-core
    H200 host; one worker streams several thousand chunks a second (docs/performance.md)."""
    n = usable_cores() if cores is None else cores
    return max(1, min(MAX_DEFAULT_WORKERS, n // 4))


class AppFactory:
    """What uvicorn calls in each worker to build the app (picklable: the config travels to
    spawned workers in memory, the API key included, never on a command line)."""

    def __init__(self, cfg: OpenAIConfig, watch_parent: bool) -> None:
        self.cfg = cfg
        self.watch_parent = watch_parent

    def __call__(self) -> Any:
        from inflight.frontends.openai.app import build_app

        if self.watch_parent:  # a spawned worker: logging as `inflight openai` sets it up
            from inflight import env

            logging.basicConfig(level=env.log_level(),
                                format="%(levelname)s %(name)s: %(message)s")
            exit_with_parent()
        return build_app(self.cfg)


def exit_with_parent(poll_s: float = PARENT_POLL_S) -> threading.Thread:
    """SIGTERM this process (uvicorn's graceful shutdown: in-flight streams are closed, which
    cancels their Triton requests) once the parent process is gone."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(poll_s)
        log.warning("worker %d: parent %d is gone; shutting down", os.getpid(), parent)
        os.kill(os.getpid(), signal.SIGTERM)

    t = threading.Thread(target=watch, name="parent-watch", daemon=True)
    t.start()
    return t


def serve(cfg: OpenAIConfig) -> None:
    """Run until SIGINT/SIGTERM: in this process (``workers == 1``) or as a supervisor of
    ``cfg.workers`` worker processes."""
    import uvicorn

    config = uvicorn.Config(
        AppFactory(cfg, watch_parent=cfg.workers > 1), factory=True, host=cfg.host,
        port=cfg.port, workers=cfg.workers, log_level=cfg.log_level, access_log=False,
        backlog=4096, timeout_keep_alive=30, timeout_graceful_shutdown=10)
    if cfg.workers == 1:
        uvicorn.Server(config).run()
        return
    from uvicorn.supervisors import Multiprocess

    log.info("%d workers on %s:%d", cfg.workers, cfg.host, cfg.port)
    sock = config.bind_socket()
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()
