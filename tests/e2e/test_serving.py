"""End to end through a real tritonserver: ensemble, bls and llm over gRPC and HTTP.

One server (session scope) serves both layouts from one repository; the reference text comes
from the in-process `LLM` API on the same tiny checkpoint and engine settings.
"""

from __future__ import annotations

import json
import re
import threading
import time

import numpy as np
import pytest

pytestmark = pytest.mark.e2e
grpcclient = pytest.importorskip("tritonclient.grpc")

from inflight import LLM, SamplingParams  # noqa: E402
from inflight.client.grpc_stream import GrpcStream, StreamError, decode_text  # noqa: E402
from inflight.client.http import generate as http_generate  # noqa: E402
from inflight.client.http import generate_stream as http_generate_stream  # noqa: E402
from inflight.testing import streams  # noqa: E402
from inflight.testing.repos import add_parameter  # noqa: E402
from inflight.testing.tiny import tiny_model_dir  # noqa: E402
from inflight.tools.repo import build  # noqa: E402

ENGINE = {"max_tokens_in_paged_kv_cache": "4096", "max_seq_len": "512", "stream_interval": "1"}
PROMPTS = ["Hello world, this is", "The quick brown fox", "1 2 3 4"]
MAX_TOKENS = 24


@pytest.fixture(scope="session")
def model_dir() -> str:
    return tiny_model_dir("llama")


@pytest.fixture(scope="session")
def server(triton_server_factory, model_dir: str, tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("repo")
    build(model_dir, str(repo), "ensemble", ENGINE)
    build(model_dir, str(repo), "llm", ENGINE, force=True)
    # the stop test needs its 400-token victim still running when the stop arrives: the engine
    # process (issue 13) generates them in well under a second on an idle box, so the engine
    # model's steps take >= 5 ms (>= 2 s for the victim; a stop takes well under that)
    add_parameter(repo / "engine" / "config.pbtxt", "fault_injection_step_delay_ms", "5")
    running = triton_server_factory(repo, ready_timeout=240,
                                    env={"INFLIGHT_ALLOW_FAULT_INJECTION": "1"})
    yield running
    running.stop()


@pytest.fixture(scope="session")
def reference(model_dir: str) -> dict[str, str]:
    with LLM(model_dir, max_tokens_in_paged_kv_cache=4096, max_seq_len=512) as llm:
        outs = llm.generate(PROMPTS, SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0))
    return {p: o.text for p, o in zip(PROMPTS, outs)}


def ensemble_inputs(
    prompt: str | list[str], stream: bool, **extra: np.ndarray
) -> dict[str, np.ndarray]:
    prompts = [prompt] if isinstance(prompt, str) else prompt
    b = len(prompts)
    inputs = {
        "text_input": np.array([[p.encode()] for p in prompts], dtype=object),
        "max_tokens": np.full((b, 1), MAX_TOKENS, dtype=np.int32),
        "temperature": np.zeros((b, 1), dtype=np.float32),
        "stream": np.full((b, 1), stream, dtype=bool),
    }
    inputs.update(extra)
    return inputs


def llm_inputs(prompt: str, stream: bool, **params: object) -> dict[str, np.ndarray]:
    sp = {"max_tokens": MAX_TOKENS, "temperature": 0, **params}
    return {
        "text_input": np.array([prompt.encode()], dtype=object),
        "stream": np.array([stream], dtype=bool),
        "sampling_parameters": np.array([json.dumps(sp).encode()], dtype=object),
    }


def grpc_texts(server, model: str, inputs: dict[str, np.ndarray]) -> tuple[list[str], int]:
    """-> (text of every non-empty response in order, number of final responses)."""
    texts, finals = [], 0
    with GrpcStream(server.grpc_url) as s:
        for r in s.generate(model, inputs, timeout=120):
            finals += r.is_final
            texts.extend(decode_text(r.outputs.get("text_output")))
    return texts, finals


def metric(server, name: str, **labels: str) -> float:
    return streams.metric(server.metrics_url, name, **labels)


