"""`inflight repo build --set key=value`: every value passes the checks model load makes (the
same code: ``triton.params.load_config``), so a bad one fails before any file is written,
as one line naming the key and what it accepts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from inflight.errors import ConfigError
from inflight.frontends.triton.params import load_config
from inflight.tools import repo
from inflight.tools.cli import main

KNOWN = ", ".join(repo.known_keys())


def _build(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    out = tmp_path / "repo"
    rc = main(["repo", "build", "--out", str(out), *args])
    err = capsys.readouterr().err
    if rc:
        assert not out.exists(), "a refused build must not write the repository"
    return rc, err


@pytest.mark.parametrize("pair, message", [
    ("enable_kv_cache_reuse=yesplease",
     "--set enable_kv_cache_reuse=yesplease: expected true or false (also 1/0, yes/no)"),
    ("kv_cache_free_gpu_mem_fraction=1.5", "kv_cache_free_gpu_mem_fraction must be in (0, 1], got 1.5"),
    ("max_batch_size=lots", "--set max_batch_size=lots: expected an integer"),
    ("kv_cache_free_gpu_mem_fraction=most", "--set kv_cache_free_gpu_mem_fraction=most: expected a number"),
    ("max_batch_size=0", "max_batch_size must be >= 1, got 0"),
    ("batch_scheduler_policy=fifo",
     "batch_scheduler_policy must be guaranteed_no_evict or max_utilization, got 'fifo'"),
    ("dtype=fp16", "dtype must be auto, float32, bfloat16 or float16, got 'fp16'"),
    ("device=gpu", "device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("tokens_per_block=12", "block_size (tokens_per_block) must be a power of two > 0, got 12"),
    ("stream_interval=0", "stream_interval must be >= 1, got 0"),
    ("tokenizer_dir=/no/such/dir", "--set 'tokenizer_dir': '/no/such/dir' does not exist"),
    ("trust_remote_code=true",
     "trust_remote_code requires the operator to also set allow_trust_remote_code=true"),
    ("instance_count=0", "--set instance_count=0: expected an integer >= 1"),
    ("kv_cache_fre_gpu_mem_fraction=0.5",
     "unknown --set parameter 'kv_cache_fre_gpu_mem_fraction'; did you mean "
     f"'kv_cache_free_gpu_mem_fraction'? known: {KNOWN}"),
])
def test_bad_set_value_is_one_line_before_anything_is_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], pair: str, message: str) -> None:
    rc, err = _build(tmp_path, capsys, "--model", "tiny:llama", "--set", pair)
    assert (rc, err) == (2, f"error: {message}\n")


def test_good_values_are_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _ = _build(tmp_path, capsys, "--model", "tiny:llama", "--layout", "llm",
                   "--set", "kv_cache_free_gpu_mem_fraction=0.5", "--set", "enable_kv_cache_reuse=yes")
    text = (tmp_path / "repo" / "llm" / "config.pbtxt").read_text()
    assert rc == 0
    assert 'key: "kv_cache_free_gpu_mem_fraction"\n  value: { string_value: "0.5" }' in text
    assert 'key: "enable_kv_cache_reuse"\n  value: { string_value: "yes" }' in text


def test_model_load_applies_the_same_rule(tiny_model_dir: Callable[[str], str]) -> None:
    """The config.pbtxt path (what the engine model's initialize() runs) says the same."""
    with pytest.raises(ConfigError) as e:
        load_config({"model_path": tiny_model_dir("llama"), "kv_cache_free_gpu_mem_fraction": "1.5"})
    assert str(e.value) == "kv_cache_free_gpu_mem_fraction must be in (0, 1], got 1.5"
    with pytest.raises(ConfigError) as e:
        load_config({"model_path": tiny_model_dir("llama"), "enable_kv_cache_reuse": "yesplease"})
    assert str(e.value) == ("config.pbtxt parameter enable_kv_cache_reuse=yesplease: "
                            "expected true or false (also 1/0, yes/no)")


def test_missing_model_dir_says_it_does_not_exist(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope")
    rc, err = _build(tmp_path, capsys, "--model", missing)
    assert (rc, err) == (2, f"error: model directory {missing!r} does not exist; pass a Hugging "
                            "Face checkpoint directory, or tiny:FAMILY for a tiny test model\n")


def test_dir_without_config_json_says_what_is_missing(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    rc, err = _build(tmp_path, capsys, "--model", str(tmp_path / "empty"))
    assert (rc, err) == (2, f"error: {str(tmp_path / 'empty')!r} has no config.json; is it a "
                            "Hugging Face checkpoint directory?\n")


def test_unknown_tiny_family(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, err = _build(tmp_path, capsys, "--model", "tiny:lama")
    assert (rc, err) == (2, "error: unknown family 'lama' for tiny:FAMILY; did you mean 'llama'? "
                            "known: llama, llama2, mistral, qwen2, qwen3\n")


def test_build_api_validates_values_too(tiny_model_dir: Callable[[str], str], tmp_path: Path) -> None:
    """demo, soak and the e2e tests call build() directly: the same checks apply."""
    with pytest.raises(ConfigError, match=r"^max_seq_len must be >= 2, got 0$"):
        repo.build(tiny_model_dir("llama"), str(tmp_path / "r"), values={"max_seq_len": "0"})
    with pytest.raises(ConfigError, match=r"^unknown --set parameter 'max_seqlen'; did you mean 'max_seq_len'\?"):
        repo.build(tiny_model_dir("llama"), str(tmp_path / "r"), values={"max_seqlen": "64"})
    assert not (tmp_path / "r").exists()


def test_engine_parameters_derive_from_the_config_dataclasses() -> None:
    """Issue 11: a new EngineConfig / ServingConfig field reaches the templates by itself."""
    import dataclasses

    from inflight.config import EngineConfig
    from inflight.frontends.triton.contract import ENGINE_PARAMS
    from inflight.frontends.triton.params import (
        PARAMETER_NAMES,
        TEST_ONLY_KEYS,
        ServingConfig,
        template_keys,
    )

    engine = [PARAMETER_NAMES.get(f.name, f.name) for f in dataclasses.fields(EngineConfig)]
    serving = [f.name for f in dataclasses.fields(ServingConfig) if f.name not in TEST_ONLY_KEYS]
    assert ENGINE_PARAMS == engine + serving + ["decoupled_mode"] == template_keys() + ["decoupled_mode"]
    assert {"model_path", "tokenizer_dir", "tokens_per_block"} <= set(ENGINE_PARAMS)
    assert not {"model", "tokenizer", "block_size", *TEST_ONLY_KEYS} & set(ENGINE_PARAMS)
    assert len(set(ENGINE_PARAMS)) == len(ENGINE_PARAMS)


def test_tensorrt_llm_spelling_tp_size_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   tiny_model_dir: Callable[[str], str]) -> None:
    """docs/parallelism.md's `--set tp_size=2` (TensorRT-LLM's name): written as ours."""
    assert repo.parse_sets(["tp_size=2"]) == {"tensor_parallel_size": "2"}
    rc, err = _build(tmp_path, capsys, "--model", tiny_model_dir("llama"), "--layout", "llm",
                     "--set", "tp_size=2")
    assert rc == 0, err
    text = (tmp_path / "repo" / "llm" / "config.pbtxt").read_text()
    assert 'key: "tensor_parallel_size"\n  value: { string_value: "2" }' in text
    assert "tp_size" not in text
