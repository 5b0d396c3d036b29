"""max_queue_size in the TensorRT-LLM profile: Triton's queue policy (where tensorrtllm_backend
keeps it) is the one place it is written; the engine reads the same value; a refusal carries
the phrases the peer's test_max_queue_size.py looks for (gRPC: "Exceeds maximum queue size",
HTTP: "Maximum queue size of")."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from inflight.config import EngineConfig
from inflight.engine.core import LLMEngine
from inflight.errors import ConfigError, QueueFullError
from inflight.frontends.triton import trtllm_contract
from inflight.frontends.triton.params import raw_parameters
from inflight.sampling_params import SamplingParams
from inflight.tools import repo


def _config(policy: object, **params: str) -> dict:
    cfg: dict = {"parameters": {k: {"string_value": v} for k, v in params.items()}}
    if policy is not None:
        cfg["dynamic_batching"] = {"default_queue_policy": {"max_queue_size": policy}}
    return cfg


def test_queue_policy_is_the_engines_max_queue_size() -> None:
    assert raw_parameters(_config(6))["max_queue_size"] == "6"
    assert raw_parameters(_config("6", max_queue_size="6"))["max_queue_size"] == "6"  # same: fine
    assert "max_queue_size" not in raw_parameters(_config(None))
    assert raw_parameters(_config(None, max_queue_size="3"))["max_queue_size"] == "3"
    with pytest.raises(ConfigError, match=r"'max_queue_size' \(3\) differs from dynamic_batching"):
        raw_parameters(_config(6, max_queue_size="3"))


def test_trtllm_templates_put_the_queue_policy_where_the_peer_does() -> None:
    tpl = trtllm_contract.templates()
    for name in ("tensorrt_llm", "preprocessing"):
        assert "default_queue_policy: { max_queue_size: ${max_queue_size} }" in tpl[name], name
        assert tpl[name].index("dynamic_batching {") < tpl[name].index("input [")
    assert '"max_queue_size"' not in tpl["tensorrt_llm"]  # not a second, parameter copy
    for name in ("postprocessing", "ensemble", "tensorrt_llm_bls", "ensemble_unary"):
        assert "dynamic_batching" not in tpl[name], name


def test_repo_build_fills_the_queue_policy(tmp_path, tiny_model_dir: Callable[[str], str]) -> None:
    out = repo.build(tiny_model_dir("llama"), str(tmp_path / "a"), profile="trtllm")
    text = (tmp_path / "a" / "tensorrt_llm" / "config.pbtxt").read_text()
    assert "max_queue_delay_microseconds: 0\n" in text and "{ max_queue_size: 0 }" in text  # peer's defaults
    repo.build(tiny_model_dir("llama"), str(tmp_path / "b"), profile="trtllm",
               values={"max_queue_size": "6", "triton_max_batch_size": "1",
                       "max_queue_delay_microseconds": "100"})
    text = (tmp_path / "b" / "preprocessing" / "config.pbtxt").read_text()
    assert "preferred_batch_size: [ 1 ]" in text and "{ max_queue_size: 6 }" in text
    assert "max_queue_delay_microseconds: 100\n" in text
    assert out
    with pytest.raises(ConfigError, match="max_queue_size=-1: expected an integer >= 0"):
        repo.build(tiny_model_dir("llama"), str(tmp_path / "c"), profile="trtllm",
                   values={"max_queue_size": "-1"})


def test_engine_refusal_carries_both_peer_phrases(tiny_model_dir: Callable[[str], str]) -> None:
    eng = LLMEngine(EngineConfig(model=tiny_model_dir("llama"), max_tokens_in_paged_kv_cache=1024,
                                 block_size=8, max_seq_len=256, max_queue_size=1))
    eng.add_request("a", "Hello", SamplingParams(max_tokens=2))
    with pytest.raises(QueueFullError) as e:
        eng.add_request("b", "Hello", SamplingParams(max_tokens=2))
    msg = str(e.value)
    assert "Exceeds maximum queue size" in msg and "Maximum queue size of 1 " in msg and "'b'" in msg
    while eng.has_unfinished():
        eng.step()
