"""Reliability against a real tritonserver: bad input, cancellation, overload, faults.

Scenario numbers follow issue 6. Three servers, one per configuration, keep the run short:
``default`` (ensemble + llm, roomy KV), ``tight`` (small KV pool; the ensemble's engine
guaranteed_no_evict with max_queue_size, the llm model max_utilization) and ``fault``
(llm only, explicit model control, fault injection, a restricted repository API).
After every scenario: one terminal event per accepted request, nothing after it
(`Outcome.check`), and KV used blocks back to zero once idle.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.e2e
pytest.importorskip("tritonclient.grpc")

from inflight.testing.repos import add_parameter  # noqa: E402
from inflight.testing.streams import (  # noqa: E402
    Outcome,
    metric,
    run_stream,
    wait_kv_idle,
    wait_metric_above,
)
from inflight.testing.tiny import tiny_model_dir  # noqa: E402
from inflight.tools.repo import build  # noqa: E402

MAX_SEQ_LEN = 512
DEFAULT = {"max_tokens_in_paged_kv_cache": "4096", "max_seq_len": str(MAX_SEQ_LEN)}
TIGHT_POOL = 384  # tokens = 24 blocks of 16
TIGHT = {"max_tokens_in_paged_kv_cache": str(TIGHT_POOL), "max_seq_len": str(MAX_SEQ_LEN)}
QUEUE_CAP = 8
STEP_DELAY_MS = 10
CANCEL_BOUND_S = 10.0  # generous: a loaded 2-core CI box


# ---- servers -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir() -> str:
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def default_server(triton_server_factory, model_dir: str, tmp_path_factory):
    repo = tmp_path_factory.mktemp("rel_default")
    build(model_dir, str(repo), "ensemble", DEFAULT)
    build(model_dir, str(repo), "llm", DEFAULT, force=True)
    running = triton_server_factory(repo, ready_timeout=240)
    yield running
    running.stop()


FAULTS_ALLOWED = {"INFLIGHT_ALLOW_FAULT_INJECTION": "1"}


@pytest.fixture(scope="module")
def tight_server(triton_server_factory, model_dir: str, tmp_path_factory):
    """Steps slowed to ~STEP_DELAY_MS (test-only knob) so that long requests stay in flight
    long enough to queue behind, cancel and SIGTERM, whatever the machine's speed."""
    repo = tmp_path_factory.mktemp("rel_tight")
    build(model_dir, str(repo), "ensemble", {**TIGHT, "max_queue_size": str(QUEUE_CAP)})
    build(model_dir, str(repo), "llm", {**TIGHT, "batch_scheduler_policy": "max_utilization"},
          force=True)
    for model in ("engine", "llm"):
        add_parameter(repo / model / "config.pbtxt", "fault_injection_step_delay_ms",
                      str(STEP_DELAY_MS))
    # scenario 15 SIGTERMs this server with streams in flight: give the drain and the stubs'
    # torch teardown room on a loaded 2-core machine (the default of 10 s was seen to expire)
    running = triton_server_factory(repo, ready_timeout=240, env=FAULTS_ALLOWED,
                                    extra_args=("--exit-timeout-secs=90",))
    yield running
    running.stop()


# ---- request builders ----------------------------------------------------------------------
def ens(prompt: str = "Hello world, this is", max_tokens: int = 8, **extra: np.ndarray
        ) -> dict[str, np.ndarray]:
    inputs = {"text_input": np.array([[prompt.encode()]], dtype=object),
              "max_tokens": np.array([[max_tokens]], dtype=np.int32),
              "temperature": np.array([[0.0]], dtype=np.float32)}
    inputs.update(extra)
    return inputs


def llm(prompt: str | bytes = "Hello world, this is", stream: bool = True,
        raw_params: str | None = None, **params: object) -> dict[str, np.ndarray]:
    sp = raw_params if raw_params is not None else json.dumps(
        {"max_tokens": 8, "temperature": 0, **params})
    text = prompt if isinstance(prompt, bytes) else prompt.encode()
    return {"text_input": np.array([text], dtype=object),
            "stream": np.array([stream], dtype=bool),
            "sampling_parameters": np.array([sp.encode()], dtype=object)}


