"""Every request rule rejects a bad value with a message that names the field and the
allowed range; the engine keeps serving (and leaks nothing) afterwards."""

from __future__ import annotations

import math
import queue
from collections.abc import Callable
from typing import Any

import pytest
from inflight.config import EngineConfig
from inflight.engine.core import LLMEngine
from inflight.errors import InvalidRequestError, QueueFullError
from inflight.sampling_params import SamplingParams

VOCAB = 1536  # tiny tokenizer: 1533 BPE tokens + 3 specials
MAX_SEQ_LEN = 256  # the shared engines' max_seq_len


def _expect(exc: pytest.ExceptionInfo[InvalidRequestError], field: str, *fragments: str) -> None:
    msg = str(exc.value)
    assert exc.value.field == field
    assert msg.startswith(f"{field}: "), msg
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"


# ----------------------------------------------------------------------------- SamplingParams

PARAM_CASES = [
    ({"temperature": math.nan}, "temperature", ["finite", ">= 0", "nan"]),
    ({"temperature": math.inf}, "temperature", ["finite", ">= 0", "inf"]),
    ({"temperature": -0.5}, "temperature", [">= 0", "-0.5"]),
    ({"top_p": 0.0}, "top_p", ["(0, 1]", "0.0"]),
    ({"top_p": 1.5}, "top_p", ["(0, 1]", "1.5"]),
    ({"top_p": math.nan}, "top_p", ["(0, 1]"]),
    ({"top_k": -1}, "top_k", [">= 0", "-1"]),
    ({"top_k": 2.5}, "top_k", ["integer"]),
    ({"min_p": 2.0}, "min_p", ["[0, 1]", "2.0"]),
    ({"min_p": -0.1}, "min_p", ["[0, 1]"]),
    ({"repetition_penalty": 0.0}, "repetition_penalty", ["> 0", "0.0"]),
    ({"repetition_penalty": math.inf}, "repetition_penalty", ["finite"]),
    ({"presence_penalty": 3.0}, "presence_penalty", ["[-2, 2]", "3.0"]),
    ({"presence_penalty": -3.0}, "presence_penalty", ["[-2, 2]", "-3.0"]),
    ({"frequency_penalty": 3.0}, "frequency_penalty", ["[-2, 2]", "3.0"]),
    ({"frequency_penalty": -3.0}, "frequency_penalty", ["[-2, 2]", "-3.0"]),
    ({"max_tokens": 0}, "max_tokens", [">= 1", "0"]),
    ({"max_tokens": -5}, "max_tokens", [">= 1", "-5"]),
    ({"min_tokens": -1}, "min_tokens", [">= 0"]),
    ({"min_tokens": 10, "max_tokens": 4}, "min_tokens", ["<= max_tokens (4)", "10"]),
    ({"seed": -1}, "seed", ["[0, 2^64)", "-1"]),
    ({"seed": 2**64}, "seed", ["[0, 2^64)"]),
    ({"n": 0}, "n", ["[1, ", "0"]),
    ({"logprobs": -1}, "logprobs", ["[0, ", "-1"]),
    ({"stop": [""]}, "stop", ["non-empty"]),
    ({"stop_words_ids": [[]]}, "stop_words_ids", ["non-empty"]),
    ({"bad_words_ids": [[]]}, "bad_words_ids", ["non-empty"]),
]


@pytest.mark.parametrize("kwargs,field,fragments", PARAM_CASES,
                         ids=[f"{c[1]}={list(c[0].values())[0]!r}" for c in PARAM_CASES])
def test_sampling_params_rules(kwargs: dict[str, Any], field: str, fragments: list[str]) -> None:
    with pytest.raises(InvalidRequestError) as exc:
        SamplingParams(**kwargs)
    _expect(exc, field, *fragments)


def test_sampling_params_bounds_are_inclusive() -> None:
    for kw in ({"temperature": 0.0}, {"top_p": 1.0}, {"min_p": 0.0}, {"min_p": 1.0},
               {"presence_penalty": 2.0}, {"frequency_penalty": -2.0}, {"seed": 0},
               {"seed": 2**64 - 1}, {"min_tokens": 4, "max_tokens": 4}, {"max_tokens": None},
               {"logprobs": 0}):
        SamplingParams(**kw)


# ----------------------------------------------------------------------------- engine rules

