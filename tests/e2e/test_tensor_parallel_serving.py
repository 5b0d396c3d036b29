"""Tensor parallelism served through a real tritonserver (issue 15), on CPU (gloo, float32):
an `llm` model with TensorRT-LLM's `tp_size: 2` spans two ranks (the engine process and one
rank process under it), answers greedy requests as one device does, and dies with the server;
a killed rank turns the model not-ready without waiting for a request, requests get an error
instead of a hang, and no process is left behind."""

from __future__ import annotations

import os
import signal
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")

from inflight.testing.procs import DEADLINE_S, descendants, gone, wait_for  # noqa: E402
from inflight.testing.streams import run_stream  # noqa: E402
from inflight.testing.tiny import tiny_model_dir  # noqa: E402
from inflight.tools.repo import build  # noqa: E402

PROMPT = "Once upon a time"


def _ours(server_pid: int) -> dict[int, str]:
    """The engine process and its tensor-parallel ranks under the server."""
    return {p.pid: p.comm for p in descendants(server_pid).values()
            if p.comm == "inflight-engine" or p.comm.startswith("inflight-tp")}


def _ready(http_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{http_url}/v2/models/llm/ready", timeout=5) as r:
            return r.status == 200
    except urllib.error.HTTPError:
        return False


def _request(max_tokens: int) -> dict[str, np.ndarray]:
    sp = f'{{"max_tokens": {max_tokens}, "temperature": 0, "ignore_eos": true}}'
    return {"text_input": np.array([PROMPT.encode()], dtype=object),
            "sampling_parameters": np.array([sp.encode()], dtype=object),
            "stream": np.array([True])}


@pytest.fixture
def tp_server(triton_server_factory, tmp_path: Path):
    repo = tmp_path / "repo"
    build(tiny_model_dir("llama"), str(repo), "llm", {"tp_size": "2", "max_seq_len": "512",
                                                       "max_tokens_in_paged_kv_cache": "2048"})
    # explicit model control: a model whose engine died can take itself out of service
    # (frontends/triton/health.py), and loading it again is the documented recovery
    running = triton_server_factory(repo, ready_timeout=240, extra_args=[
        "--exit-timeout-secs=10", "--model-control-mode=explicit", "--load-model=*"])
    yield running
    running.stop()


def test_tp2_model_serves_greedy_text_of_one_device(tp_server) -> None:
    from inflight.llm import LLM
    from inflight.sampling_params import SamplingParams

    ours = _ours(tp_server.server.pid)
    assert sorted(ours.values()) == ["inflight-engine", "inflight-tp1"], ours
    outcome = run_stream(tp_server.grpc_url, "llm", _request(16), timeout=DEADLINE_S)
    outcome.check()
    assert not outcome.errors and outcome.finals == 1
    one = LLM(tiny_model_dir("llama"), max_seq_len=512, max_tokens_in_paged_kv_cache=2048)
    try:
        want = one.generate([PROMPT], SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True))
    finally:
        one.shutdown()
    assert outcome.text == want[0].outputs[0].text  # streamed at TP=2 == offline at TP=1
    assert tp_server.stop() == 0
    assert all(gone(p) for p in ours), descendants(os.getpid())


def test_killed_rank_fails_requests_and_turns_the_model_not_ready(tp_server) -> None:
    """A SIGKILLed rank while idle: the model goes not-ready by itself, a request ends with one
    error (no hang), its engine and ranks exit; loading the model again (the documented
    recovery) starts fresh ranks that serve; stopping the server leaves nothing behind."""
    server = tp_server.server
    ours = _ours(server.pid)
    rank = [p for p, c in ours.items() if c == "inflight-tp1"]
    assert len(rank) == 1, ours
    assert _ready(tp_server.http_url)
    os.kill(rank[0], signal.SIGKILL)
    wait_for(lambda: gone(rank[0]), "the killed rank to exit")
    # the idle engine notices by itself: no request is needed for readiness to turn red
    wait_for(lambda: not _ready(tp_server.http_url), "the model to turn not-ready")
    outcome = run_stream(tp_server.grpc_url, "llm", _request(16), timeout=DEADLINE_S)
    outcome.check()  # exactly one terminal event: an error, not a hang
    assert outcome.errors, outcome
    wait_for(lambda: all(gone(p) for p in ours), "the engine process to exit with its model")
    req = urllib.request.Request(f"{tp_server.http_url}/v2/repository/models/llm/load", data=b"{}",
                                 method="POST")
    with urllib.request.urlopen(req, timeout=240) as r:
        assert r.status == 200
    fresh = _ours(server.pid)
    assert sorted(fresh.values()) == ["inflight-engine", "inflight-tp1"] and not set(fresh) & set(ours)
    again = run_stream(tp_server.grpc_url, "llm", _request(8), timeout=DEADLINE_S)
    again.check()
    assert not again.errors and again.finals == 1
    assert tp_server.stop() == 0
    assert server.reaped == []  # nothing of the server's group was left for the launcher
    assert all(gone(p) for p in fresh)