def eng(ids: list[int], max_tokens: int = 8, **extra: np.ndarray) -> dict[str, np.ndarray]:
    inputs = {"input_ids": np.array([ids], dtype=np.int32),
              "input_lengths": np.array([[len(ids)]], dtype=np.int32),
              "max_tokens": np.array([[max_tokens]], dtype=np.int32),
              "stream": np.array([[True]]),
              "ignore_eos": np.array([[True]]),
              "temperature": np.array([[0.0]], dtype=np.float32)}
    inputs.update(extra)
    return inputs


def i32(v: int) -> np.ndarray:
    return np.array([[v]], dtype=np.int32)


def f32(v: float) -> np.ndarray:
    return np.array([[v]], dtype=np.float32)


def words(n: int) -> np.ndarray:
    return np.array([[f"w{i}".encode() for i in range(n)]], dtype=object)


def in_threads(fns: list[Callable[[], Outcome]]) -> list[Outcome]:
    out: list[Outcome | None] = [None] * len(fns)

    def run(i: int) -> None:
        out[i] = fns[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert all(o is not None for o in out)
    return [o for o in out if o is not None]


def wait_first_token(o: Outcome) -> bool:
    return bool(o.texts) or bool(o.outputs)


def first_token_sets(event: threading.Event) -> Callable[[Outcome], bool]:
    """A ``cancel_when`` that never cancels but sets ``event`` once a token arrived."""

    def rule(o: Outcome) -> bool:
        if wait_first_token(o):
            event.set()
        return False

    return rule


# ---- 1-7: bad input (default server) -------------------------------------------------------
LONG_PROMPT = "hello world " * 300  # ~900 tokens > max_seq_len
BAD = [
    # (scenario, model, inputs, words the error must contain)
    ("1-prompt>max_seq_len", "ensemble", ens(LONG_PROMPT), ["input_ids", "512"]),
    ("1-prompt+max_tokens", "ensemble", ens(max_tokens=510), ["max_tokens", "max_seq_len", "510"]),
    ("1-llm-prompt+max_tokens", "llm", llm(max_tokens=600), ["max_tokens", "max_seq_len"]),
    ("2-empty-ensemble", "ensemble", ens(""), ["text_input", "empty"]),
    ("2-empty-llm", "llm", llm(""), ["text_input", "empty"]),
    ("2-empty-engine", "engine", eng([]), ["input_ids", "at least one token"]),
    ("3-max_tokens=0", "ensemble", ens(max_tokens=0), ["max_tokens", ">= 1"]),
    ("3-max_tokens<0", "ensemble", ens(max_tokens=-5), ["max_tokens", ">= 1"]),
    ("3-max_tokens=2^31-1", "ensemble", ens(max_tokens=2**31 - 1), ["max_tokens", "max_seq_len"]),
    ("3-max_tokens-int64", "ensemble", ens(max_tokens=np.array([[2**31]], dtype=np.int64)),
     ["max_tokens"]),
    ("3-max_tokens-float", "ensemble", ens(max_tokens=np.array([[8.0]], dtype=np.float32)),
     ["max_tokens"]),
    ("3-max_tokens-shape", "ensemble", ens(max_tokens=np.array([[8, 8]], dtype=np.int32)),
     ["max_tokens"]),
    ("3-max_tokens-missing", "engine", {k: v for k, v in eng([5, 6]).items() if k != "max_tokens"},
     ["max_tokens", "required"]),
    ("3-llm-max_tokens=0", "llm", llm(max_tokens=0), ["max_tokens"]),
    ("3-llm-max_tokens=2^31", "llm", llm(max_tokens=2**31), ["max_tokens"]),
    ("3-llm-max_tokens-str", "llm", llm(max_tokens="many"), ["max_tokens"]),
    ("4-temperature-nan", "ensemble", ens(temperature=f32(np.nan)), ["temperature", "finite"]),
    ("4-temperature-inf", "ensemble", ens(temperature=f32(np.inf)), ["temperature", "finite"]),
    ("4-top_p-ninf", "ensemble", ens(top_p=f32(-np.inf)), ["top_p"]),
    ("4-top_p>1", "ensemble", ens(top_p=f32(1.5)), ["top_p", "(0, 1]"]),
    ("4-top_k<0", "ensemble", ens(top_k=i32(-1)), ["top_k", ">= 0"]),
    ("4-repetition_penalty=0", "ensemble", ens(repetition_penalty=f32(0.0)), ["repetition_penalty"]),
    ("4-presence_penalty", "ensemble", ens(presence_penalty=f32(5.0)), ["presence_penalty"]),
    ("4-beam_width=0", "ensemble", ens(beam_width=i32(0)), ["beam_width", "[1, 1]"]),
    ("4-beam_width=4", "ensemble", ens(beam_width=i32(4)), ["beam_width", "[1, 1]"]),
    ("4-llm-temperature-NaN", "llm", llm(raw_params='{"max_tokens": 4, "temperature": NaN}'),
     ["temperature", "finite"]),
    ("4-llm-top_p-Infinity", "llm", llm(raw_params='{"max_tokens": 4, "top_p": Infinity}'),
     ["top_p", "finite"]),
    ("5-num_return_sequences", "ensemble", ens(num_return_sequences=i32(10**6)),
     ["n", "1024"]),
    ("5-num_return_sequences>cap", "ensemble", ens(num_return_sequences=i32(17)),
     ["n", "max_num_return_sequences (16)"]),
    ("5-llm-n", "llm", llm(n=100), ["n", "max_num_return_sequences"]),
    ("5-llm-logprobs", "llm", llm(logprobs=10**6), ["logprobs"]),
    ("5-llm-logprobs>cap", "llm", llm(logprobs=21), ["logprobs", "max_logprobs (20)"]),
    ("5-stop_words", "ensemble", ens(stop_words=words(65)), ["stop_words", "64"]),
    ("5-bad_words", "ensemble", ens(bad_words=words(65)), ["bad_words", "64"]),
    ("5-llm-stop", "llm", llm(stop=[f"s{i}" for i in range(1000)]), ["stop_words", "64"]),
    ("6-input_ids>vocab", "engine", eng([5, 10**6]), ["input_ids", "[0, 1536)"]),
    ("6-input_ids<0", "engine", eng([-3, 5]), ["input_ids", "[0, 1536)"]),
    ("6-end_id", "ensemble", ens(end_id=i32(10**6)), ["end_id", "[0, 1536)"]),
    ("6-end_id<0", "ensemble", ens(end_id=i32(-1)), ["end_id"]),
    ("6-pad_id", "ensemble", ens(pad_id=i32(10**6)), ["pad_id", "[0, 1536)"]),
    ("6-llm-stop_token_ids", "llm", llm(stop_token_ids=[10**6]), ["stop_token_ids"]),
    ("6-input_lengths", "engine", {**eng([5, 6]), "input_lengths": i32(9)}, ["input_lengths"]),
    ("7-text>1MiB", "llm", llm("a" * (2 << 20)), ["text_input", "bytes"]),
    ("7-invalid-utf8", "ensemble", ens() | {"text_input": np.array([[b"\xff\xfe ok"]], dtype=object)},
     ["text_input", "UTF-8"]),
    ("7-llm-invalid-utf8", "llm", llm(b"ok \xc3\x28"), ["text_input", "UTF-8"]),
    ("7-json-malformed", "llm", llm(raw_params='{"max_tokens": 5,'), ["sampling_parameters", "JSON"]),
    ("7-json-not-object", "llm", llm(raw_params="[1, 2]"), ["sampling_parameters", "object"]),
    ("7-json-nested", "llm", llm(raw_params='{"stop": ' + "[" * 50 + "]" * 50 + "}"),
     ["sampling_parameters", "nested"]),
    ("7-json-very-deep", "llm", llm(raw_params='{"stop": ' + "[" * 20000 + "]" * 20000 + "}"),
     ["sampling_parameters"]),
    ("7-json-unknown-key", "llm", llm(raw_params='{"max_tokens": 4, "evil": 1}'),
     ["sampling_parameters.evil", "known"]),
    ("2-no-text_input-ensemble", "ensemble", {"max_tokens": i32(4)}, ["text_input", "required"]),
    ("2-no-text_input-bls", "bls", {"max_tokens": i32(4)}, ["text_input", "required"]),
]


@pytest.mark.parametrize("model", ["ensemble", "bls", "llm"])
@pytest.mark.parametrize("endpoint", ["generate", "generate_stream"])
def test_missing_text_input_over_http_is_a_400_naming_it(default_server, model: str,
                                                         endpoint: str) -> None:
    """Triton's ensemble does not check required inputs (it answered an empty 200)."""
    req = urllib.request.Request(f"{default_server.http_url}/v2/models/{model}/{endpoint}",
                                 data=json.dumps({"max_tokens": 4}).encode(),
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=60)
    body = err.value.read().decode()
    assert err.value.code == 400 and "text_input" in body, body


@pytest.mark.parametrize("case,model,inputs,needles", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_clear_error(default_server, case: str, model: str,
                                      inputs: dict[str, np.ndarray], needles: list[str]) -> None:
    out = run_stream(default_server.grpc_url, model, inputs, timeout=60)
    out.check()
    assert out.errors, f"{case}: expected an error, got text {out.text!r}"
    for needle in needles:
        assert needle in out.error, f"{case}: {needle!r} not in {out.error!r}"


def test_bad_inputs_left_server_serving_and_kv_idle(default_server) -> None:
    wait_kv_idle(default_server.metrics_url)
    for model, inputs in (("ensemble", ens()), ("llm", llm()), ("engine", eng([5, 6, 7]))):
        out = run_stream(default_server.grpc_url, model, inputs)
        out.check()
        assert not out.errors and out.finals == 1, (model, out)


@pytest.mark.parametrize("model,inputs", [
    ("llm", llm("a\x00b\x00c")),
    ("ensemble", ens("\x00")),
    ("llm", llm("<|begin_of_text|><|end_of_text|>")),  # special tokens only: served, no hang
    ("ensemble", ens(" ")),
], ids=["nul-llm", "nul-ensemble", "special-only", "space"])
def test_odd_but_valid_text_is_served(default_server, model: str, inputs) -> None:
    out = run_stream(default_server.grpc_url, model, inputs)
    out.check()
    assert not out.errors, out


def test_huge_text_is_refused_cleanly(default_server) -> None:
    """7: a 50 MB prompt: refused (by Triton's or our size limit), server keeps serving."""
    out = run_stream(default_server.grpc_url, "llm", llm("x" * (50 << 20)), timeout=120)
    out.check()
    assert out.errors and ("text_input" in out.error or "size" in out.error.lower()), out.error[:300]
    ok = run_stream(default_server.grpc_url, "llm", llm())
    ok.check()
    assert not ok.errors


# ---- 8, 9, 16, 17: cancellation, disconnect, ids, health (default server) --------------------
def aborted(server, model: str = "llm") -> float:
    return metric(server.metrics_url, "inflight_request_success_total", finish_reason="abort",
                  model=model)


def finished(server, reason: str, model: str = "llm") -> float:
    return metric(server.metrics_url, "inflight_request_success_total", finish_reason=reason,
                  model=model)


@pytest.mark.parametrize("when", ["at-once", "after-first-token", "mid-decode"])
def test_client_cancel_aborts_and_frees_kv(default_server, when: str) -> None:
    """8: stop_stream(cancel_requests=True) right after send (the request may not even
    reach the model), at the first token (prefill just done), mid-decode."""
    wait_kv_idle(default_server.metrics_url)
    before, lengths = aborted(default_server), finished(default_server, "length")
    rules: dict[str, Callable[[Outcome], bool]] = {
        "at-once": lambda o: True,
        "after-first-token": wait_first_token,
        "mid-decode": lambda o: len(o.texts) >= 20,
    }
    out = run_stream(default_server.grpc_url, "llm", llm(max_tokens=480, ignore_eos=True),
                     cancel_when=rules[when])
    out.check()
    assert out.cancelled_by_client and not out.finals
    if when == "at-once":
        time.sleep(1.5)  # if it reached the engine, it is aborted by now
    else:
        wait_metric_above(default_server.metrics_url, "inflight_request_success_total", before,
                          timeout=CANCEL_BOUND_S, finish_reason="abort", model="llm")
    wait_kv_idle(default_server.metrics_url)
    assert aborted(default_server) - before in ((0, 1) if when == "at-once" else (1,))
    assert finished(default_server, "length") == lengths, "the cancelled request ran to the end"


def test_cancel_right_after_final_is_harmless(default_server) -> None:
    before = aborted(default_server)
    out = run_stream(default_server.grpc_url, "llm", llm(max_tokens=4), quiet=0.0)
    out.check()
    assert out.finals == 1 and not out.errors
    # run_stream closed its stream after the final; cancel on a fresh one finds nothing
    again = run_stream(default_server.grpc_url, "llm", llm(max_tokens=4), cancel_when=lambda o:
                       o.finals == 1)
    assert again.terminals <= 1 and not again.errors
    wait_kv_idle(default_server.metrics_url)
    assert aborted(default_server) == before


def stop_id(server, request_id: str) -> Outcome:
    return run_stream(server.grpc_url, "engine", {**eng([5, 6], 1), "stop": np.array([[True]])},
                      request_id=request_id)


def test_request_ids_duplicate_unknown_finished_reused(default_server) -> None:
    """16: duplicate concurrent ids, cancelling unknown/finished ids, reusing an id."""
    url = default_server.grpc_url
    for rid in ("never-seen", ""):
        out = stop_id(default_server, rid)
        out.check()
        assert out.finals == 1 and not out.errors
    first = run_stream(url, "engine", eng([5, 6, 7], 6), request_id="dup")
    first.check()
    stopped = stop_id(default_server, "dup")  # finished already: harmless
    stopped.check()
    assert not stopped.errors
    pair = in_threads([lambda: run_stream(url, "engine", eng([5, 6, 7], 6), request_id="dup")] * 2)
    for o in pair:
        o.check()
    assert [o.errors for o in pair] == [[], []] and pair[0].outputs and pair[1].outputs
    ids = [np.concatenate([x["output_ids"].reshape(-1) for x in o.outputs if "output_ids" in x])
           for o in (first, *pair)]
    assert all(np.array_equal(ids[0], x) for x in ids), "greedy outputs differ between ids"
    # both in-flight requests sharing an id are cancelled by one stop
    victims: list[Outcome] = []
    started = [threading.Event(), threading.Event()]
    t = threading.Thread(target=lambda: victims.extend(in_threads(
        [lambda e=e: run_stream(url, "engine", eng([5, 6, 7], 480), request_id="twin",
                                cancel_when=first_token_sets(e)) for e in started])))
    t.start()
    for e in started:  # both are decoding: the stop finds them in flight, however slow the box
        assert e.wait(60), "a victim got no first token"
    stop_id(default_server, "twin").check()
    t.join(60)
    assert len(victims) == 2
    for o in victims:
        o.check()
        assert o.errors and "cancel" in o.error.lower(), o
    wait_kv_idle(default_server.metrics_url)


def timed_get(url: str) -> tuple[int, float]:
    t0 = time.monotonic()
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, time.monotonic() - t0


def test_health_under_saturation(default_server) -> None:
    """17: live/ready answer within 1 s while the engine is saturated."""
    url = default_server.http_url
    load = threading.Thread(target=lambda: in_threads(
        [lambda: run_stream(default_server.grpc_url, "llm", llm(max_tokens=480, ignore_eos=True),
                            timeout=180)] * 32))
    load.start()
    deadline = time.monotonic() + 30
    while metric(default_server.metrics_url, "nv_trt_llm_request_metrics",
                 request_type="active", model="llm") < 16:
        assert time.monotonic() < deadline, "the load never ramped up"
        time.sleep(0.1)
    worst, probes = 0.0, 0
    while load.is_alive() and probes < 30:
        for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/llm/ready"):
            status, took = timed_get(url + path)
            assert status == 200
            worst = max(worst, took)
            probes += 1
    load.join(300)
    assert probes >= 3, "the load ended before the probes ran"
    assert worst < 1.0, f"a health probe took {worst:.2f}s under load"
    wait_kv_idle(default_server.metrics_url)


# ---- 8 (queued), 10, 11, 12 and 15 (tight server) --------------------------------------------
def hog(server, request_id: str, max_tokens: int = 300) -> tuple[threading.Thread, list[Outcome]]:
    """A long `engine` request holding most of the tight pool (guaranteed_no_evict)."""
    got: list[Outcome] = []
    t = threading.Thread(target=lambda: got.append(run_stream(
        server.grpc_url, "engine", eng(list(range(5, 13)), max_tokens), request_id=request_id,
        timeout=120)))
    t.start()
    deadline = time.monotonic() + 30
    while metric(server.metrics_url, "nv_trt_llm_kv_cache_block_metrics",
                 kv_cache_block_type="used", model="engine") == 0:
        assert time.monotonic() < deadline, "the hog never started"
        time.sleep(0.1)
    return t, got


def test_cancel_while_queued(tight_server) -> None:
    """8: a request waiting for KV is cancelled through the `stop` input."""
    t, hogged = hog(tight_server, "hog-q")
    waiting: list[Outcome] = []
    w = threading.Thread(target=lambda: waiting.append(run_stream(
        tight_server.grpc_url, "engine", eng(list(range(5, 13)), 300), request_id="queued")))
    w.start()
    # queued behind the hog (which runs >= 3 s at the slowed step): wait until the engine says so
    wait_metric_above(tight_server.metrics_url, "nv_trt_llm_request_metrics", 0,
                      timeout=CANCEL_BOUND_S, request_type="waiting", model="engine")
    t0 = time.monotonic()
    stop_id(tight_server, "queued").check()
    w.join(CANCEL_BOUND_S)
    assert not w.is_alive() and time.monotonic() - t0 < CANCEL_BOUND_S
    waiting[0].check()
    assert "cancel" in waiting[0].error.lower() and not waiting[0].texts, waiting[0]
    stop_id(tight_server, "hog-q").check()
    t.join(30)
    hogged[0].check()
    wait_kv_idle(tight_server.metrics_url)


def test_queue_full_is_fast_and_exact(tight_server) -> None:
    """10: beyond max_queue_size: a fast error, one per stream; accepted ones complete."""
    t, _ = hog(tight_server, "hog-10")
    burst = in_threads([lambda: run_stream(tight_server.grpc_url, "ensemble", ens(max_tokens=100),
                                           timeout=120)] * (QUEUE_CAP + 6))
    stop_id(tight_server, "hog-10")
    t.join(60)
    for o in burst:
        o.check()
    full = [o for o in burst if o.errors]
    assert len(full) >= 1 and len(burst) - len(full) >= QUEUE_CAP - 1, [o.error for o in burst]
    assert all("exceeds maximum queue size" in o.error for o in full), [o.error for o in full]
    assert all(o.terminal_s is not None and o.terminal_s < CANCEL_BOUND_S for o in full)
    assert all(o.finals == 1 and o.text for o in burst if not o.errors)
    wait_kv_idle(tight_server.metrics_url)


PROMPTS = [f"Story {i}: once upon a time" for i in range(6)]


@pytest.mark.parametrize("model", ["ensemble", "llm"], ids=["guaranteed_no_evict", "max_utilization"])
def test_kv_oversubscription_completes_identically(tight_server, model: str) -> None:
    """11: 6 x ~130 tokens on a 24-block pool: all complete, same text as when unloaded."""
    def one(prompt: str) -> Outcome:
        inputs = (ens(prompt, 120, ignore_eos=np.array([[True]])) if model == "ensemble"
                  else llm(prompt, max_tokens=120, ignore_eos=True))
        return run_stream(tight_server.grpc_url, model, inputs, timeout=180)

    alone = [one(p) for p in PROMPTS[:3]]
    loaded = in_threads([lambda p=p: one(p) for p in PROMPTS])
    for o in alone + loaded:
        o.check()
        assert not o.errors and o.finals == 1, o
    assert [o.text for o in loaded[:3]] == [o.text for o in alone]
    wait_kv_idle(tight_server.metrics_url)


def test_request_that_can_never_fit_is_refused(tight_server) -> None:
    """12: prompt + max_tokens needs 32 blocks; the pool holds 24."""
    for model, inputs in (("ensemble", ens(max_tokens=480)), ("llm", llm(max_tokens=480))):
        out = run_stream(tight_server.grpc_url, model, inputs)
        out.check()
        assert "KV blocks" in out.error and "max_tokens" in out.error, out


def shm_segments() -> set[str]:
    return set(os.listdir("/dev/shm"))


def child_pids(pid: int) -> set[int]:
    out = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.add(int(d.name))
    return out


def wait_not_ready(server, timeout: float = 30.0) -> None:
    """Until /v2/health/ready stops answering 200: the server began shutting down."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if http(server, "/v2/health/ready") != 200:
                return
        except OSError:  # the HTTP endpoint closed or reset the connection: shutting down
            return
        assert time.monotonic() < deadline, "the server stayed ready after SIGTERM"
        time.sleep(0.05)


def test_sigterm_drains_active_streams(tight_server) -> None:
    """15 (runs last on this server): SIGTERM with active streams."""
    pid = tight_server.server.pid
    assert pid is not None
    stubs = child_pids(pid)
    segments_before = shm_segments()
    assert stubs, "no python backend stub processes found"
    results: list[Outcome] = []
    load = threading.Thread(target=lambda: results.extend(in_threads(
        [lambda: run_stream(tight_server.grpc_url, "llm", llm(max_tokens=100, ignore_eos=True),
                            timeout=60)] * 3)))
    load.start()
    deadline = time.monotonic() + 30
    while metric(tight_server.metrics_url, "nv_trt_llm_kv_cache_block_metrics",
                 kv_cache_block_type="used", model="llm") == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    tight_server.server.send_signal(signal.SIGTERM)
    wait_not_ready(tight_server)
    # Triton keeps accepting requests for a moment after SIGTERM (graceful exit) and then
    # refuses them once the model is stopping: each one gets exactly one terminal event.
    deadline = time.monotonic() + 30
    while True:
        late = run_stream(tight_server.grpc_url, "llm", llm(), timeout=20)
        late.check()
        if late.errors:
            break
        assert time.monotonic() < deadline, "new requests still accepted 30 s after SIGTERM"
    code = tight_server.server.wait(120)
    load.join(60)
    assert code == 0, tight_server.logs()[-2000:]
    assert len(results) == 3
    for o in results:
        o.check()
        assert not o.errors and o.finals == 1, o
    # the server itself left nothing: the launcher had no stub to kill, no segment to remove
    assert tight_server.server.reaped == [], "orphan stub processes"
    assert not [p for p in stubs if Path(f"/proc/{p}").exists()], "orphan stub processes"
    assert tight_server.server.removed_shm == [], "shm segments left behind"
    assert not [s for s in segments_before if s.startswith(tight_server.server.shm_prefix)
                and Path("/dev/shm", s).exists()]


# ---- 13 and the restricted API (fault server) -----------------------------------------------
FAULT_STEP = 60
ADMIN = {"admin-key": "secret"}


@pytest.fixture(scope="module")
def fault_server(triton_server_factory, model_dir: str, tmp_path_factory):
    repo = tmp_path_factory.mktemp("rel_fault")
    build(model_dir, str(repo), "llm", DEFAULT)
    add_parameter(repo / "llm" / "config.pbtxt", "fault_injection_step", str(FAULT_STEP))
    args = ["--exit-timeout-secs=10", "--model-control-mode=explicit", "--load-model=*",
            "--http-restricted-api=model-repository:admin-key=secret",
            "--grpc-restricted-protocol=model-repository:admin-key=secret"]
    running = triton_server_factory(repo, extra_args=args, ready_timeout=240, env=FAULTS_ALLOWED)
    yield running
    running.stop()


def http(server, path: str, data: bytes | None = None, headers: dict[str, str] | None = None
         ) -> int:
    req = urllib.request.Request(server.http_url + path, data=data, headers=headers or {},
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_restricted_repository_api_needs_the_key(fault_server) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    assert http(fault_server, "/v2/repository/index", b"{}") == 403
    assert http(fault_server, "/v2/repository/index", b"{}", ADMIN) == 200
    client = grpcclient.InferenceServerClient(fault_server.grpc_url)
    with pytest.raises(InferenceServerException) as e:
        client.get_model_repository_index()
    # Triton answers a restricted gRPC protocol with UNAVAILABLE "This protocol is restricted"
    assert "restricted" in str(e.value), str(e.value)
    key = {"triton-grpc-protocol-admin-key": "secret"}
    assert client.get_model_repository_index(headers=key) is not None
    assert http(fault_server, "/v2/health/ready") == 200  # inference APIs stay open


def test_engine_fault_fails_inflight_and_unreadies(fault_server) -> None:
    """13: a step raises: every in-flight request ends with one error; the model goes
    not-ready; the documented recovery (load it again, with the key) serves again."""
    url = fault_server.grpc_url
    ok = run_stream(url, "llm", llm(max_tokens=4))
    ok.check()
    assert not ok.errors
    victims = in_threads([lambda: run_stream(url, "llm", llm(max_tokens=400, ignore_eos=True),
                                             timeout=60)] * 3)
    for o in victims:
        o.check()
        assert o.errors and "injected fault" in o.error, o
    deadline = time.monotonic() + 30
    while http(fault_server, "/v2/models/llm/ready") == 200:
        assert time.monotonic() < deadline, "the model stayed ready after the engine died"
        time.sleep(0.2)
    refused = run_stream(url, "llm", llm(max_tokens=4))
    refused.check()
    assert refused.errors
    assert http(fault_server, "/v2/repository/models/llm/load", b"{}", ADMIN) == 200
    assert http(fault_server, "/v2/models/llm/ready") == 200
    again = run_stream(url, "llm", llm(max_tokens=4))
    again.check()
    assert not again.errors and again.finals == 1
