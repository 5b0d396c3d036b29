"""The engine in its own process (issue 13): the channel's messages, the process loop's order
(an abort is applied before the next step), and the lifecycle of a real engine process:
start, serve like the in-thread engine, shutdown, crash, step fault, parent death, no orphan
and no socket left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import msgspec
import numpy as np
import pytest
import torch
import zmq
from inflight.config import EngineConfig
from inflight.engine import wire
from inflight.engine.client import EngineClient
from inflight.engine.core import LLMEngine
from inflight.engine.loop import EngineLoop
from inflight.engine.process import EngineProcess
from inflight.engine.step_plan import StepPlan
from inflight.engine.warmup import warm_up
from inflight.errors import EngineDeadError, InvalidRequestError, QueueFullError
from inflight.frontends.triton.serving import POLL_ALL, ServingCore
from inflight.outputs import RequestMetrics, SequenceUpdate
from inflight.sampling_params import SamplingParams
from inflight.testing.procs import DEADLINE_S, gone, wait_for
from inflight.testing.tiny import tiny_model_dir


def _cfg(**kw: object) -> EngineConfig:
    return EngineConfig.from_kwargs(tiny_model_dir("llama"), max_seq_len=512, **kw)


class Sink:
    """Collects one request's updates; ``final`` is set once every sequence finished."""

    def __init__(self, n: int = 1) -> None:
        self.updates: list[SequenceUpdate] = []
        self.n = n
        self.first = threading.Event()
        self.final = threading.Event()

    def __call__(self, u: SequenceUpdate) -> None:
        self.updates.append(u)
        self.first.set()
        if sum(x.finished for x in self.updates) >= self.n:
            self.final.set()

    def text(self, index: int = 0) -> str:
        return "".join(u.text for u in self.updates if u.index == index)

    def last(self, index: int = 0) -> SequenceUpdate:
        return [u for u in self.updates if u.index == index][-1]


def _abstract_sockets() -> str:
    with open("/proc/net/unix") as f:
        return f.read()


# ---- the channel's messages ------------------------------------------------------------------
def test_request_round_trip_keeps_every_sampling_field() -> None:
    p = SamplingParams(max_tokens=7, min_tokens=2, temperature=0.5, top_k=3, top_p=0.9, seed=11,
                       stop=["\n\n"], stop_words_ids=[[1, 2]], bad_words_ids=[[3]], n=2, logprobs=2,
                       embedding_bias={5: -1.5}, return_context_logits=True, end_id=2)
    msg = wire.Add(3, "req-1", [1, 2, 3], p, priority=4)
    back = wire.decode_to_engine(wire.encode(msg))
    assert back == msg and back.params == p


def test_response_round_trip_with_logits_and_metrics() -> None:
    ctx, gen = torch.randn(3, 8), torch.randn(2, 8)
    u = SequenceUpdate("r", 1, [4, 5], "ab", [{4: -0.5}, {5: -0.25, 6: -2.0}], True, "stop", "ab",
                       None, -0.75, RequestMetrics(1.0, 1.5, 2.0, 3.0, 3, 2, 0, 0, 1, 2), ctx, gen)
    step = wire.Step([wire.wire_update(u)], wire.Stats(1, 2, 3, 4, [8, 7, 1, 0, 0, 0]), acked=9)
    back = wire.decode_from_engine(wire.encode(step))
    assert isinstance(back, wire.Step) and back.acked == 9
    v = wire.sequence_update(back.updates[0])
    assert torch.equal(v.context_logits, ctx) and torch.equal(v.generation_logits, gen)
    v.context_logits = v.generation_logits = u.context_logits = u.generation_logits = None
    assert v == u


@pytest.mark.parametrize("data", [
    b"", b"\xc1", b"garbage", msgspec.msgpack.encode(["nope", 1]),
    msgspec.msgpack.encode(["add", "1", "r", [1], {}, 0]),  # seq must be an int
    msgspec.msgpack.encode(["add", 1, "r", [1], {"max_tokens": -3}, 0]),  # the params' own checks
    wire.encode(wire.Hello(1, 2, 3, 4, 5, [1])),  # the other direction's message
], ids=["empty", "reserved-byte", "garbage", "unknown-tag", "bad-type", "bad-value",
        "wrong-direction"])
