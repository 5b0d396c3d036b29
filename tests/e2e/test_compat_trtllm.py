"""Issue 12 against a real tritonserver: the TensorRT-LLM profile (`inflight repo build
--profile trtllm`), default decoupled_mode=true. One server: unary infer (gRPC and HTTP,
batch 2) on `ensemble_unary` and streaming on `ensemble` from the one engine, output shapes as
the peer's, no prompt in a stream, the peer's perf-metric output names, unimplemented inputs
named by feature, errors naming the tensor the client sent; `ensemble_unary` under a client
cancel and a client timeout (the engine request is aborted, its KV blocks freed, the client
gets exactly one answer, the server keeps serving); `max_queue_size` in Triton's queue policy
(where the peer keeps it), enforced by Triton and by the engine (one running slot,
`max_batch_size=1`). Steps are slowed to STEP_DELAY_MS (a test-only knob) so the long requests
of the cancel and queue tests are still running when cancelled."""

from __future__ import annotations

import queue
import threading

import numpy as np
import pytest

grpcclient = pytest.importorskip("tritonclient.grpc")
httpclient = pytest.importorskip("tritonclient.http")
from inflight.testing.repos import add_parameter  # noqa: E402
from inflight.testing.streams import metric, wait_kv_idle, wait_metric_above  # noqa: E402
from tritonclient.utils import InferenceServerException, np_to_triton_dtype  # noqa: E402

pytestmark = pytest.mark.e2e
PROMPTS = [b"Hello world", b"The cat sat"]
ENGINE = "tensorrt_llm"
STEP_DELAY_MS = 10
LONG = 480  # tokens: >= 4.8 s of steps, far longer than a cancel or the client timeout
CANCEL_BOUND_S = 20.0  # generous: a loaded 2-core CI box
QUEUE = 2  # max_queue_size: Triton's queue policy and the engine's waiting requests


@pytest.fixture(scope="module")
def server(triton_server_factory, tmp_path_factory: pytest.TempPathFactory):
    from inflight.tools import repo

    out = tmp_path_factory.mktemp("trtllm") / "repo"
    repo.build("tiny:llama", str(out), profile="trtllm",
               values={"max_seq_len": "512", "max_tokens_in_paged_kv_cache": "2048",
                       "max_batch_size": "1", "max_queue_size": str(QUEUE)})
    add_parameter(out / ENGINE / "config.pbtxt", "fault_injection_step_delay_ms", str(STEP_DELAY_MS))
    return triton_server_factory(out, ready_timeout=240, env={"INFLIGHT_ALLOW_FAULT_INJECTION": "1"})


def _inputs(mod, tensors: dict[str, np.ndarray]) -> list:
    out = []
    for name, arr in tensors.items():
        t = mod.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


def _batch(n: int = 2, **extra: np.ndarray) -> dict[str, np.ndarray]:
    return {"text_input": np.array([[p] for p in PROMPTS[:n]], dtype=object),
            "max_tokens": np.full((n, 1), 6, dtype=np.int32), **extra}


def _grpc(server):
    return grpcclient.InferenceServerClient(server.grpc_url.replace("grpc://", ""))


def _stream(server, model: str, tensors: dict[str, np.ndarray]) -> list:
    q: queue.Queue = queue.Queue()
    c = _grpc(server)
    c.start_stream(callback=lambda result, error: q.put((result, error)))
    c.async_stream_infer(model, _inputs(grpcclient, tensors))
    c.stop_stream()  # waits for the stream to end
    out = []
    while not q.empty():
        out.append(q.get())
    return out


def test_unary_grpc_and_http_batch_of_two(server) -> None:
    r = _grpc(server).infer("ensemble_unary", _inputs(grpcclient, _batch()))
    text = r.as_numpy("text_output")
    assert text.shape == (2,)  # one string per batch item, as the peer's postprocessing shapes it
    assert r.as_numpy("batch_index").reshape(-1).tolist() == [0, 1]
    assert [t.startswith(p) for t, p in zip(text, PROMPTS)] == [True, True]  # exclude_input_in_output=false
    h = httpclient.InferenceServerClient(server.http_url.replace("http://", ""))
    hr = h.infer("ensemble_unary", _inputs(httpclient, _batch()))
    assert hr.as_numpy("text_output").tolist() == text.tolist()  # greedy by default, as the peer