@pytest.mark.parametrize("model", ["ensemble", "bls", "llm"])
@pytest.mark.parametrize("stream", [False, True])
def test_grpc_greedy_equals_llm_api(server, reference, model: str, stream: bool) -> None:
    for prompt in PROMPTS:
        inputs = llm_inputs(prompt, stream) if model == "llm" else ensemble_inputs(prompt, stream)
        texts, finals = grpc_texts(server, model, inputs)
        assert finals == 1
        assert "".join(texts) == reference[prompt]
        if not stream:
            assert len([t for t in texts if t]) <= 1


@pytest.mark.parametrize("model", ["ensemble", "llm"])
def test_http_generate_and_stream(server, reference, model: str) -> None:
    prompt = PROMPTS[1]
    body = (
        {"text_input": prompt, "max_tokens": MAX_TOKENS, "temperature": 0.0}
        if model == "ensemble"
        else {
            "text_input": prompt,
            "sampling_parameters": json.dumps({"max_tokens": MAX_TOKENS, "temperature": 0}),
        }
    )
    assert http_generate(server.http_url, model, body)["text_output"] == reference[prompt]
    events = list(http_generate_stream(server.http_url, model, {**body, "stream": True}))
    assert "".join(e["text_output"] for e in events) == reference[prompt]


def test_batch_index_and_num_return_sequences(server, reference) -> None:
    texts: dict[int, str] = {}
    with GrpcStream(server.grpc_url) as s:
        for r in s.generate("ensemble", ensemble_inputs(PROMPTS, False), timeout=120):
            if "batch_index" in r.outputs:
                texts[int(r.outputs["batch_index"].reshape(-1)[0])] = decode_text(
                    r.outputs["text_output"]
                )[0]
    assert texts == {i: reference[p] for i, p in enumerate(PROMPTS)}
    extra = {
        "num_return_sequences": np.array([[2]], dtype=np.int32),
        "temperature": np.array([[0.9]], dtype=np.float32),
        "seed": np.array([[7]], dtype=np.uint64),
    }
    seqs = {}
    with GrpcStream(server.grpc_url) as s:
        for r in s.generate("ensemble", ensemble_inputs(PROMPTS[0], False, **extra), timeout=120):
            if "sequence_index" in r.outputs:
                seqs[int(r.outputs["sequence_index"].reshape(-1)[0])] = decode_text(
                    r.outputs["text_output"]
                )[0]
    assert sorted(seqs) == [0, 1] and all(seqs.values())


def test_ensemble_responses_carry_only_what_was_asked(server, reference) -> None:
    """Issue 13: a streamed ensemble response holds text_output (+ finish_reason on the final
    one); optional outputs come only when asked, and then on every response."""
    prompt = PROMPTS[0]

    def outputs(**extra: np.ndarray) -> tuple[list[set[str]], str]:
        names, text = [], ""
        with GrpcStream(server.grpc_url) as s:
            for r in s.generate("ensemble", ensemble_inputs(prompt, True, **extra), timeout=120):
                if r.outputs:
                    names.append(set(r.outputs))
                    text += "".join(decode_text(r.outputs.get("text_output")))
        return names, text

    plain, text = outputs()
    assert text == reference[prompt]
    assert all(n == {"text_output"} for n in plain[:-1]), plain
    assert plain[-1] == {"text_output", "finish_reason"}
    yes = np.array([[True]])
    asked, text = outputs(return_num_input_tokens=yes, return_log_probs=yes)
    assert text == reference[prompt]
    assert all({"num_input_tokens", "output_log_probs", "cum_log_probs"} <= n for n in asked)
    assert not any({"batch_index", "sequence_index"} & n for n in plain + asked)


def wait_kv_idle(server, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        used = metric(server, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="used")
        active = metric(server, "nv_trt_llm_request_metrics", request_type="active")
        if used == 0 and active == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"KV blocks still used: {used}, active requests: {active}")


