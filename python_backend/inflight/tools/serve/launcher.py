"""``inflight serve``: start tritonserver on a model repository and supervise it.

Public API (re-exported here so callers need one import):

- :func:`find_tritonserver` -> :class:`TritonServerBinary` (path, backend_dir, env)
- :class:`TritonServer` (start / wait_ready / stop, context manager)
- :func:`add_serve_parser` / :func:`build_argparser` to register ``serve`` in a CLI,
  :func:`serve_main` the handler, :func:`main` for ``python -m inflight.tools.serve``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, MethodType
from typing import Any

from inflight.tools.serve.binary import (
    TritonServerBinary,
    TritonServerNotFoundError,
    find_tritonserver,
)
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

DESCRIPTION = """\
Start NVIDIA Triton Inference Server (tritonserver) on a model repository, wait until it
is ready, print its endpoints, and stay in the foreground: Ctrl-C / SIGTERM are passed to
the server, which drains in-flight requests and exits; `inflight serve` exits with its code.

tritonserver is found via $INFLIGHT_TRITONSERVER, then PATH (NGC containers), then the
nvidia-pytriton wheel (pip install 'inflight[serve]'). The server's Python backend runs this
Python environment, so model.py files can `import inflight` and `import torch`.
"""

EPILOG = """\
Any flag not listed above is handed to tritonserver unchanged; put them after `--` to be
explicit (`tritonserver --help` lists them).

examples:
  inflight serve ./model_repository
  inflight serve ./model_repository --host 0.0.0.0          # reachable from other hosts
  inflight serve ./repo --http-port 0 --grpc-port 0         # 0 = any free port
  inflight serve ./repo -- --log-info=false --exit-timeout-secs=10
  inflight serve ./repo --model-control-mode explicit -- --load-model=llm

then:  inflight-client "Hello" --url localhost:8001 --model ensemble
"""


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``serve`` on ``subparsers`` (from ``add_subparsers()``); ``func`` is set."""
    parser = subparsers.add_parser(
        "serve",
        help="start tritonserver on a model repository",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_serve_arguments(parser)
    return parser


def build_argparser(subparsers: Any | None = None) -> argparse.ArgumentParser:
    """The ``serve`` parser: on ``subparsers`` when given, else a standalone one."""
    if subparsers is not None:
        return add_serve_parser(subparsers)
    parser = argparse.ArgumentParser(
        prog="inflight serve",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_serve_arguments(parser)
    return parser


def _add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "repository",
        metavar="REPO",
        type=Path,
        help="Triton model repository (one directory per model)",
    )
    net = parser.add_argument_group("network")
    net.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s, this machine only; "
        "use 0.0.0.0 inside a container or to serve other hosts)",
    )
    net.add_argument(
        "--http-port",
        type=int,
        default=8000,
        metavar="PORT",
        help="HTTP/REST port, 0 = any free port (default: %(default)s)",
    )
    net.add_argument(
        "--grpc-port",
        type=int,
        default=8001,
        metavar="PORT",
        help="gRPC port, 0 = any free port (default: %(default)s)",
    )
    net.add_argument(
        "--metrics-port",
        type=int,
        default=8002,
        metavar="PORT",
        help="Prometheus metrics port, 0 = any free port (default: %(default)s)",
    )
    srv = parser.add_argument_group("server")
    srv.add_argument(
        "--model-control-mode",
        choices=("none", "poll", "explicit"),
        default="none",
        help="'none' (default) loads every model at start and refuses "
        "load/unload requests; 'explicit' lets clients load and unload "
        "models through the repository API: only on trusted networks",
    )
    srv.add_argument(
        "--log-verbose",
        type=int,
        default=0,
        metavar="N",
        help="tritonserver verbose log level (0 = off, 1 = requests, 2+ = more)",
    )
    srv.add_argument(
        "--ready-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="give up if the server is not ready after this long "
        "(default: %(default)s; large checkpoints load slowly)",
    )
    srv.add_argument(
        "--dry-run",
        action="store_true",
        help="print the tritonserver command and environment, do not start it",
    )
    _add_openai_arguments(parser)
    parser.set_defaults(func=serve_main, tritonserver_args=[])
    _pass_unknown_flags_through(parser)


def _add_openai_arguments(parser: argparse.ArgumentParser) -> None:
    """``--openai-port`` and the front end's options (frontends/openai/server.py)."""
    try:
        from inflight.frontends.openai.server import add_frontend_options
    except ImportError:  # the `openai` extra (uvicorn, pydantic) is not installed
        return
    group = parser.add_argument_group(
        "OpenAI API", "an OpenAI-compatible server (inflight openai) started once tritonserver "
        "is ready, stopped with it")
    add_frontend_options(group, port_flag="--openai-port")