def test_stream_never_repeats_the_prompt_and_matches_unary(server) -> None:
    unary = _grpc(server).infer("ensemble_unary", _inputs(grpcclient, _batch(1)))
    full = unary.as_numpy("text_output")[0]
    events = _stream(server, "ensemble", _batch(1, stream=np.array([[True]])))
    assert all(e is None for _, e in events), events
    chunks = [r.as_numpy("text_output") for r, _ in events if r.as_numpy("text_output") is not None]
    assert len(chunks) > 1 and all(c.shape == (1,) for c in chunks)
    streamed = b"".join(c[0] for c in chunks)
    assert not streamed.startswith(PROMPTS[0]) and full == PROMPTS[0] + streamed


def test_perf_metrics_outputs_have_the_peer_names(server) -> None:
    events = _stream(server, "ensemble", _batch(1, return_perf_metrics=np.array([[True]]),
                                                 exclude_input_in_output=np.array([[True]])))
    last = events[-1][0]
    for name in ("kv_cache_alloc_new_blocks", "kv_cache_reused_blocks", "kv_cache_alloc_total_blocks",
                 "arrival_time_ns", "first_token_time_ns", "last_token_time_ns", "total_draft_tokens"):
        assert last.as_numpy(name) is not None, name
    assert float(last.as_numpy("acceptance_rate")[0][0]) == 0.0


@pytest.mark.parametrize("extra, message", [
    ({"num_return_sequences": np.array([[100000]], dtype=np.int32)}, "num_return_sequences: "),
    ({"lora_task_id": np.array([[3]], dtype=np.uint64)}, "lora_task_id: LoRA is not supported"),
    ({"top_p": np.array([[1.5]], dtype=np.float32)}, "top_p: must be in (0, 1]"),
])
def test_errors_name_what_the_client_sent(server, extra: dict, message: str) -> None:
    with pytest.raises(InferenceServerException) as e:
        _grpc(server).infer("ensemble_unary", _inputs(grpcclient, _batch(1, **extra)))
    assert message in str(e.value)
    events = _stream(server, "ensemble", _batch(1, **extra))
    assert any(err is not None and message in str(err) for _, err in events), events


def _aborts(server) -> float:
    return metric(server.metrics_url, "inflight_request_success_total", model=ENGINE,
                  finish_reason="abort")


def _long_request() -> list:
    # min_tokens = max_tokens: the random model's end id cannot end it early
    return _inputs(grpcclient, _batch(1, max_tokens=np.array([[LONG]], dtype=np.int32),
                                      min_tokens=np.array([[LONG]], dtype=np.int32)))


def _wait_running(server) -> None:
    """Until the engine runs the request (it is past the front models)."""
    wait_metric_above(server.metrics_url, "nv_trt_llm_request_metrics", 0.0,
                      timeout=CANCEL_BOUND_S, model=ENGINE, request_type="active")


def _after_stop(server, aborts_before: float) -> None:
    wait_metric_above(server.metrics_url, "inflight_request_success_total", aborts_before,
                      timeout=CANCEL_BOUND_S, model=ENGINE, finish_reason="abort")
    wait_kv_idle(server.metrics_url, timeout=CANCEL_BOUND_S, model=ENGINE)
    assert _aborts(server) == aborts_before + 1
    assert "Traceback" not in server.logs()  # e.g. a second response on a closed sender
    # healthy: ready, and the next request gets its whole answer
    c = _grpc(server)
    assert c.is_server_ready() and c.is_model_ready("ensemble_unary")
    r = c.infer("ensemble_unary", _inputs(grpcclient, _batch(1)))
    assert r.as_numpy("text_output")[0].startswith(PROMPTS[0])


