"""Issue 12: the TensorRT-LLM compatibility profile's contract, without a server: model and
tensor names, dtypes and dims, the peer's engine inputs (implemented or refused by feature),
decoupled_mode, gathering one response per request, errors naming what the client sent."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from inflight.errors import InvalidRequestError
from inflight.frontends.triton import trtllm_contract
from inflight.frontends.triton.convert import (
    item_from_tensors,
    refuse_unsupported,
    sampling_from_tensors,
)
from inflight.frontends.triton.gather import stack_parts
from inflight.tools import repo

# tensorrtllm_backend's tensorrt_llm inputs (name, dtype, dims), as its clients send them
PEER_ENGINE_INPUTS = {
    "input_ids": ("TYPE_INT32", [-1]), "input_lengths": ("TYPE_INT32", [1]),
    "request_output_len": ("TYPE_INT32", [1]), "num_return_sequences": ("TYPE_INT32", [1]),
    "end_id": ("TYPE_INT32", [1]), "pad_id": ("TYPE_INT32", [1]),
    "stop_words_list": ("TYPE_INT32", [2, -1]), "bad_words_list": ("TYPE_INT32", [2, -1]),
    "embedding_bias": ("TYPE_FP32", [-1]), "beam_width": ("TYPE_INT32", [1]),
    "temperature": ("TYPE_FP32", [1]), "runtime_top_k": ("TYPE_INT32", [1]),
    "runtime_top_p": ("TYPE_FP32", [1]), "len_penalty": ("TYPE_FP32", [1]),
    "early_stopping": ("TYPE_BOOL", [1]), "seed": ("TYPE_UINT64", [1]),
    "streaming": ("TYPE_BOOL", [1]), "stop": ("TYPE_BOOL", [1]),
    "lora_task_id": ("TYPE_UINT64", [1]), "draft_input_ids": ("TYPE_INT32", [-1]),
    "prompt_embedding_table": ("TYPE_FP16", [-1, -1]), "guided_decoding_guide": ("TYPE_STRING", [1]),
}
PEER_OUTPUTS = ["output_ids", "sequence_length", "cum_log_probs", "output_log_probs", "context_logits",
                "generation_logits", "batch_index", "sequence_index", "kv_cache_alloc_new_blocks",
                "kv_cache_reused_blocks", "kv_cache_alloc_total_blocks", "arrival_time_ns",
                "first_scheduled_time_ns", "first_token_time_ns", "last_token_time_ns",
                "acceptance_rate", "total_accepted_draft_tokens", "total_draft_tokens"]


def _io(text: str, kind: str) -> dict[str, tuple[str, list[int]]]:
    block = re.search(rf"^{kind} \[\n(.*?)\n\]\n", text, re.S | re.M)
    assert block is not None
    rows = re.findall(r'name: "(\w+)"\n    data_type: (\w+)\n    dims: (\[[^\]]*\])', block.group(1))
    return {n: (t, eval(d)) for n, t, d in rows}  # noqa: S307 - our own generated text


def test_engine_config_has_every_peer_input_and_output() -> None:
    text = trtllm_contract.templates()["tensorrt_llm"]
    inputs, outputs = _io(text, "input"), _io(text, "output")
    for name, spec in PEER_ENGINE_INPUTS.items():
        assert inputs[name] == spec, name
    assert [o for o in outputs if o in PEER_OUTPUTS] == PEER_OUTPUTS
    assert outputs["output_ids"] == ("TYPE_INT32", [-1, -1])


def test_pre_post_use_the_peer_tensor_names() -> None:
    t = trtllm_contract.templates()
    pre_in, pre_out = _io(t["preprocessing"], "input"), _io(t["preprocessing"], "output")
    assert {"QUERY", "REQUEST_OUTPUT_LEN", "BAD_WORDS_DICT", "STOP_WORDS_DICT", "EMBEDDING_BIAS_WORDS",
            "EMBEDDING_BIAS_WEIGHTS", "END_ID", "PAD_ID"} <= set(pre_in)
    assert pre_out["BAD_WORDS_IDS"] == ("TYPE_INT32", [2, -1])
    assert {"INPUT_ID", "REQUEST_INPUT_LEN", "EMBEDDING_BIAS", "OUT_END_ID", "OUT_PAD_ID"} <= set(pre_out)
    post_in, post_out = _io(t["postprocessing"], "input"), _io(t["postprocessing"], "output")
    assert post_in["TOKENS_BATCH"] == ("TYPE_INT32", [-1, -1]) and "SEQUENCE_LENGTH" in post_in
    assert post_out["OUTPUT"] == ("TYPE_STRING", [-1])
    ens = _io(t["ensemble"], "input")
    assert ens["text_input"] == ("TYPE_STRING", [1]) and ens["embedding_bias_weights"] == ("TYPE_FP32", [-1])


def test_repo_build_profile_and_decoupled_mode(tmp_path: Path) -> None:
    out = repo.build("tiny:llama", str(tmp_path / "d"), profile="trtllm")
    names = sorted(p.name for p in Path(out).iterdir())
    assert names == ["ensemble", "ensemble_unary", "postprocessing", "preprocessing", "tensorrt_llm",
                     "tensorrt_llm_bls"]
    assert "decoupled: true" in (Path(out) / "tensorrt_llm" / "config.pbtxt").read_text()
    assert "decoupled: true" not in (Path(out) / "ensemble_unary" / "config.pbtxt").read_text()
    u = repo.build("tiny:llama", str(tmp_path / "u"), profile="trtllm", values={"decoupled_mode": "false"})
    assert not (Path(u) / "ensemble_unary").exists()
    for m in ("tensorrt_llm", "tensorrt_llm_bls"):
        assert "decoupled: true" not in (Path(u) / m / "config.pbtxt").read_text()
    assert "unary_model" in (Path(u) / "tensorrt_llm_bls" / "1" / "model.py").read_text()
    assert 'string_value: "false"' in (Path(u) / "tensorrt_llm" / "config.pbtxt").read_text()


def _t(v: object, dtype: object) -> np.ndarray:
    return np.array([[v]], dtype=dtype)


def test_peer_engine_inputs_are_honoured() -> None:
    tensors = {"input_ids": np.array([[5, 6, 7]], dtype=np.int32), "request_output_len": _t(4, np.int32),
               "runtime_top_k": _t(3, np.int32), "runtime_top_p": _t(0.5, np.float32),
               "len_penalty": _t(1.0, np.float32), "early_stopping": _t(True, bool),
               "stop_words_list": np.array([[[11, 12, 13], [2, 3, -1]]], dtype=np.int32),
               "bad_words_list": np.array([[[9], [1]]], dtype=np.int32),
               "embedding_bias": np.array([[0.0, 2.5, 0.0, -1.0]], dtype=np.float32),
               "streaming": _t(True, bool)}
    it = item_from_tensors(tensors, 0, text_input=None, defaults={}, trtllm_defaults=True)
    p = it.params
    assert (p.max_tokens, p.top_k, p.top_p, p.temperature) == (4, 3, 0.5, 1.0)
    assert p.stop_words_ids == [[11, 12], [13]] and p.bad_words_ids == [[9]]
    assert p.embedding_bias == {1: 2.5, 3: -1.0} and it.stream


def test_trtllm_defaults_greedy_and_top_p_zero_means_unset() -> None:
    tensors = {"input_ids": np.array([[5]], dtype=np.int32), "request_output_len": _t(4, np.int32),
               "runtime_top_k": _t(0, np.int32), "runtime_top_p": _t(0.0, np.float32)}
    sp, _ = sampling_from_tensors(tensors, 0, require_max_tokens=True, trtllm_defaults=True)
    assert (sp.top_p, sp.temperature) == (1.0, 0.0)


@pytest.mark.parametrize("name, feature", [
    ("lora_task_id", "LoRA"), ("prompt_embedding_table", "prompt tables"),
    ("draft_input_ids", "speculative decoding"), ("guided_decoding_guide", "guided decoding"),
])
def test_unimplemented_inputs_name_the_feature(name: str, feature: str) -> None:
    with pytest.raises(InvalidRequestError, match=rf"^{name}: {feature}.* is not supported by inflight yet"):
        refuse_unsupported({name: np.zeros((1, 1))})


def test_decoder_placeholder_of_decoder_only_models_is_accepted() -> None:
    refuse_unsupported({"decoder_input_ids": np.zeros((1, 1), dtype=np.int32)})
    with pytest.raises(InvalidRequestError, match="^decoder_input_(ids|lengths): encoder-decoder"):
        refuse_unsupported({"decoder_input_ids": np.zeros((1, 2), dtype=np.int32),
                            "decoder_input_lengths": np.array([[2]], dtype=np.int32)})


@pytest.mark.parametrize("tensor, value, dtype, message", [
    ("num_return_sequences", 100000, np.int32, "num_return_sequences: must be an integer in [1, 1024]"),
    ("runtime_top_p", 1.5, np.float32, "runtime_top_p: must be in (0, 1]"),
    ("runtime_top_k", -1, np.int32, "runtime_top_k: must be an integer >= 0"),
    ("request_output_len", 0, np.int32, "request_output_len: must be an integer >= 1"),
])
def test_errors_name_the_tensor_the_client_sent(tensor: str, value: object, dtype: object, message: str) -> None:
    tensors = {"input_ids": np.array([[5]], dtype=np.int32), "request_output_len": _t(4, np.int32),
               tensor: _t(value, dtype)}
    with pytest.raises(InvalidRequestError) as e:
        sampling_from_tensors(tensors, 0, require_max_tokens=True)
    assert str(e.value).startswith(message)


def test_stack_parts_orders_rows_and_pads() -> None:
    parts = [
        {"batch_index": np.array([[1]]), "sequence_index": np.array([[0]]),
         "output_ids": np.array([[[7, 8, 9]]], dtype=np.int32), "text": np.array([[b"b"]], dtype=object)},
        {"batch_index": np.array([[0]]), "sequence_index": np.array([[0]]),
         "output_ids": np.array([[[5]]], dtype=np.int32), "text": np.array([[b"a"]], dtype=object)},
    ]
    out = stack_parts(parts, pad_id=2)
    assert out["batch_index"].reshape(-1).tolist() == [0, 1]
    assert out["output_ids"].tolist() == [[[5, 2, 2]], [[7, 8, 9]]]
    assert out["text"].reshape(-1).tolist() == [b"a", b"b"]