ENGINE_CASES = [
    # (prompt, params, field, fragments)
    (list(range(10)), {"max_tokens": 250}, "max_tokens",
     ["prompt (10 tokens)", "max_tokens (250)", "max_seq_len (256)", "<= 246"]),
    (list(range(MAX_SEQ_LEN)), {"max_tokens": 1}, "input_ids",
     ["256 tokens", "max_seq_len is 256"]),
    ([], {}, "input_ids", ["at least one token"]),
    ([1, 2, VOCAB], {}, "input_ids", [f"[0, {VOCAB})", f"{VOCAB}"]),
    ([1, -1, 2], {}, "input_ids", [f"[0, {VOCAB})", "-1"]),
    ("Hi", {"end_id": VOCAB}, "end_id", [f"[0, {VOCAB})", f"{VOCAB}"]),
    ("Hi", {"pad_id": -2}, "pad_id", [f"[0, {VOCAB})", "-2"]),
    ("Hi", {"stop_token_ids": [5, 99999]}, "stop_token_ids", [f"[0, {VOCAB})", "99999"]),
    ("Hi", {"stop_words_ids": [[5, VOCAB + 3]]}, "stop_words", [f"[0, {VOCAB})", f"{VOCAB + 3}"]),
    ("Hi", {"bad_words_ids": [[-7]]}, "bad_words", [f"[0, {VOCAB})", "-7"]),
    ("Hi", {"n": 17}, "n", ["max_num_return_sequences (16)", "17"]),
    ("Hi", {"logprobs": 21}, "logprobs", ["max_logprobs (20)", "21"]),
    ("Hi", {"stop": [f"w{i}" for i in range(65)]}, "stop_words", ["at most 64", "65"]),
    ("Hi", {"stop": ["a"] * 30, "stop_words_ids": [[5]] * 30, "stop_token_ids": [6] * 5},
     "stop_words", ["at most 64", "65"]),
    ("Hi", {"bad_words_ids": [[5]] * 65}, "bad_words", ["at most 64", "65"]),
]


@pytest.mark.parametrize("prompt,kwargs,field,fragments", ENGINE_CASES,
                         ids=[f"{c[2]}-{i}" for i, c in enumerate(ENGINE_CASES)])
def test_engine_rules(llm: Any, prompt: Any, kwargs: dict[str, Any], field: str,
                      fragments: list[str]) -> None:
    params = SamplingParams(**{"max_tokens": 4, **kwargs})
    with pytest.raises(InvalidRequestError) as exc:
        llm.generate([prompt], params)
    _expect(exc, field, *fragments)


def test_n_and_logprobs_at_the_caps_are_accepted(llm: Any) -> None:
    out = llm.generate("Hi", SamplingParams(n=16, logprobs=20, max_tokens=2))[0]
    assert len(out.outputs) == 16
    assert all(len(c.logprobs) == 2 and len(c.logprobs[0]) >= 20 for c in out.outputs)