def test_unary_client_cancel_stops_the_engine_request(server) -> None:
    wait_kv_idle(server.metrics_url, model=ENGINE)
    aborts = _aborts(server)
    tokens = metric(server.metrics_url, "inflight_generation_tokens_total", model=ENGINE)
    answers: list = []
    done = threading.Event()

    def callback(result, error) -> None:
        answers.append((result, error))
        done.set()

    ctx = _grpc(server).async_infer("ensemble_unary", _long_request(), callback)
    _wait_running(server)
    ctx.cancel()
    assert done.wait(CANCEL_BOUND_S)
    _after_stop(server, aborts)
    assert len(answers) == 1, answers  # exactly one answer: the cancel
    result, error = answers[0]
    assert result is None and "cancel" in str(error).lower(), answers
    ran = metric(server.metrics_url, "inflight_generation_tokens_total", model=ENGINE) - tokens
    assert 0 < ran < LONG + 6, ran  # stopped early (the health check added at most 6)


def test_unary_client_timeout_stops_the_engine_request(server) -> None:
    wait_kv_idle(server.metrics_url, model=ENGINE)
    aborts = _aborts(server)
    tokens = metric(server.metrics_url, "inflight_generation_tokens_total", model=ENGINE)
    with pytest.raises(InferenceServerException) as e:
        _grpc(server).infer("ensemble_unary", _long_request(), client_timeout=3.0)
    assert "deadline" in str(e.value).lower(), str(e.value)
    _after_stop(server, aborts)
    ran = metric(server.metrics_url, "inflight_generation_tokens_total", model=ENGINE) - tokens
    assert 0 < ran < LONG + 6, ran


def _engine_request(tokens: int) -> list:
    """A streamed request on the engine model itself (as the peer's test_max_queue_size.py
    sends it over gRPC); min_tokens = tokens so the random model cannot end it early."""
    return _inputs(grpcclient, {
        "input_ids": np.array([[5, 6, 7, 8]], dtype=np.int32),
        "input_lengths": np.array([[4]], dtype=np.int32),
        "request_output_len": np.array([[tokens]], dtype=np.int32),
        "min_tokens": np.array([[tokens]], dtype=np.int32),
        "streaming": np.array([[True]])})


def test_max_queue_size_is_tritons_queue_policy_and_the_engines(server) -> None:
    cfg = _grpc(server).get_model_config(ENGINE, as_json=True)["config"]
    assert int(cfg["dynamic_batching"]["default_queue_policy"]["max_queue_size"]) == QUEUE
    wait_kv_idle(server.metrics_url, model=ENGINE)
    aborts = _aborts(server)
    hog, burst = _grpc(server), _grpc(server)
    hog.start_stream(callback=lambda result, error: None)
    hog.async_stream_infer(ENGINE, _engine_request(LONG))
    _wait_running(server)  # the engine's one running slot is taken for >= 4.8 s
    answers: queue.Queue = queue.Queue()
    burst.start_stream(callback=lambda result, error: answers.put((result, error)))
    sent = QUEUE + 8
    for _ in range(sent):
        burst.async_stream_infer(ENGINE, _engine_request(4))
    # while the hog runs, at most QUEUE wait in Triton's queue and QUEUE in the engine's
    refused: list[str] = []
    while len(refused) < sent - 2 * QUEUE:
        result, error = answers.get(timeout=CANCEL_BOUND_S)
        if error is not None:
            refused.append(error.message())
    hog.stop_stream(cancel_requests=True)
    burst.stop_stream()  # the accepted ones run to their end
    while not answers.empty():
        result, error = answers.get()
        if error is not None:
            refused.append(error.message())
    # both refusals (Triton's queue, the engine's) carry the phrase the peer's gRPC check wants
    assert all("Exceeds maximum queue size" in m for m in refused), refused
    assert sent - 2 * QUEUE <= len(refused) <= sent, refused
    _after_stop(server, aborts)
