"""The engine process under a real tritonserver (issue 13): the `llm` model's engine runs in
a child of its stub; it must end with the server however the server ends (SIGTERM drain,
SIGKILL), leaving no process behind, and an in-flight request is served through it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")

from inflight.testing.streams import run_stream  # noqa: E402
from inflight.testing.tiny import tiny_model_dir  # noqa: E402
from inflight.tools.repo import build  # noqa: E402

DEADLINE_S = 60.0  # a bound for a loaded CI box, never a synchronisation


def _children(pid: int) -> list[tuple[int, str]]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            with open(f"/proc/{d}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[1].split()
        if int(rest[1]) == pid and rest[0] != "Z":
            out.append((int(d), comm))
    return out


def _engines(server_pid: int) -> list[int]:
    """The engine processes under the server's stubs."""
    return [e for stub, _ in _children(server_pid) for e, comm in _children(stub)
            if comm == "inflight-engine"]


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait(pred, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + DEADLINE_S
    while not pred():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.05)


@pytest.fixture
def llm_server(triton_server_factory, tmp_path: Path):
    repo = tmp_path / "repo"
    build(tiny_model_dir("llama"), str(repo), "llm", {"max_tokens_in_paged_kv_cache": "2048",
                                                       "max_seq_len": "512"})
    running = triton_server_factory(repo, ready_timeout=240)
    yield running
    running.stop()


def _request(max_tokens: int) -> dict[str, np.ndarray]:
    sp = f'{{"max_tokens": {max_tokens}, "temperature": 0, "ignore_eos": true}}'
    return {"text_input": np.array([b"Once upon a time"], dtype=object),
            "sampling_parameters": np.array([sp.encode()], dtype=object),
            "stream": np.array([True])}


def test_sigterm_drains_and_ends_the_engine_process(llm_server) -> None:
    server = llm_server.server
    engines = _engines(server.pid)
    assert len(engines) == 1, _children(server.pid)
    outcome = run_stream(llm_server.grpc_url, "llm", _request(8), timeout=60)
    outcome.check()
    assert outcome.finals == 1
    assert llm_server.stop() == 0
    assert server.reaped == []  # nothing of the server's group, the engine included, was left
    assert all(_gone(e) for e in engines)


def test_sigkill_of_tritonserver_ends_the_engine_process(llm_server) -> None:
    server = llm_server.server
    engines = _engines(server.pid)
    assert len(engines) == 1
    os.kill(server.pid, signal.SIGKILL)  # no finalize: the stub's and the engine's own checks
    _wait(lambda: all(_gone(e) for e in engines), "the engine process to die with its server")