def test_cancel_mid_stream_frees_kv(server) -> None:
    aborted = metric(server, "inflight_request_success_total", finish_reason="abort", model="llm")
    with GrpcStream(server.grpc_url) as s:
        it = s.generate(
            "llm", llm_inputs(PROMPTS[0], True, max_tokens=400, ignore_eos=True), timeout=60
        )
        next(it)
        s.cancel()  # stop_stream(cancel_requests=True)
    deadline = time.monotonic() + 20
    while (
        metric(server, "inflight_request_success_total", finish_reason="abort", model="llm")
        <= aborted
    ):
        assert time.monotonic() < deadline, "cancelled request was not aborted in the engine"
        time.sleep(0.2)
    wait_kv_idle(server)


def test_stop_input_cancels_request(server) -> None:
    ids = np.array([[5, 6, 7, 8]], dtype=np.int32)
    inputs = {
        "input_ids": ids,
        "input_lengths": np.array([[4]], dtype=np.int32),
        "max_tokens": np.array([[400]], dtype=np.int32),
        "stream": np.array([[True]]),
        "ignore_eos": np.array([[True]]),
    }
    errors: list[str] = []
    finals = []
    decoding = threading.Event()

    def run() -> None:
        try:
            with GrpcStream(server.grpc_url) as s:
                for r in s.generate("engine", inputs, request_id="victim-1", timeout=60):
                    finals.append(r.is_final)
                    decoding.set()
        except StreamError as e:
            errors.append(str(e))

    t = threading.Thread(target=run)
    t.start()
    assert decoding.wait(60), "the victim got no first token"  # in flight, however slow the box
    stop = {
        "input_ids": ids,
        "input_lengths": np.array([[4]], dtype=np.int32),
        "max_tokens": np.array([[1]], dtype=np.int32),
        "stop": np.array([[True]]),
    }
    with GrpcStream(server.grpc_url) as s:
        assert [
            r.is_final for r in s.generate("engine", stop, request_id="victim-1", timeout=30)
        ] == [True]
    t.join(30)
    assert not t.is_alive()
    assert len(errors) == 1 and "cancel" in errors[0].lower(), (errors, finals)
    wait_kv_idle(server)


def test_concurrent_streams_each_get_one_final(server, reference) -> None:
    results: list[tuple[str, int] | Exception] = []

    def run(i: int) -> None:
        prompt = PROMPTS[i % len(PROMPTS)]
        try:
            texts, finals = grpc_texts(server, "llm", llm_inputs(prompt, True))
            results.append((prompt if "".join(texts) == reference[prompt] else "MISMATCH", finals))
        except Exception as e:  # noqa: BLE001 - collected and asserted below
            results.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert len(results) == 32
    assert all(isinstance(r, tuple) and r[0] != "MISMATCH" and r[1] == 1 for r in results), results
    wait_kv_idle(server)


def test_metrics_count_tokens_exactly(server, model_dir: str) -> None:
    wait_kv_idle(server)
    p0 = metric(server, "inflight_prompt_tokens_total", model="llm")
    g0 = metric(server, "inflight_generation_tokens_total", model="llm")
    grpc_texts(server, "llm", llm_inputs(PROMPTS[0], False, max_tokens=7, ignore_eos=True))
    grpc_texts(server, "llm", llm_inputs(PROMPTS[1], False, max_tokens=5, ignore_eos=True))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    n_prompt = len(tok(PROMPTS[0])["input_ids"]) + len(tok(PROMPTS[1])["input_ids"])
    deadline = time.monotonic() + 10
    while metric(server, "inflight_generation_tokens_total", model="llm") < g0 + 12:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert metric(server, "inflight_generation_tokens_total", model="llm") == g0 + 12
    assert metric(server, "inflight_prompt_tokens_total", model="llm") == p0 + n_prompt


