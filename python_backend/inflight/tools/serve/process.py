"""Run one ``tritonserver`` process: start, wait until ready, stop.

>>> with TritonServer() as server:                    # doctest: +SKIP
...     urls = server.start("model_repository", http_port=0, grpc_port=0, metrics_port=0)
...     server.wait_ready(timeout=120)
...     print(urls.http_url, urls.grpc_url)

Ports given as 0 are replaced by free ports picked before launch. Triton's log (stdout and
stderr merged) goes to our stdout, or to ``log_path`` when one is given.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from inflight.errors import InflightError
from inflight.tools.serve.binary import TritonServerBinary, find_tritonserver

_PR_SET_PDEATHSIG = 1


class TritonServerError(InflightError, RuntimeError):
    """tritonserver failed to start, exited early, or did not become ready in time."""


@dataclass(frozen=True)
class ServerEndpoints:
    """Where a started server listens. ``host`` is the address clients connect to."""

    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def http_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``host:port``, the form ``tritonclient.grpc`` takes."""
        return f"{_url_host(self.host)}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.metrics_port}/metrics"


class TritonServer:
    """One tritonserver child process.

    ``die_with_parent`` asks Linux to SIGTERM the server when the thread that started it
    exits, so a killed launcher leaves no orphan server; start it from a long-lived thread.
    """

    def __init__(
        self,
        binary: TritonServerBinary | None = None,
        *,
        log_path: str | Path | None = None,
        die_with_parent: bool = True,
    ) -> None:
        self.binary = binary if binary is not None else find_tritonserver()
        self.log_path = Path(log_path) if log_path is not None else None
        self.die_with_parent = die_with_parent
        self.endpoints: ServerEndpoints | None = None
        self.command: list[str] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._reaped = False
        self.shm_prefix: str | None = None  # the python backend's shared-memory name prefix
        self.reaped: list[int] = []  # group members (stubs) still alive after the server exited
        self.removed_shm: list[str] = []  # /dev/shm segments the server left behind

    # -- lifecycle -------------------------------------------------------------------------
    def start(
        self,
        model_repository: str | Path,
        *,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        host: str = "127.0.0.1",
        log_verbose: int = 0,
        model_control_mode: str = "none",
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> ServerEndpoints:
        """Launch tritonserver on ``model_repository``; returns at once (see wait_ready).

        Ports given as 0 become free ports. Flags in ``extra_args`` win over the defaults
        set here (same flag name); ``env`` adds environment variables for the server.
        """
        if self._proc is not None:
            raise TritonServerError("this TritonServer was already started")
        self.command, self.endpoints = self.build_command(
            model_repository,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            host=host,
            log_verbose=log_verbose,
            model_control_mode=model_control_mode,
            extra_args=extra_args,
        )
        self._proc = self._spawn(self.command, self.binary.environ(env))
        return self.endpoints

    def build_command(
        self,
        model_repository: str | Path,
        *,
        http_port: int = 8000,
        grpc_port: int = 8001,
        metrics_port: int = 8002,
        host: str = "127.0.0.1",
        log_verbose: int = 0,
        model_control_mode: str = "none",
        extra_args: Sequence[str] = (),
    ) -> tuple[list[str], ServerEndpoints]:
        """The argv :meth:`start` runs and the endpoints it will serve (nothing launched)."""
        repo = Path(model_repository).expanduser().resolve()
        if not repo.is_dir():
            raise TritonServerError(f"model repository {repo} is not a directory")
        # Ports and address given in extra_args (tritonserver spelling) win.
        host = _flag_value(extra_args, "--http-address") or host
        wanted = [
            int(_flag_value(extra_args, f"--{name}-port") or default)
            for name, default in (
                ("http", http_port),
                ("grpc", grpc_port),
                ("metrics", metrics_port),
            )
        ]
        ports = _resolve_ports(host, (wanted[0], wanted[1], wanted[2]))
        endpoints = ServerEndpoints(_connect_host(host), *ports)
        defaults = self._default_args(
            repo, host, ports, log_verbose, model_control_mode, extra_args
        )
        return [str(self.binary.path), *defaults, *extra_args], endpoints

    def _default_args(
        self,
        repo: Path,
        host: str,
        ports: tuple[int, int, int],
        log_verbose: int,
        model_control_mode: str,
        extra_args: Sequence[str],
    ) -> list[str]:
        defaults = [
            f"--model-repository={repo}",
            *self.binary.server_args(),
            f"--http-address={host}",
            f"--grpc-address={host}",
            f"--metrics-address={host}",
            f"--http-port={ports[0]}",
            f"--grpc-port={ports[1]}",
            f"--metrics-port={ports[2]}",
            f"--model-control-mode={model_control_mode}",
        ]
        if log_verbose:
            defaults.append(f"--log-verbose={log_verbose}")
        if not gpu_present():
            defaults += CPU_ONLY_ARGS
        if not any("shm-region-prefix-name" in a for a in extra_args):
            # Python-backend shared-memory regions are named by this prefix: a unique one
            # lets several servers (tests, benchmarks) run side by side.
            prefix = f"inflight_{os.getpid()}_{secrets.token_hex(4)}_"
            defaults.append(f"--backend-config=python,shm-region-prefix-name={prefix}")
            self.shm_prefix = prefix
        overridden = {_flag_name(a) for a in extra_args if a.startswith("--")} - {
            "--backend-config"
        }
        return [a for a in defaults if _flag_name(a) not in overridden]

    def _spawn(self, command: list[str], environ: dict[str, str]) -> subprocess.Popen[bytes]:
        stdout: IO[bytes] | int | None = None  # inherit our stdout
        if self.log_path is not None:
            self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in _cleanup
            stdout = self._log_file
        else:
            sys.stdout.flush()
        try:
            return subprocess.Popen(
                command,
                env=environ,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                # Own process group: a terminal's Ctrl-C reaches the launcher only, which
                # forwards it once (a second signal makes tritonserver skip its drain).
                start_new_session=True,
                preexec_fn=parent_death_signal() if self.die_with_parent else None,
            )
        except OSError as exc:
            self._cleanup()
            raise TritonServerError(f"cannot run {command[0]}: {exc}") from exc

    def wait_ready(self, timeout: float = 120.0, interval: float = 0.1) -> None:
        """Poll ``GET /v2/health/ready`` until it answers 200.

        Raises :class:`TritonServerError` (with the log tail when logging to a file) if the
        server exits first or ``timeout`` seconds pass.
        """
        proc, endpoints = self._require_started()
        deadline = time.monotonic() + timeout
        url = f"{endpoints.http_url}/v2/health/ready"
        while True:
            code = proc.poll()
            if code is not None:
                raise TritonServerError(
                    f"tritonserver exited with code {code} before it was ready{self._log_hint()}"
                )
            if _http_ok(url):
                return
            if time.monotonic() >= deadline:
                raise TritonServerError(
                    f"tritonserver not ready after {timeout:.0f}s ({url}){self._log_hint()}"
                )
            time.sleep(interval)

    def is_ready(self) -> bool:
        return (
            self._proc is not None
            and self._proc.poll() is None
            and self.endpoints is not None
            and _http_ok(f"{self.endpoints.http_url}/v2/health/ready")
        )

    def send_signal(self, signum: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signum)

    def poll(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def wait(self, timeout: float | None = None) -> int:
        proc, _ = self._require_started()
        code = proc.wait(timeout)
        self._cleanup()
        return code

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (Triton drains in-flight requests), then SIGKILL after ``timeout`` s; then
        reap what the server left: python stubs still alive in its process group (Triton
        orphans a stub it could not unload) and its shared-memory segments.

        Returns the exit code (negative: killed by that signal), None if never started.
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid)
                proc.wait()
        self._cleanup()
        return proc.returncode

    def _reap(self, pgid: int, grace: float = 5.0) -> None:
        """After the server exited: SIGKILL its group's survivors, remove its shm segments."""
        deadline = time.monotonic() + grace
        while _group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)  # stubs exit on their own once they see the server gone
        self.reaped = sorted(_group_members(pgid))
        if self.reaped:
            left = {pid: _describe(pid) for pid in self.reaped}  # before they are killed
            _kill_group(pgid)
            deadline = time.monotonic() + grace  # SIGKILL is asynchronous: return once dead
            while _group_members(pgid) and time.monotonic() < deadline:
                time.sleep(0.01)
            print(f"inflight: tritonserver left {len(self.reaped)} process(es) behind "
                  f"({'; '.join(f'{pid}: {what}' for pid, what in left.items())}); killed",
                  file=sys.stderr)
        if self.shm_prefix:
            self.removed_shm = _remove_shm(self.shm_prefix)

    def logs(self) -> str:
        """The server log so far (only when started with ``log_path``)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- helpers ---------------------------------------------------------------------------
    def _require_started(self) -> tuple[subprocess.Popen[bytes], ServerEndpoints]:
        if self._proc is None or self.endpoints is None:
            raise TritonServerError("tritonserver was not started (call start() first)")
        return self._proc, self.endpoints

    def _log_hint(self, lines: int = 30) -> str:
        if self.log_path is None:
            return " (its log is above)"
        tail = "\n".join(self.logs().splitlines()[-lines:])
        return f"; last log lines ({self.log_path}):\n{tail}"

    def _cleanup(self) -> None:
        if self._proc is not None and self._proc.returncode is not None and not self._reaped:
            self._reaped = True
            self._reap(self._proc.pid)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


# Without a GPU these avoid tritonserver's alarming but harmless NVML/DCGM and pinned-memory
# lines; two remain that no flag turns off ("CudaDriverHelper has not been initialized",
# "unable to create stream for ensemble: CUDA driver version is insufficient"): see README.
CPU_ONLY_ARGS = ["--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0",
                 "--cuda-memory-pool-byte-size=0:0"]


def gpu_present() -> bool:
    """An NVIDIA driver is loaded (its control device exists); cheap, no CUDA init."""
    return Path("/dev/nvidiactl").exists()


def _flag_name(arg: str) -> str:
    return arg.split("=", 1)[0]


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    """The last value of ``flag`` in ``args`` (``--flag=v`` or ``--flag v``), else None."""
    value = None
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
        elif arg == flag and i + 1 < len(args):
            value = args[i + 1]
    return value


def _connect_host(bind_host: str) -> str:
    """Bind-all addresses are reached through loopback."""
    return {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(bind_host, bind_host)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _resolve_ports(host: str, ports: tuple[int, int, int]) -> tuple[int, int, int]:
    """Replace each 0 with a distinct free port (held open together, so no repeats)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    bind_host = _connect_host(host)
    sockets: list[socket.socket] = []
    try:
        resolved = []
        for port in ports:
            if port:
                resolved.append(port)
                continue
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((bind_host, 0))
            resolved.append(sock.getsockname()[1])
        return resolved[0], resolved[1], resolved[2]
    finally:
        for sock in sockets:
            sock.close()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