def test_malformed_requests_are_rejected(data: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode_to_engine(data)


def test_malformed_arrays_are_rejected() -> None:
    bad = wire.Update("r", 0, [], "", context_logits=wire.Array([2, 2], b"\0" * 12))
    with pytest.raises(wire.WireError, match="needs 16 bytes"):
        wire.sequence_update(wire.decode_from_engine(
            wire.encode(wire.Step([bad], wire.Stats(0, 0, 0, 0, [0] * 6), 0))).updates[0])
    with pytest.raises(wire.WireError):
        wire.decode_from_engine(wire.encode(wire.Add(1, "r", [1], SamplingParams())))


def test_step_plan_round_trip_and_bad_magic(tiny_engine_plan: StepPlan) -> None:
    back = StepPlan.from_bytes(tiny_engine_plan.to_bytes())
    assert np.array_equal(back.arrays["input_ids"], tiny_engine_plan.arrays["input_ids"])
    with pytest.raises(ValueError, match="magic"):
        StepPlan.from_bytes(b"XXXXX" + tiny_engine_plan.to_bytes()[5:])


@pytest.fixture(scope="module")
def tiny_engine_plan() -> StepPlan:
    eng = LLMEngine(_cfg())
    eng.add_request("p", [1, 2, 3, 4], SamplingParams(max_tokens=2, temperature=0))
    plan = eng.scheduler.schedule()
    assert plan
    return plan


# ---- the process loop, in this process with scripted sockets --------------------------------
class ScriptedInbox:
    """Hands the loop one batch of messages per intake; records when each batch was taken."""

    def __init__(self, batches: list[list[bytes]], engine: LLMEngine) -> None:
        self.batches, self.engine = batches, engine
        self.current: list[bytes] = []
        self.taken_at: list[int] = []  # engine.num_steps at each intake

    def poll(self, timeout: int) -> bool:
        return True

    def recv(self, flags: int = 0, copy: bool = True) -> bytes:
        if self.current:
            return self.current.pop(0)
        if self.batches and (not self.taken_at or self.taken_at[-1] is not None):
            self.taken_at.append(self.engine.num_steps)
            self.current = self.batches.pop(0)
            if self.current:
                return self.current.pop(0)
        raise zmq.Again()


class Outbox:
    def __init__(self) -> None:
        self.msgs: list[wire.Step | wire.Dead] = []

    def send(self, data: bytes) -> None:
        self.msgs.append(wire.decode_from_engine(data))  # type: ignore[arg-type]


def test_abort_is_applied_before_the_next_step() -> None:
    eng = LLMEngine(_cfg())
    long = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)
    batches = [[wire.encode(wire.Add(1, "victim", [5, 6, 7], long))]] + [[] for _ in range(5)]
    batches += [[wire.encode(wire.Abort("victim"))], [wire.encode(wire.Shutdown())]]
    inbox, outbox = ScriptedInbox(batches, eng), Outbox()
    assert EngineProcess(eng, inbox, outbox, os.getppid()).run() == 0
    steps_at_abort = inbox.taken_at[6]
    finals = [(m.stats.num_steps, u) for m in outbox.msgs if isinstance(m, wire.Step)
              for u in m.updates if u.finished]
    assert len(finals) == 1
    steps, u = finals[0]
    assert u.finish_reason == "abort" and steps == steps_at_abort  # no step ran in between
    assert outbox.msgs[-1].stats.kv[2] == 0  # used blocks
    tokens = sum(len(x.token_ids) for m in outbox.msgs if isinstance(m, wire.Step) for x in m.updates)
    assert tokens == steps_at_abort


