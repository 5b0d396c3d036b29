"""Client request building and response parsing, without a server."""

from __future__ import annotations

import json

import numpy as np
import pytest
from inflight.client.cli import _grpc_text, build_parser, main
from inflight.client.http import _error_message, iter_sse_data
from inflight.client.inputs import (
    SamplingParams,
    build_inputs,
    build_json_payload,
    model_kind_for,
)

FULL = SamplingParams(max_tokens=8, temperature=0.5, top_k=4, top_p=0.9, seed=2**63 + 1)


def _spec(inputs: dict[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {name: (a.shape, a.dtype.name) for name, a in inputs.items()}


def test_ensemble_inputs_have_batch_dim_and_trtllm_dtypes() -> None:
    inputs = build_inputs("ensemble", ["hello"], FULL)
    assert _spec(inputs) == {
        "text_input": ((1, 1), "object"),
        "stream": ((1, 1), "bool"),
        "max_tokens": ((1, 1), "int32"),
        "temperature": ((1, 1), "float32"),
        "top_k": ((1, 1), "int32"),
        "top_p": ((1, 1), "float32"),
        "seed": ((1, 1), "uint64"),
    }
    assert inputs["text_input"].tolist() == [[b"hello"]]
    assert inputs["seed"].tolist() == [[2**63 + 1]]  # full uint64 range survives
    assert inputs["temperature"][0, 0] == np.float32(0.5)


def test_ensemble_batch_and_stop_words() -> None:
    params = SamplingParams(max_tokens=4, stop=("\n", "END"), stream=False)
    inputs = build_inputs("ensemble", ["a", "b", "c"], params)
    assert inputs["text_input"].tolist() == [[b"a"], [b"b"], [b"c"]]
    assert inputs["max_tokens"].tolist() == [[4], [4], [4]]
    assert inputs["stream"].tolist() == [[False]] * 3
    assert inputs["stop_words"].shape == (3, 2)
    assert inputs["stop_words"][2].tolist() == [b"\n", b"END"]


def test_ensemble_unset_params_are_not_sent() -> None:
    inputs = build_inputs("ensemble", ["x"], SamplingParams())
    assert set(inputs) == {"text_input", "stream"}


def test_ensemble_seed_input_name_is_configurable() -> None:
    inputs = build_inputs("ensemble", ["x"], SamplingParams(seed=7), seed_input="random_seed")
    assert "seed" not in inputs and inputs["random_seed"].tolist() == [[7]]


def test_exclude_input_in_output_only_when_set() -> None:
    sent = build_inputs("ensemble", ["x"], SamplingParams(exclude_input_in_output=True))
    assert sent["exclude_input_in_output"].tolist() == [[True]]
    assert "exclude_input_in_output" not in build_inputs("llm", ["x"], SamplingParams())


def test_llm_inputs_follow_the_vllm_contract() -> None:
    params = SamplingParams(max_tokens=8, top_p=0.9, stop=("END",), exclude_input_in_output=True)
    inputs = build_inputs("llm", ["héllo ✓"], params)
    assert _spec(inputs) == {
        "text_input": ((1,), "object"),
        "stream": ((1,), "bool"),
        "sampling_parameters": ((1,), "object"),
        "exclude_input_in_output": ((1,), "bool"),
    }
    assert inputs["text_input"][0].decode("utf-8") == "héllo ✓"
    assert json.loads(inputs["sampling_parameters"][0]) == {
        "max_tokens": 8,
        "top_p": pytest.approx(0.9),
        "stop": ["END"],
    }


def test_ignore_eos_reaches_both_contracts() -> None:
    params = SamplingParams(ignore_eos=True)
    assert build_inputs("ensemble", ["x", "y"], params)["ignore_eos"].tolist() == [[True], [True]]
    sp = build_inputs("llm", ["x"], params)["sampling_parameters"][0]
    assert json.loads(sp) == {"ignore_eos": True}


def test_llm_takes_exactly_one_prompt() -> None:
    with pytest.raises(ValueError, match="one prompt per request"):
        build_inputs("llm", ["a", "b"], SamplingParams())


@pytest.mark.parametrize("kind", ["ensemble", "llm"])
def test_empty_prompts_rejected(kind: str) -> None:
    with pytest.raises(ValueError, match="at least one prompt"):
        build_inputs(kind, [], SamplingParams())  # type: ignore[arg-type]


def test_unknown_kind_rejected() -> None:
    with pytest.raises(ValueError, match="unknown model kind 'engine'"):
        build_inputs("engine", ["x"], SamplingParams())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
    ],
)
def test_sampling_params_validated(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


def test_model_kind_for() -> None:
    assert model_kind_for("llm") == "llm"
    assert model_kind_for("ensemble") == "ensemble"
    assert model_kind_for("tensorrt_llm_bls") == "ensemble"


def test_json_payload_is_plain_json() -> None:
    payload = build_json_payload(
        "ensemble", "hi", SamplingParams(max_tokens=3, seed=5, stop=("a", "b"))
    )
    assert payload == {
        "text_input": "hi",
        "stream": True,
        "max_tokens": 3,
        "seed": 5,
        "stop_words": ["a", "b"],
    }
    json.dumps(payload)
    llm = build_json_payload("llm", "hi", SamplingParams(max_tokens=3))
    assert json.loads(llm["sampling_parameters"]) == {"max_tokens": 3}


def test_grpc_infer_inputs_dtypes() -> None:
    pytest.importorskip("tritonclient.grpc")
    from inflight.client.grpc_stream import to_infer_inputs

    inputs = build_inputs("ensemble", ["x", "y"], FULL)
    dtypes = {t.name(): (t.datatype(), t.shape()) for t in to_infer_inputs(inputs)}
    assert dtypes["text_input"] == ("BYTES", [2, 1])
    assert dtypes["max_tokens"] == ("INT32", [2, 1])
    assert dtypes["stream"] == ("BOOL", [2, 1])
    assert dtypes["seed"] == ("UINT64", [2, 1])
    assert dtypes["top_p"] == ("FP32", [2, 1])


def test_grpc_text_rows_follow_batch_index() -> None:
    outputs = {
        "text_output": np.array([[b" world"]], dtype=np.object_),
        "batch_index": np.array([[2]], dtype=np.int32),
    }
    assert list(_grpc_text(outputs)) == [(2, " world")]
    batched = {"text_output": np.array([[b"a"], [b"b"]], dtype=np.object_)}
    assert list(_grpc_text(batched)) == [(0, "a"), (1, "b")]
    assert list(_grpc_text({"text_output": np.array([b"x"], dtype=np.object_)})) == [(0, "x")]
    assert list(_grpc_text({})) == []


def test_sse_parsing() -> None:
    stream = [
        b": comment\n",
        b'data: {"a": 1}\n',
        b"\n",
        b"event: error\n",
        b"data: line1\n",
        b"data: line2\r\n",
        b"\n",
        b"data: tail",
    ]
    assert list(iter_sse_data(stream)) == [
        ("message", '{"a": 1}'),
        ("error", "line1\nline2"),
        ("message", "tail"),
    ]


def test_error_message_from_json_and_sse_bodies() -> None:
    assert _error_message('{"error":"bad max_tokens"}') == "bad max_tokens"
    assert _error_message('data: {"error":"bad text_input"}\n\n') == "bad text_input"
    assert _error_message("plain text") == "plain text"


def test_cli_defaults_and_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["hi"])
    assert (args.url, args.protocol, args.model, args.max_tokens, args.batch) == (
        None,
        "grpc",
        "ensemble",
        128,
        1,
    )
    with pytest.raises(SystemExit) as info:
        main(["hi", "--batch", "0"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["hi", "--top-p", "2"])
    assert "top_p must be in (0, 1]" in capsys.readouterr().err
