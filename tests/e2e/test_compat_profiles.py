"""Issue 12's offline checks, once on a real tritonserver: one server per profile.

- trtllm, `decoupled_mode=false` (as the peer's CI builds it): unary infer on `ensemble` and
  on the engine model (`tensorrt_llm`), batch 2; `stream=true` refused naming `stream`; the
  peer's metric family names and label sets on /metrics after a request, with the
  `nv_llm_*_token_len` histograms.
- vllm (two copies of the `llm` model, one with REPORT_CUSTOM_METRICS=true): vLLM's defaults
  (the prompt leads a non-streamed output, 16 tokens), request `parameters` honoured, `vllm:*`
  families only for the model that asked, the additional outputs on every streamed response.
"""

from __future__ import annotations

import json
import queue
import re
import shutil
import urllib.request

import numpy as np
import pytest

grpcclient = pytest.importorskip("tritonclient.grpc")
from inflight.frontends.triton.metric_families import TOKEN_LEN_BUCKETS, trtllm_groups  # noqa: E402
from inflight.testing.repos import add_parameter  # noqa: E402
from tritonclient.utils import InferenceServerException, np_to_triton_dtype  # noqa: E402

pytestmark = pytest.mark.e2e
PROMPTS = [b"Hello world", b"The cat sat"]
ENGINE = "tensorrt_llm"
PLAIN, CUSTOM = "vllm_plain", "vllm_custom"  # the vLLM profile's model, without / with vllm:*


@pytest.fixture(scope="module")
def trtllm(triton_server_factory, tmp_path_factory: pytest.TempPathFactory):
    from inflight.tools import repo

    out = tmp_path_factory.mktemp("trtllm_unary") / "repo"
    repo.build("tiny:llama", str(out), profile="trtllm",
               values={"decoupled_mode": "false", "max_seq_len": "256",
                       "max_tokens_in_paged_kv_cache": "2048"})
    return triton_server_factory(out, ready_timeout=240)


@pytest.fixture(scope="module")
def vllm(triton_server_factory, tmp_path_factory: pytest.TempPathFactory):
    from inflight.tools import repo

    base = tmp_path_factory.mktemp("vllm")
    built = repo.build("tiny:llama", str(base / "built"), profile="vllm",
                       values={"max_seq_len": "256", "max_tokens_in_paged_kv_cache": "1024"})
    models = base / "models"
    for name in (PLAIN, CUSTOM):  # as the peer's CI copies its sample model
        shutil.copytree(f"{built}/llm", models / name)
        cfg = models / name / "config.pbtxt"
        cfg.write_text(re.sub(r'^name: "llm"', f'name: "{name}"', cfg.read_text(), flags=re.M))
    add_parameter(models / CUSTOM / "config.pbtxt", "REPORT_CUSTOM_METRICS", "true")
    return triton_server_factory(models, ready_timeout=240)


def _inputs(tensors: dict[str, np.ndarray]) -> list:
    out = []
    for name, arr in tensors.items():
        t = grpcclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        t.set_data_from_numpy(arr)
        out.append(t)
    return out


def _client(server):
    return grpcclient.InferenceServerClient(server.grpc_url.replace("grpc://", ""))


def _families(server) -> dict[str, list[dict[str, str]]]:
    """/metrics -> {family: [labels of each sample]}."""
    body = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    out: dict[str, list[dict[str, str]]] = {}
    for line in body.splitlines():
        m = re.match(r"^([^#\s{]+)\{(.*)\} \S+$", line)
        if m:
            out.setdefault(m.group(1), []).append(dict(re.findall(r'(\w+)="([^"]*)"', m.group(2))))
    return out


# ---- TensorRT-LLM profile, decoupled_mode=false ------------------------------------------
def test_unary_repository_answers_ensemble_and_engine_batch_of_two(trtllm) -> None:
    c = _client(trtllm)
    r = c.infer("ensemble", _inputs({"text_input": np.array([[p] for p in PROMPTS], dtype=object),
                                     "max_tokens": np.full((2, 1), 5, dtype=np.int32)}))
    text = r.as_numpy("text_output")
    assert text.shape == (2,) and [t.startswith(p) for t, p in zip(text, PROMPTS)] == [True, True]
    ids = np.array([[1, 15, 31], [1, 45, 0]], dtype=np.int32)  # second prompt padded
    e = c.infer(ENGINE, _inputs({"input_ids": ids, "input_lengths": np.array([[3], [2]], dtype=np.int32),
                                 "request_output_len": np.full((2, 1), 4, dtype=np.int32)}))
    out, lengths = e.as_numpy("output_ids"), e.as_numpy("sequence_length")
    assert out.shape[:2] == (2, 1) and lengths.shape == (2, 1)
    assert lengths.reshape(-1).tolist() == [3 + 4, 2 + 4]  # prompt kept (exclude_input_in_output=false)
    assert out[0, 0, :3].tolist() == ids[0].tolist() and out[1, 0, :2].tolist() == ids[1, :2].tolist()


def test_unary_repository_refuses_stream_naming_it(trtllm) -> None:
    with pytest.raises(InferenceServerException, match="stream"):
        _client(trtllm).infer("ensemble", _inputs({
            "text_input": np.array([[PROMPTS[0]]], dtype=object),
            "max_tokens": np.array([[4]], dtype=np.int32), "stream": np.array([[True]])}))