def test_a_step_fault_fails_every_request_then_reports_dead() -> None:
    eng = LLMEngine(_cfg())
    calls = iter(range(100))

    def hook() -> None:
        if next(calls) == 2:
            raise RuntimeError("boom")

    p = SamplingParams(max_tokens=50, temperature=0, ignore_eos=True, n=2)
    inbox = ScriptedInbox([[wire.encode(wire.Add(1, "r", [5, 6], p))]] + [[]] * 10, eng)
    outbox = Outbox()
    assert EngineProcess(eng, inbox, outbox, os.getppid(), hook).run() == 1
    assert isinstance(outbox.msgs[-1], wire.Dead) and "boom" in outbox.msgs[-1].reason
    errors = [u for m in outbox.msgs[:-1] for u in m.updates if u.finished]
    assert sorted(u.index for u in errors) == [0, 1]
    assert all(u.finish_reason == "error" and "boom" in (u.error or "") for u in errors)


# ---- a real engine process ------------------------------------------------------------------
@pytest.fixture(scope="module")
def client():
    c = EngineClient(_cfg())
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def in_thread():
    loop = EngineLoop(_cfg())
    yield loop
    loop.shutdown()


def _run(loop, rid: str, prompt, params: SamplingParams) -> Sink:  # type: ignore[no-untyped-def]
    sink = Sink(params.n)
    loop.submit(rid, prompt, params, sink)
    assert sink.final.wait(DEADLINE_S)
    return sink


@pytest.mark.parametrize("params", [
    SamplingParams(max_tokens=24, temperature=0),
    SamplingParams(max_tokens=24, temperature=0.8, seed=3, n=3, logprobs=2),
    SamplingParams(max_tokens=24, temperature=0, stop=["e"], return_context_logits=True,
                   return_generation_logits=True),
    SamplingParams(max_tokens=24, temperature=0, bad_words=["the"], min_tokens=4),
], ids=["greedy", "n3-seeded-logprobs", "stop-string-logits", "bad-words"])
def test_process_serves_like_the_engine_thread(client, in_thread, params: SamplingParams) -> None:
    import copy

    prompt = "Once upon a time there was"
    a = _run(client, f"a-{id(params)}", prompt, copy.deepcopy(params))
    b = _run(in_thread, f"b-{id(params)}", prompt, copy.deepcopy(params))
    for i in range(params.n):
        ua, ub = a.last(i), b.last(i)
        assert a.text(i) == b.text(i)
        assert (ua.finish_reason, ua.stop_reason, ua.cumulative_logprob) == \
            (ub.finish_reason, ub.stop_reason, ub.cumulative_logprob)
        assert [x.logprobs for x in a.updates if x.index == i] == \
            [x.logprobs for x in b.updates if x.index == i]
        for name in ("context_logits", "generation_logits"):
            ta, tb = getattr(ua, name), getattr(ub, name)
            assert (ta is None and tb is None) or torch.equal(ta, tb)
    assert client.wait_idle(DEADLINE_S)
    wait_for(lambda: client.fresh_stats().kv.used_blocks == 0, "KV idle")


def test_validation_and_admission_fail_in_the_caller(client) -> None:
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        client.submit("v1", "hi", SamplingParams(max_tokens=10_000), Sink())
    with pytest.raises(InvalidRequestError, match="input_ids"):
        client.submit("v2", [], SamplingParams(max_tokens=1), Sink())
    with pytest.raises(InvalidRequestError, match="n"):
        client.submit("v3", "hi", SamplingParams(max_tokens=1, n=99), Sink())
    sink = Sink()
    client.submit("dup", "hi", SamplingParams(max_tokens=300, ignore_eos=True), sink)
    with pytest.raises(InvalidRequestError, match="already in flight"):
        client.submit("dup", "hi", SamplingParams(max_tokens=1), Sink())
    client.abort("dup")
    assert sink.final.wait(DEADLINE_S)
    assert client.alive


def test_queue_cap_counts_what_was_sent() -> None:
    c = EngineClient(_cfg(max_queue_size=2))
    try:
        with pytest.raises(QueueFullError, match="maximum queue size"):
            c.submit("q", "hi", SamplingParams(max_tokens=2, n=3), Sink(3))
    finally:
        c.shutdown()