BAD_INPUTS = [
    ("max_tokens", {"max_tokens": None}),
    ("max_tokens", {"max_tokens": np.array([[8.0]], dtype=np.float32)}),
    ("top_p", {"top_p": np.array([[0.0]], dtype=np.float32)}),
    ("temperature", {"temperature": np.array([[np.nan]], dtype=np.float32)}),
    ("max_tokens", {"max_tokens": np.array([[2**31 - 1]], dtype=np.int32)}),
    ("end_id", {"end_id": np.array([[10**6]], dtype=np.int32)}),
]


@pytest.mark.parametrize(
    "field,override", BAD_INPUTS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_INPUTS)]
)
def test_bad_input_is_invalid_arg_and_server_keeps_serving(
    server, reference, field: str, override
) -> None:
    inputs = ensemble_inputs(PROMPTS[0], False)
    for k, v in override.items():
        if v is None:
            inputs.pop(k)
        else:
            inputs[k] = v
    with pytest.raises(StreamError) as e:
        grpc_texts(server, "ensemble", inputs)
    assert re.search(rf"\b{field}\b", str(e.value)), str(e.value)
    # our own checks say what is allowed; Triton's dtype check says what it expects
    assert re.search(r"must|required|expects|allowed", str(e.value)), str(e.value)
    texts, finals = grpc_texts(server, "ensemble", ensemble_inputs(PROMPTS[0], False))
    assert "".join(texts) == reference[PROMPTS[0]] and finals == 1


@pytest.mark.parametrize("model,engine", [("ensemble", "engine"), ("llm", "llm")])
def test_load_curve_splits_ttft_into_engine_and_front_door(server, model: str, engine: str) -> None:
    """The load curve with Triton's /metrics: per rate, the engine's own mean TTFT (from the
    request's arrival in the engine), which no request's client-side TTFT can be below."""
    from inflight.tools.bench.serve import run_curve

    prompts = [f"{p} {i}" for i, p in enumerate(PROMPTS * 2)]
    rows = run_curve(server.grpc_url, model, prompts, [4, 6, 3, 5, 4, 2], [100.0, float("inf")],
                     metrics_url=server.metrics_url, metrics_model=engine, concurrency=3, streams=2)
    assert [r["errors"] for r in rows] == [0, 0]
    for r in rows:
        assert r["engine_ttft_mean_ms"] is not None and r["engine_queue_mean_ms"] is not None, r
        # per request the engine's TTFT is inside the client's, so its mean is below the
        # client's mean, itself at most the client's p99
        assert 0 < r["engine_ttft_mean_ms"] <= r["ttft_p99_ms"], r
        assert 0 <= r["engine_queue_mean_ms"] <= r["engine_ttft_mean_ms"], r


@pytest.mark.parametrize("model", ["ensemble", "llm"])
@pytest.mark.parametrize("rate", [float("inf"), 200.0])
def test_bench_serve_counts_tokens_and_errors(server, model: str, rate: float) -> None:
    """`inflight bench serve`'s driver: exact token counts, and a failed request (max_tokens
    beyond max_seq_len) is counted as an error instead of stalling its stream."""
    from inflight.tools.bench.serve import run_serve

    prompts = [f"{p} {i}" for i, p in enumerate(PROMPTS * 2)]
    lens = [5, 9, 3, 7, 900, 4]  # 900 > max_seq_len (512): refused
    res = run_serve(server.grpc_url, model, prompts, lens, rate=rate, concurrency=3, streams=2)
    assert res["requests"] == 6 and res["errors"] == 1, res
    assert res["output_tokens"] == sum(n for n in lens if n != 900)
    assert len(res["_ttft"]) == 5 and all(t > 0 for t in res["_ttft"])
    # the three slowest first tokens, by send index: never the refused request (#4)
    slow = res["ttft_slowest"]
    assert len(slow) == 3 and 4 not in [w["request"] for w in slow], slow
    assert slow[0]["ttft_ms"] == round(max(res["_ttft"]) * 1000, 3) and slow[0]["ttft_ms"] >= slow[2]["ttft_ms"]
    # one response per token unless the sender coalesced tokens of a backed-up stream
    assert 0 < len(res["_itl"]) <= sum(n - 1 for n in lens if n != 900)