def _pass_unknown_flags_through(parser: argparse.ArgumentParser) -> None:
    """Collect unrecognised arguments into ``tritonserver_args`` instead of failing.

    A parent CLI's ``parse_args`` calls a subparser's ``parse_known_args`` and errors on
    what it leaves over, so the pass-through has to happen here, on this parser.
    """
    original = parser.parse_known_args

    def parse_known_args(
        self: argparse.ArgumentParser,
        args: Sequence[str] | None = None,
        namespace: argparse.Namespace | None = None,
    ) -> tuple[argparse.Namespace, list[str]]:
        ns, unknown = original(args, namespace)
        ns.tritonserver_args = [*ns.tritonserver_args, *_drop_separator(unknown)]
        return ns, []

    parser.parse_known_args = MethodType(parse_known_args, parser)  # type: ignore[method-assign]


def _drop_separator(args: list[str]) -> list[str]:
    """argparse may leave the ``--`` that introduced pass-through flags; drop the first."""
    if "--" in args:
        i = args.index("--")
        return args[:i] + args[i + 1 :]
    return args


def serve_main(args: argparse.Namespace) -> int:
    """Run tritonserver in the foreground; returns its exit code (128+N if killed by N)."""
    try:
        binary = find_tritonserver()
    except TritonServerNotFoundError as exc:
        print(f"inflight serve: {exc}", file=sys.stderr)
        return 2
    server = TritonServer(binary)
    if args.dry_run:
        return _print_dry_run(server, args)
    received: list[int] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        server.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    openai: Any = None
    try:
        try:
            endpoints = server.start(args.repository, **_server_options(args))
        except TritonServerError as exc:
            print(f"inflight serve: {exc}", file=sys.stderr)
            return 1
        try:
            server.wait_ready(timeout=args.ready_timeout)
        except TritonServerError as exc:
            if server.poll() is None:
                print(f"inflight serve: {exc}; stopping it", file=sys.stderr)
                server.stop()
                return 1
            if not received:
                print(f"inflight serve: {exc}", file=sys.stderr)
        else:
            _print_ready(endpoints, server.pid)
            openai = _start_openai(args, endpoints.grpc_url)
        return _exit_code(server.wait())
    finally:
        if openai is not None:
            openai.stop()
        server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _start_openai(args: argparse.Namespace, grpc_url: str) -> Any:
    """The OpenAI front end as a child process when ``--openai-port`` is set, else None."""
    if getattr(args, "openai_port", None) is None:
        return None
    from inflight.frontends.openai.child import OpenAIChild

    child = OpenAIChild(args, grpc_url)
    if child.wait_ready():
        print(f"  OpenAI   {child.url}/v1   (chat/completions, completions, models)", flush=True)
    else:
        print("inflight serve: the OpenAI server did not become ready; tritonserver keeps "
              "running", file=sys.stderr, flush=True)
    return child


def _server_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "http_port": args.http_port,
        "grpc_port": args.grpc_port,
        "metrics_port": args.metrics_port,
        "host": args.host,
        "log_verbose": args.log_verbose,
        "model_control_mode": args.model_control_mode,
        "extra_args": list(args.tritonserver_args),
    }


def _print_dry_run(server: TritonServer, args: argparse.Namespace) -> int:
    try:
        command, _ = server.build_command(args.repository, **_server_options(args))
    except TritonServerError as exc:
        print(f"inflight serve: {exc}", file=sys.stderr)
        return 1
    print(f"# tritonserver from {server.binary.source}; environment on top of the current one:")
    for key, value in server.binary.env.items():
        print(f"export {key}={shlex.quote(value)}")
    print(" \\\n  ".join(shlex.quote(part) for part in command))
    return 0


def _print_ready(endpoints: ServerEndpoints, pid: int | None) -> None:
    models = _model_index(endpoints.http_url)
    lines = [
        "inflight serve: tritonserver is ready",
        f"  HTTP     {endpoints.http_url}   (POST /v2/models/<model>/generate_stream)",
        f"  gRPC     {endpoints.grpc_url}",
        f"  metrics  {endpoints.metrics_url}",
    ]
    if models:
        lines.append(f"  models   {', '.join(models)}")
    lines.append(f"  stop     Ctrl-C (or SIGTERM); tritonserver pid {pid}")
    print("\n".join(lines), flush=True)


def _model_index(http_url: str) -> list[str]:
    """``name (STATE)`` per model from the read-only repository index; [] on any error."""
    request = urllib.request.Request(f"{http_url}/v2/repository/index", data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=2.0) as response:
            entries = json.loads(response.read())
    except (OSError, ValueError):
        return []
    return [f"{e.get('name')} ({e.get('state', '?')})" for e in entries if isinstance(e, dict)]


def _exit_code(code: int) -> int:
    return 128 - code if code < 0 else code


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m inflight.tools.serve REPO [...]``: the same as ``inflight serve``."""
    args = build_argparser().parse_args(argv)
    return int(args.func(args))
