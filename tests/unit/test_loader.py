"""Checkpoint loading: sharded == single file, and every malformed input names what is wrong."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from inflight import LLM, SamplingParams
from inflight.config import EngineConfig, ModelConfig
from inflight.errors import ConfigError
from inflight.testing.tiny import build_tiny_model, tiny_model_dir
from inflight.worker.model_runner import ModelRunner
from safetensors.torch import load_file, save_file


def _copy(tmp_path: Path) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_model_dir("llama2"), dst)
    return dst


def _runner(model_dir: Path) -> ModelRunner:
    cfg = EngineConfig(model=str(model_dir), max_tokens_in_paged_kv_cache=256, max_seq_len=64)
    return ModelRunner(cfg, ModelConfig.from_hf(str(model_dir)), 64)


def test_sharded_checkpoint_gives_the_same_tokens(tmp_path: Path) -> None:
    sharded = build_tiny_model("llama2", str(tmp_path / "sharded"), max_shard_size="200KB")
    assert os.path.isfile(os.path.join(sharded, "model.safetensors.index.json"))
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    outs = []
    for d in (tiny_model_dir("llama2"), sharded):
        with LLM(d, max_tokens_in_paged_kv_cache=512, max_seq_len=128) as llm:
            outs.append(llm.generate([[5, 6, 7, 8, 9]], params)[0].outputs[0].token_ids)
    assert outs[0] == outs[1]


def test_unsupported_architecture_is_named(tmp_path: Path) -> None:
    d = _copy(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="GPT2LMHeadModel.*not supported"):
        ModelConfig.from_hf(str(d))


def test_missing_config_and_bad_json(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        ModelConfig.from_hf(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        ModelConfig.from_hf(str(tmp_path / "empty"))
    (tmp_path / "empty" / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_hf(str(tmp_path / "empty"))


def test_missing_key_is_named(tmp_path: Path) -> None:
    d = _copy(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["hidden_size"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="hidden_size"):
        ModelConfig.from_hf(str(d))


def test_no_weights_points_to_dummy(tmp_path: Path) -> None:
    d = _copy(tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="no \\*.safetensors.*dummy"):
        _runner(d)


def test_wrong_shape_and_missing_tensor_are_named(tmp_path: Path) -> None:
    d = _copy(tmp_path)
    weights = load_file(str(d / "model.safetensors"))
    name = "model.layers.0.mlp.down_proj.weight"
    bad = dict(weights)
    bad[name] = torch.zeros(3, 3)
    save_file(bad, str(d / "model.safetensors"))
    with pytest.raises(ConfigError, match=f"{name}.*shape"):
        _runner(d)
    missing = {k: v for k, v in weights.items() if k != name}
    save_file(missing, str(d / "model.safetensors"))
    with pytest.raises(ConfigError, match="down_proj"):
        _runner(d)


def test_unknown_tensor_is_named(tmp_path: Path) -> None:
    d = _copy(tmp_path)
    weights = load_file(str(d / "model.safetensors"))
    weights["model.layers.0.surprise.weight"] = torch.zeros(2)
    save_file(weights, str(d / "model.safetensors"))
    with pytest.raises(ConfigError, match="surprise"):
        _runner(d)


def test_dummy_weights_need_no_safetensors(tmp_path: Path) -> None:
    d = _copy(tmp_path)
    (d / "model.safetensors").unlink()
    cfg = EngineConfig(model=str(d), load_format="dummy", max_tokens_in_paged_kv_cache=256, max_seq_len=64)
    runner = ModelRunner(cfg, ModelConfig.from_hf(str(d)), 64)
    w = runner.model.model.layers[0].mlp.down_proj.weight
    assert 0.01 < float(w.std()) < 0.03  # N(0, 0.02): a sane scale, not zeros or garbage