def test_abort_through_the_process(monkeypatch) -> None:
    monkeypatch.setenv("INFLIGHT_ALLOW_FAULT_INJECTION", "1")
    client = EngineClient(_cfg(), fault_delay_ms=10)  # 500 tokens take >= 5 s: still running
    try:
        sink = Sink()
        client.submit("long", "hi", SamplingParams(max_tokens=500, temperature=0, ignore_eos=True),
                      sink)
        assert sink.first.wait(DEADLINE_S)
        client.abort("long")
        assert sink.final.wait(DEADLINE_S)
        assert sink.last().finish_reason == "abort"
        assert sum(len(u.token_ids) for u in sink.updates) < 500
        assert client.wait_idle(DEADLINE_S)
        wait_for(lambda: client.fresh_stats().kv.used_blocks == 0, "KV idle")
    finally:
        client.shutdown()


def test_shutdown_ends_the_process_and_frees_the_channel() -> None:
    c = EngineClient(_cfg())
    names = [c._spec["inbox"], c._spec["outbox"]]
    assert all(n.removeprefix("ipc://") in _abstract_sockets() for n in names)
    sink = Sink()
    c.submit("running", "hi", SamplingParams(max_tokens=400, ignore_eos=True), sink)
    c.shutdown()
    assert sink.final.is_set() and sink.last().finish_reason == "abort"  # one final, then gone
    assert c.proc.returncode == 0 and not c.alive and c.dead_reason is None
    assert not any(n.removeprefix("ipc://") in _abstract_sockets() for n in names)
    with pytest.raises(EngineDeadError):
        c.submit("late", "hi", SamplingParams(max_tokens=1), Sink())


def test_a_crashed_process_fails_requests_and_stops(monkeypatch) -> None:
    monkeypatch.setenv("INFLIGHT_ALLOW_FAULT_INJECTION", "1")
    c = EngineClient(_cfg(), fault_delay_ms=20)  # slow steps: the request is in flight
    sink = Sink(2)
    c.submit("victim", "hi", SamplingParams(max_tokens=400, ignore_eos=True, n=2), sink)
    assert sink.first.wait(DEADLINE_S)
    os.kill(c.pid, signal.SIGKILL)
    assert sink.final.wait(DEADLINE_S)
    assert {u.finish_reason for u in sink.updates if u.finished} == {"error"}
    assert c.wait_stopped(DEADLINE_S) and not c.alive
    assert "exited unexpectedly" in (c.dead_reason or "")
    with pytest.raises(EngineDeadError):
        c.submit("after", "hi", SamplingParams(max_tokens=1), Sink())
    c.shutdown()


def test_a_step_fault_in_the_process_is_reported(monkeypatch) -> None:
    monkeypatch.setenv("INFLIGHT_ALLOW_FAULT_INJECTION", "1")
    c = EngineClient(_cfg(), fault_step=3)
    sink = Sink()
    c.submit("r", "hi", SamplingParams(max_tokens=50, ignore_eos=True), sink)
    assert sink.final.wait(DEADLINE_S)
    assert sink.last().finish_reason == "error" and "injected fault" in (sink.last().error or "")
    assert c.wait_stopped(DEADLINE_S) and "injected fault" in (c.dead_reason or "")
    assert c.proc.returncode == 1
    c.shutdown()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_start_failure_is_raised() -> None:
    from inflight.engine.client import EngineStartError

    with pytest.raises(EngineStartError, match="engine failed to start"):
        EngineClient(_cfg(device="cuda"))


PARENT = """
import sys, time
from inflight.config import EngineConfig
from inflight.engine.client import EngineClient
from inflight.testing.tiny import tiny_model_dir
c = EngineClient(EngineConfig.from_kwargs(tiny_model_dir("llama"), max_seq_len=256))
print(c.pid, flush=True)
time.sleep(600)
"""


def test_the_process_dies_with_its_parent() -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline()  # type: ignore[union-attr]
        child = int(line)
        assert not gone(child)
        parent.kill()
        parent.wait()
        wait_for(lambda: gone(child), "the engine process to die with its parent")
    finally:
        parent.kill()


