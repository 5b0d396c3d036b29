"""Quantized models served end to end through a real tritonserver (issue 14): the `llm`
layout with FP8 weights and FP8 KV cache quantized on load (`quantization=fp8`,
`kv_cache_dtype=fp8`), and an INT4 AWQ checkpoint written by `inflight quantize`. On CPU the
quantized linears and the e4m3 cache run their reference paths; the served text must equal
the in-process `LLM` API with the same settings, streamed deltas must concatenate to the
non-streamed text, and a burst of ShareGPT-like requests must finish without errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.e2e
pytest.importorskip("tritonclient.grpc")

from inflight import LLM, SamplingParams  # noqa: E402
from inflight.client.grpc_stream import GrpcStream, decode_text  # noqa: E402
from inflight.testing.trained import trained_model_dir  # noqa: E402
from inflight.tools.quantize import quantize_checkpoint  # noqa: E402
from inflight.tools.repo import build  # noqa: E402

PROMPTS = ["Hello world, this is", "The quick brown fox", "1 2 3 4"]
MAX_TOKENS = 16
ENGINE = {"max_tokens_in_paged_kv_cache": "2048", "max_seq_len": "256"}
CASES = {  # name -> (checkpoint maker, repository parameters = LLM kwargs)
    "fp8": (lambda tmp: trained_model_dir("llama"), {"quantization": "fp8", "kv_cache_dtype": "fp8"}),
    "int4-awq": (lambda tmp: quantize_checkpoint(trained_model_dir("llama"), str(tmp / "awq"), "int4-awq", 64),
                 {}),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def served(request, triton_server_factory, tmp_path_factory: pytest.TempPathFactory):
    make, params = CASES[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    model_dir = make(tmp)
    repo = tmp / "repo"
    build(model_dir, str(repo), "llm", {**ENGINE, **params})
    kw = {k: int(v) for k, v in ENGINE.items()} | params
    with LLM(model_dir, **kw) as llm:
        outs = llm.generate(PROMPTS, SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0))
    reference = {p: o.text for p, o in zip(PROMPTS, outs)}
    running = triton_server_factory(repo, ready_timeout=240)
    yield running, reference, request.param
    running.stop()


def _texts(server, prompt: str, stream: bool) -> tuple[list[str], int]:
    sp = {"max_tokens": MAX_TOKENS, "temperature": 0}
    inputs = {"text_input": np.array([prompt.encode()], dtype=object),
              "stream": np.array([stream], dtype=bool),
              "sampling_parameters": np.array([json.dumps(sp).encode()], dtype=object)}
    texts, finals = [], 0
    with GrpcStream(server.grpc_url) as s:
        for r in s.generate("llm", inputs, timeout=120):
            finals += r.is_final
            texts.extend(decode_text(r.outputs.get("text_output")))
    return texts, finals


def test_served_text_equals_the_llm_api_streamed_or_not(served) -> None:
    server, reference, case = served
    for prompt in PROMPTS:
        whole, finals = _texts(server, prompt, stream=False)
        deltas, stream_finals = _texts(server, prompt, stream=True)
        assert finals == 1 and stream_finals == 1
        assert "".join(whole) == reference[prompt], (case, prompt)
        assert "".join(deltas) == reference[prompt], (case, prompt)
    # the engine really ran quantized (its INFO lines reach tritonserver's log)
    logs = server.logs()
    want = ("float fp8 (on load)", "float8_e4m3fn") if case == "fp8" else ("awq int4 (checkpoint)",)
    assert all(w in logs for w in want), [line for line in logs.splitlines() if "quantization" in line]


def test_a_sharegpt_like_burst_has_no_errors(served, tmp_path: Path) -> None:
    from inflight.tools.bench.serve import run_serve

    server, _, case = served
    prompts = [f"{p} {i}" for i in range(4) for p in PROMPTS]
    lens = [3 + (7 * i) % 13 for i in range(len(prompts))]
    res = run_serve(server.grpc_url, "llm", prompts, lens, rate=float("inf"), concurrency=4, streams=2)
    assert res["errors"] == 0 and res["requests"] == len(prompts), (case, res["errors"])
    assert res["output_tokens"] == sum(lens)
