"""Launch and supervise tritonserver: ``inflight serve`` and the test/benchmark helpers."""

from __future__ import annotations

from inflight.tools.serve.binary import (
    TritonServerBinary,
    TritonServerNotFoundError,
    find_tritonserver,
)
from inflight.tools.serve.launcher import add_serve_parser, build_argparser, main, serve_main
from inflight.tools.serve.process import ServerEndpoints, TritonServer, TritonServerError

__all__ = [
    "ServerEndpoints",
    "TritonServer",
    "TritonServerBinary",
    "TritonServerError",
    "TritonServerNotFoundError",
    "add_serve_parser",
    "build_argparser",
    "find_tritonserver",
    "main",
    "serve_main",
]
