"""The engine process under a real tritonserver (issue 13): the `llm` model's engine runs in
a child of its stub; it must end with the server however the server ends (SIGTERM drain,
SIGKILL), leaving no process behind, and an in-flight request is served through it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")

from inflight.testing.procs import children, gone, wait_for  # noqa: E402
from inflight.testing.streams import run_stream  # noqa: E402
from inflight.testing.tiny import tiny_model_dir  # noqa: E402
from inflight.tools.repo import build  # noqa: E402


def _engines(server_pid: int) -> list[int]:
    """The engine processes under the server's stubs."""
    return [e for stub in children(server_pid) for e, p in children(stub).items()
            if p.comm == "inflight-engine"]


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
    assert len(engines) == 1, children(server.pid)
    outcome = run_stream(llm_server.grpc_url, "llm", _request(8), timeout=60)
    outcome.check()
    assert outcome.finals == 1
    assert llm_server.stop() == 0
    assert server.reaped == []  # nothing of the server's group, the engine included, was left
    assert all(gone(e) for e in engines)


def test_sigkill_of_tritonserver_ends_the_engine_process(llm_server) -> None:
    server = llm_server.server
    engines = _engines(server.pid)
    assert len(engines) == 1
    stubs = list(children(server.pid))
    os.kill(server.pid, signal.SIGKILL)  # no finalize: the stub's and the engine's own checks
    wait_for(lambda: all(gone(e) for e in engines), "the engine process to die with its server")
    # tritonserver is still an unreaped zombie here: gone for the engine process, alive for the
    # stub's own check. The stub sees its engine gone (its health watcher used to ask the dead
    # server to unload the model, a call that never returns, and the stub stayed for good), or
    # the engine process already ended it (a stub left 2 s after its server: engine/process.py)
    wait_for(lambda: all(gone(p) for p in stubs)
             or "engine process exited unexpectedly" in server.logs(),
             "the stub to see its engine process gone")
    llm_server.stop()  # reaps the server: the stub must be gone within 5 s
    assert server.reaped == [], "the stub outlived its SIGKILLed tritonserver"


@pytest.fixture
def ensemble_inthread_server(triton_server_factory, tmp_path: Path):
    """The ensemble layout (preprocessing, engine, postprocessing, bls, ensemble_unary) with
    the engine thread inside its stub (engine_process=off): no stub has an engine process to
    end it if it outlives the server, so each gets a reaper (frontends/triton/stub_reaper.py)."""
    repo = tmp_path / "repo"
    build(tiny_model_dir("llama"), str(repo), "ensemble", {"max_tokens_in_paged_kv_cache": "2048",
                                                            "max_seq_len": "512", "engine_process": "off"})
    running = triton_server_factory(repo, ready_timeout=240)
    yield running
    running.stop()


def _reapers(server_pid: int) -> dict[int, list[int]]:
    """stub pid -> its reaper children."""
    return {stub: [r for r, p in children(stub).items() if p.comm == "inflight-reaper"]
            for stub in children(server_pid)}


def test_every_stub_without_an_engine_process_has_a_reaper_that_ends_with_it(ensemble_inthread_server) -> None:
    server = ensemble_inthread_server.server
    reapers = _reapers(server.pid)
    assert len(reapers) == 5 and all(len(r) == 1 for r in reapers.values()), reapers
    assert _engines(server.pid) == []  # engine_process=off
    outcome = run_stream(ensemble_inthread_server.grpc_url, "bls", _request(4), timeout=60)
    outcome.check()
    os.kill(server.pid, signal.SIGKILL)
    ensemble_inthread_server.stop()  # reaps the server: stubs and reapers gone within 5 s
    assert server.reaped == [], "a stub or reaper outlived its SIGKILLed tritonserver"
    assert all(gone(r) for rs in reapers.values() for r in rs)