def test_prompt_filling_max_seq_len_exactly_is_accepted(llm: Any) -> None:
    out = llm.generate([list(range(10, 250))], SamplingParams(max_tokens=6, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 6
    out = llm.generate([list(range(10, 250))], SamplingParams(max_tokens=None, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == MAX_SEQ_LEN - 240


def test_request_that_can_never_fit_the_kv_pool(make_llm: Callable[..., Any]) -> None:
    small = make_llm(max_tokens_in_paged_kv_cache=64, block_size=8)
    assert small.engine.kv.num_blocks == 8
    with pytest.raises(InvalidRequestError) as exc:
        small.generate([list(range(5))], SamplingParams(max_tokens=100))
    _expect(exc, "max_tokens", "prompt (5)", "max_tokens (100)", "needs 14 KV blocks",
            "pool holds 8 (64 tokens)", "max_tokens_in_paged_kv_cache")
    # the largest request that fits is served
    out = small.generate([list(range(5))], SamplingParams(max_tokens=59, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 59


def test_a_bad_request_in_a_batch_aborts_the_accepted_ones(llm: Any,
                                                           assert_no_leak: Callable[..., None]) -> None:
    params = SamplingParams(max_tokens=100, ignore_eos=True)
    with pytest.raises(InvalidRequestError):
        llm.generate(["Hello", "world", [1, VOCAB]], params)
    assert_no_leak(llm)


def test_engine_still_serves_after_invalid_requests(llm: Any,
                                                    assert_no_leak: Callable[..., None]) -> None:
    for prompt, kw in [([VOCAB], {}), ("Hi", {"n": 99}), ("Hi", {"logprobs": 50}), ([], {})]:
        with pytest.raises(InvalidRequestError):
            llm.generate([prompt], SamplingParams(max_tokens=4, **kw))
    out = llm.generate("Hello world", SamplingParams(max_tokens=8, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 8 and out.outputs[0].finish_reason == "length"
    assert_no_leak(llm)


# ----------------------------------------------------------------------------- ids and queue


def test_duplicate_in_flight_request_id(llm: Any) -> None:
    sink: queue.SimpleQueue[Any] = queue.SimpleQueue()
    params = SamplingParams(max_tokens=20, ignore_eos=True)
    with llm.loop._cv:  # the first request cannot finish before the second arrives
        llm.loop.submit("dup", "Hello", params, sink.put)
        with pytest.raises(InvalidRequestError) as exc:
            llm.loop.submit("dup", "world", params, sink.put)
    _expect(exc, "request_id", "'dup'", "already in flight")
    updates = []
    while not updates or not updates[-1].finished:
        updates.append(sink.get(timeout=60))
    assert sum(len(u.token_ids) for u in updates) == 20  # only the first one ran
    assert llm.loop.wait_idle()
    llm.loop.submit("dup", "world", SamplingParams(max_tokens=2), sink.put)  # free again
    while not sink.get(timeout=60).finished:
        pass


@pytest.fixture
def sync_engine(tiny_model_dir: Callable[[str], str]) -> Callable[..., LLMEngine]:
    """A bare LLMEngine (no thread) for deterministic queue-state tests."""
    def make(**kw: Any) -> LLMEngine:
        cfg = EngineConfig(model=tiny_model_dir("llama"), max_tokens_in_paged_kv_cache=1024,
                           block_size=8, max_seq_len=256, **kw)
        return LLMEngine(cfg)
    return make


def _drain(eng: LLMEngine) -> None:
    while eng.has_unfinished():
        eng.step()
    eng.kv.assert_all_free()


def test_duplicate_request_id_in_the_engine(sync_engine: Callable[..., LLMEngine]) -> None:
    eng = sync_engine()
    eng.add_request("a", "Hello", SamplingParams(max_tokens=3))
    with pytest.raises(InvalidRequestError) as exc:
        eng.add_request("a", "world", SamplingParams(max_tokens=3))
    _expect(exc, "request_id", "'a'", "already in flight")
    _drain(eng)
    eng.add_request("a", "world", SamplingParams(max_tokens=3))  # finished ids are reusable
    _drain(eng)


def test_max_queue_size(sync_engine: Callable[..., LLMEngine]) -> None:
    eng = sync_engine(max_queue_size=2)
    eng.add_request("a", "Hello", SamplingParams(max_tokens=3))
    eng.add_request("b", "Hello", SamplingParams(max_tokens=3))
    with pytest.raises(QueueFullError, match=r"exceeds maximum queue size \(2\)"):
        eng.add_request("c", "Hello", SamplingParams(max_tokens=3))
    assert "c" not in eng.children and eng.scheduler.num_waiting == 2
    eng.step()  # a and b leave the queue for the running set
    assert eng.scheduler.num_waiting == 0
    with pytest.raises(QueueFullError, match="exceeds maximum queue size"):
        eng.add_request("n3", "Hello", SamplingParams(max_tokens=3, n=3))  # n sequences count
    eng.add_request("c", "Hello", SamplingParams(max_tokens=3))
    _drain(eng)


def test_max_queue_size_holds_for_a_burst(make_llm: Callable[..., Any]) -> None:
    small = make_llm(max_queue_size=2)
    sink: queue.SimpleQueue[Any] = queue.SimpleQueue()
    accepted = 0
    with small.loop._cv:  # a burst: the engine thread has not drained its inbox yet
        try:
            for i in range(4):
                small.loop.submit(f"burst-{i}", "Hello", SamplingParams(max_tokens=2), sink.put)
                accepted += 1
        except QueueFullError:
            pass
    small.loop.wait_idle()
    assert accepted == 2


def test_prompt_over_the_step_budget_without_chunking_is_rejected(
        make_llm: Callable[..., Any]) -> None:
    small = make_llm(max_num_tokens=16, enable_chunked_context=False)
    try:
        with pytest.raises(InvalidRequestError) as exc:
            small.loop.submit("long", list(range(10, 40)), SamplingParams(max_tokens=4),
                              lambda u: None)
        _expect(exc, "input_ids", "max_num_tokens (16)")
    finally:
        small.abort("long")  # accepted by mistake: it would never finish


def test_a_fault_fails_requests_still_in_the_loops_inbox(tiny_model_dir: Callable[[str], str]) -> None:
    """A request accepted while the engine thread is failing (in the inbox, in no engine
    registry yet) gets its final error too: before the fix the engine thread returned and such
    a request waited forever (seen with a killed tensor-parallel rank)."""
    import threading

    from inflight.engine.loop import EngineLoop

    cfg = EngineConfig(model=tiny_model_dir("llama"), max_tokens_in_paged_kv_cache=1024,
                       max_seq_len=128, block_size=8)
    loop = EngineLoop(cfg)
    try:
        in_step, second_queued = threading.Event(), threading.Event()

        def fault() -> None:  # the engine thread is inside its step when B is submitted
            in_step.set()
            assert second_queued.wait(30)
            raise RuntimeError("injected")

        loop._fault_hook = fault
        finals: queue.Queue[Any] = queue.Queue()
        sink = lambda u: finals.put(u) if u.finished else None  # noqa: E731
        loop.submit("A", "Hello", SamplingParams(max_tokens=4), sink)
        assert in_step.wait(30)  # A is in the scheduler, the thread is stepping
        loop.submit("B", "Hello", SamplingParams(max_tokens=4), sink)  # stays in the inbox
        second_queued.set()
        got = {u.request_id: u for u in (finals.get(timeout=30), finals.get(timeout=30))}
        assert set(got) == {"A", "B"}
        assert all(u.finish_reason == "error" and "injected" in (u.error or "") for u in got.values())
        assert loop.wait_stopped(30) and not loop.alive
        with pytest.raises(Exception, match="not running"):
            loop.submit("C", "Hello", SamplingParams(max_tokens=4), sink)
    finally:
        loop.shutdown()
