"""The vLLM profile's `llm` contract without a server (issue 12): vLLM's defaults (echo when
not streaming, max_tokens 16), request `parameters` when no sampling_parameters tensor,
errors naming `sampling_parameters.<key>` / `parameters.<key>`, the repository it builds."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from inflight.errors import InvalidRequestError
from inflight.frontends.triton.contract import VLLM_INPUTS, VLLM_OUTPUTS
from inflight.frontends.triton.convert import client_error, sampling_from_json
from inflight.frontends.triton.vllm_model import request_parameters, vllm_item
from inflight.tools import repo


def _t(prompt: str = "Hello", **extra: object) -> dict[str, np.ndarray]:
    out = {"text_input": np.array([prompt.encode()], dtype=object)}
    for k, v in extra.items():
        out[k] = (np.array([json.dumps(v).encode()], dtype=object) if k == "sampling_parameters"
                  else np.array([v], dtype=bool))
    return out


def test_vllm_defaults_echo_and_16_tokens() -> None:
    it = vllm_item(_t(), "")
    assert it.params.max_tokens == 16 and not it.exclude_input_in_output and not it.stream
    st = vllm_item(_t(stream=True), "")
    assert st.exclude_input_in_output  # a stream never carries the prompt
    assert vllm_item(_t(exclude_input_in_output=True), "").exclude_input_in_output
    with pytest.raises(InvalidRequestError) as e:  # vllm_backend's clients compare the text
        vllm_item(_t(stream=True, exclude_input_in_output=False), "")
    assert str(e.value) == ("Error generating stream: When streaming, `exclude_input_in_output` = "
                            "False is not allowed.") and e.value.field == "exclude_input_in_output"
    with pytest.raises(ValueError, match="does not name the field"):
        InvalidRequestError("stream", "x", wording="some other text")


def test_request_parameters_are_the_sampling_parameters_without_a_tensor() -> None:
    req = SimpleNamespace(parameters=lambda: json.dumps(
        {"temperature": 0, "max_tokens": 3, "stream": False, "triton_enable_empty_final_response": True}))
    raw = request_parameters(req)
    assert json.loads(raw) == {"temperature": 0, "max_tokens": 3}
    it = vllm_item(_t(), raw)
    assert it.params.temperature == 0 and it.params.max_tokens == 3
    # the tensor wins when both are sent (the peer's metrics test sends both)
    it = vllm_item(_t(sampling_parameters={"max_tokens": 5}), raw)
    assert it.params.max_tokens == 5


@pytest.mark.parametrize("raw,source,name", [
    ('{"n": 100000}', "sampling_parameters", "sampling_parameters.n"),
    ('{"temperature": -1}', "sampling_parameters", "sampling_parameters.temperature"),
    ('{"bogus": 1}', "parameters", "parameters.bogus"),
    ('{"max_tokens": "many"}', "parameters", "parameters.max_tokens"),
])
def test_errors_name_the_key_the_client_sent(raw: str, source: str, name: str) -> None:
    with pytest.raises(InvalidRequestError) as e:
        sampling_from_json(raw, source=source)
    assert str(e.value).startswith(name + ":")


def test_unsupported_features_are_named_and_later_errors_keep_the_key() -> None:
    with pytest.raises(InvalidRequestError, match="^sampling_parameters.lora_name: LoRA"):
        vllm_item(_t(sampling_parameters={"lora_name": "x"}), "")
    it = vllm_item(_t(sampling_parameters={"n": 2}), "")
    err = client_error(InvalidRequestError("n", "exceeds max_num_return_sequences"), it.names)
    assert str(err).startswith("sampling_parameters.n:")


def test_cumulative_logprob_is_computed_without_logprobs_asked() -> None:
    it = vllm_item(_t(return_cumulative_logprob=True), "")
    assert it.params.logprobs == 0 and not it.flags["client_logprobs"]
    it = vllm_item(_t(return_logprobs=True, sampling_parameters={"logprobs": 2}), "")
    assert it.params.logprobs == 2 and it.flags["client_logprobs"]


def test_vllm_profile_repository(tmp_path: Path, tiny_model_dir: Callable[[str], str]) -> None:
    out = repo.build(tiny_model_dir("llama"), str(tmp_path / "r"), profile="vllm")
    cfg = (Path(out) / "llm" / "config.pbtxt").read_text()
    assert "max_batch_size: 0" in cfg and "decoupled: true" in cfg and '"vllm"' in cfg
    assert "vllm_model import TritonPythonModel" in (Path(out) / "llm" / "1" / "model.py").read_text()
    names = [n for n, *_ in VLLM_INPUTS]
    assert names[:2] == ["text_input", "image"] and "sampling_parameters" in names
    assert ("num_output_tokens", "TYPE_UINT32", [-1], False) in VLLM_OUTPUTS
    with pytest.raises(Exception, match="layout"):
        repo.build(tiny_model_dir("llama"), str(tmp_path / "e"), layout="ensemble", profile="vllm")
