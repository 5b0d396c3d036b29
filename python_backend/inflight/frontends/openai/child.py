"""The OpenAI server as a child process of ``inflight serve --openai-port``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request

from inflight.frontends.openai.server import child_env, frontend_argv
from inflight.tools.serve.process import parent_death_signal

READY_TIMEOUT_S = 120.0


class OpenAIChild:
    """``python -m inflight.frontends.openai`` against the launcher's tritonserver."""

    def __init__(self, args: argparse.Namespace, grpc_url: str) -> None:
        self.port = args.openai_port
        self.host = args.host
        cmd = [sys.executable, "-m", "inflight.frontends.openai", "--triton-url", grpc_url,
               "--host", args.host, "--port", str(args.openai_port), *frontend_argv(args)]
        # SIGTERM (uvicorn's graceful stop, which stops its workers too) when the launcher
        # dies, SIGKILL included: like tritonserver, the front end never outlives it
        self.proc = subprocess.Popen(cmd, env={**os.environ, **child_env(args)},
                                     preexec_fn=parent_death_signal())

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> bool:
        """Polls ``/health`` until 200; False if the child exited or the time ran out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.2)
        return False

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