def test_trtllm_metric_families_and_label_sets(trtllm) -> None:
    _client(trtllm).infer("ensemble", _inputs({"text_input": np.array([[PROMPTS[0]]], dtype=object),
                                               "max_tokens": np.array([[4]], dtype=np.int32)}))
    fams = _families(trtllm)
    for family, (_, key, pairs) in trtllm_groups(v1=False).items():
        samples = [s for s in fams.get(family, []) if s.get("model") == ENGINE]
        assert {s[key] for s in samples} == {v for _, v in pairs}, family
        assert all(set(s) == {"model", "version", key} for s in samples), family
    assert "nv_trt_llm_v1_metrics" not in fams
    for family, kind in (("nv_llm_input_token_len", "total_input_tokens"),
                         ("nv_llm_output_token_len", "total_output_tokens")):
        buckets = [s for s in fams[family + "_bucket"] if s.get("model") == ENGINE]
        assert {s["response_metric_type"] for s in buckets} == {kind}
        assert sorted(float(s["le"]) for s in buckets if s["le"] != "+Inf") == TOKEN_LEN_BUCKETS
        assert family + "_count" in fams and family + "_sum" in fams
    assert not any(f.startswith("vllm:") for f in fams)


# ---- vLLM profile ---------------------------------------------------------------------------
def _events(server, model: str, tensors: dict[str, np.ndarray], **kw) -> list:
    q: queue.Queue = queue.Queue()
    c = _client(server)
    c.start_stream(callback=lambda result, error: q.put((result, error)))
    c.async_stream_infer(model, _inputs(tensors), **kw)
    c.stop_stream()  # waits for the stream to end
    return [q.get() for _ in range(q.qsize())]


def _stream(server, model: str, tensors: dict[str, np.ndarray], **kw) -> list:
    out = _events(server, model, tensors, **kw)
    assert all(e is None for _, e in out), out
    return [r for r, _ in out]


def _one(text: bytes, **extra: np.ndarray) -> dict[str, np.ndarray]:
    return {"text_input": np.array([text], dtype=object), **extra}


def _flag() -> np.ndarray:
    return np.array([True])


def _sp(params: dict) -> np.ndarray:
    return np.array([json.dumps(params).encode()], dtype=object)


def test_vllm_defaults_echo_and_16_tokens(vllm) -> None:
    rs = _stream(vllm, PLAIN, _one(PROMPTS[0], sampling_parameters=_sp({"ignore_eos": True}),
                                   return_num_output_tokens=_flag()))
    texts = [r.as_numpy("text_output") for r in rs if r.as_numpy("text_output") is not None]
    assert len(texts) == 1 and texts[0][0].startswith(PROMPTS[0])  # not streamed: prompt first
    assert int(rs[-1].as_numpy("num_output_tokens")[0]) == 16


def test_vllm_request_parameters_are_honoured(vllm) -> None:
    rs = _stream(vllm, PLAIN, _one(PROMPTS[0], return_num_output_tokens=_flag()),
                 parameters={"max_tokens": 3, "ignore_eos": True, "temperature": 0})
    assert int(rs[-1].as_numpy("num_output_tokens")[0]) == 3
    events = _events(vllm, PLAIN, _one(PROMPTS[0]), parameters={"max_tokens": "many"})
    assert [str(e).count("parameters.max_tokens") for _, e in events] == [1], events


def test_vllm_additional_outputs_on_every_streamed_response(vllm) -> None:
    flags = {f"return_{n}": _flag() for n in ("finish_reason", "cumulative_logprob",
                                             "num_input_tokens", "num_output_tokens")}
    rs = _stream(vllm, PLAIN, _one(PROMPTS[1], stream=_flag(), **flags,
                                   sampling_parameters=_sp({"max_tokens": 5, "ignore_eos": True})))
    rs = [r for r in rs if r.as_numpy("text_output") is not None]
    # one response per token unless the sender fell behind the engine (it then merges what
    # piled up: docs/architecture.md step 4), so at most 5; the token counts add up to 5
    assert 1 <= len(rs) <= 5
    for r in rs:
        for name in ("finish_reason", "cumulative_logprob", "num_input_tokens", "num_output_tokens"):
            assert r.as_numpy(name) is not None, name
    reasons = [r.as_numpy("finish_reason")[0] for r in rs]
    assert reasons[:-1] == [b"None"] * (len(rs) - 1) and reasons[-1] == b"length"
    assert sum(int(r.as_numpy("num_output_tokens")[0]) for r in rs) == 5


def test_vllm_metrics_only_with_report_custom_metrics(vllm) -> None:
    for model in (PLAIN, CUSTOM):
        _stream(vllm, model, _one(PROMPTS[0], sampling_parameters=_sp({"max_tokens": 2})))
    fams = _families(vllm)
    vllm_models = {s.get("model") for f, ss in fams.items() if f.startswith("vllm:") for s in ss}
    assert vllm_models == {CUSTOM}
    for family in ("vllm:prompt_tokens_total", "vllm:generation_tokens_total",
                   "vllm:time_to_first_token_seconds_count", "vllm:e2e_request_latency_seconds_count",
                   "vllm:num_requests_running", "vllm:gpu_cache_usage_perc"):
        assert family in fams, family