# ---- warm-up and cancellation polling -------------------------------------------------------
def test_warm_up_leaves_the_engine_idle_and_unchanged() -> None:
    eng = LLMEngine(_cfg())
    took = warm_up(eng)
    assert took >= 0 and eng.num_steps == 0 and not eng.has_unfinished() and not eng.children
    assert eng.kv.stats().used_blocks == 0
    ref = LLMEngine(_cfg())
    p = SamplingParams(max_tokens=16, temperature=0)
    outs = []
    for e in (eng, ref):
        got: list[SequenceUpdate] = []
        e.add_request("x", "Once upon a time", SamplingParams(**{**p.__dict__}), got.append)
        while e.has_unfinished():
            e.step()
        outs.append([t for u in got for t in u.token_ids])
    assert outs[0] == outs[1]


def test_warm_up_runs_single_prompts_past_the_mixed_graphs() -> None:
    """Each "alone" length is a step of one request and that many tokens (the eager
    single-request shapes a quiet server meets); with mixed-step graphs up to 32 tokens those
    are 16, 35 (odd) and 48 (aligned) tokens."""
    from types import SimpleNamespace

    eng = LLMEngine(_cfg())
    runner = eng.runner
    runner.mixed_graphs = SimpleNamespace(sizes=[16, 32], fits=lambda meta, n: False)  # type: ignore[assignment]
    eager, seen = runner.execute, []

    def record(inp):  # type: ignore[no-untyped-def]
        seen.append((inp.meta.num_reqs, inp.meta.num_tokens))
        return eager(inp)

    runner.execute = record  # type: ignore[method-assign]
    warm_up(eng)
    assert {(1, 16), (1, 35), (1, 48)} <= set(seen), seen
    assert eng.kv.stats().used_blocks == 0 and not eng.has_unfinished()


def test_cancellation_polls_are_bounded_and_reach_every_call() -> None:
    share = ServingCore._poll_share
    core = type("C", (), {"_poll_next": 0})()
    few = [[i] for i in range(10)]
    assert share(core, few) == few  # type: ignore[arg-type]
    many = [[i] for i in range(1000)]
    seen: set[int] = set()
    for _tick in range(10):  # one second of 0.1 s ticks
        got = share(core, many)  # type: ignore[arg-type]
        assert POLL_ALL <= len(got) <= 100
        seen |= {g[0] for g in got}
    assert seen == set(range(1000))


def test_the_process_dies_with_a_watched_process() -> None:
    """The Triton stub watches tritonserver: a stub can outlive a SIGKILLed server."""
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    c = EngineClient(_cfg(), watch=[server.pid])
    try:
        server.kill()
        server.wait()
        assert c.wait_stopped(DEADLINE_S)
        wait_for(lambda: gone(c.pid), "the engine process to end with the watched process")
        assert c.proc.returncode == 2 and not c.alive
    finally:
        server.kill()
        c.shutdown()


# A python stub whose thread waits forever, GIL held, for a tritonserver that stopped answering
# (2.51: a metrics update in flight when the server exited at its exit timeout): nothing inside
# it can run again, its own parent check included.
STUCK_STUB = """
import ctypes, sys
from inflight.config import EngineConfig
from inflight.engine.client import EngineClient
from inflight.testing.tiny import tiny_model_dir
cfg = EngineConfig.from_kwargs(tiny_model_dir("llama"), max_seq_len=512)
c = EngineClient(cfg, watch=[int(sys.argv[1])], parent_grace_s=float(sys.argv[2]))
print(c.pid, flush=True)
while True:
    ctypes.PyDLL(None).pause()  # PyDLL: the GIL stays held
"""


def test_a_stub_stuck_after_its_server_ended_is_killed_by_its_engine() -> None:
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    stub = subprocess.Popen([sys.executable, "-c", STUCK_STUB, str(server.pid), "0.5"],
                            stdout=subprocess.PIPE)
    try:
        assert stub.stdout is not None
        engine = int(stub.stdout.readline() or 0)
        assert engine, "the stub did not start its engine process"
        server.kill()
        server.wait()
        assert stub.wait(DEADLINE_S) == -signal.SIGKILL
        wait_for(lambda: gone(engine), "the engine process to end with its stub")
    finally:
        for p in (server, stub):
            p.kill()
            p.wait()