def _describe(pid: int) -> str:
    """A left-over process in a line: its python stub's model (from the model.py path in its
    arguments) or its command, and the kernel function it sleeps in (/proc/PID/wchan)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        wchan = Path(f"/proc/{pid}/wchan").read_text().strip()
    except OSError:
        return "exited meanwhile"
    text = [a.decode(errors="replace") for a in args if a] or [f"[{_comm(pid)}]"]
    model = next((a.rsplit("/", 3)[-3] for a in text if a.endswith("/model.py")), None)
    where = "running" if wchan in ("", "0") else f"sleeping in {wchan}"
    return f"{'stub of model ' + repr(model) if model else ' '.join(text)[:120]}, {where}"


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def _group_members(pgid: int) -> set[int]:
    """Live processes (not zombies) whose process group is ``pgid``, from /proc (Linux)."""
    members = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.add(int(d.name))
    return members


def _remove_shm(prefix: str) -> list[str]:
    """Remove /dev/shm segments named ``prefix*``; returns their names."""
    removed = []
    for path in Path("/dev/shm").glob(f"{prefix}*"):
        try:
            path.unlink()
            removed.append(path.name)
        except OSError:
            pass
    return sorted(removed)


def _kill_group(pid: int) -> None:
    """SIGKILL the server's process group (it leads it): Python backend stubs go too."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that sets PR_SET_PDEATHSIG=SIGTERM (Linux); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork
    except (OSError, AttributeError):
        return None

    def set_pdeathsig() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    return set_pdeathsig
