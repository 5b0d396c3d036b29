"""One resolver for what a user passes as a model (``inflight.model_source.resolve_model``):
``tiny:FAMILY`` works in ``LLM()`` and every ``--model``; a missing directory, a directory
without config.json and an unknown family are one-line errors saying what to do."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from inflight import LLM, SamplingParams
from inflight.errors import ConfigError
from inflight.model_source import resolve_model
from inflight.tools.cli import main

UNKNOWN_FAMILY = ("unknown family 'lama' for tiny:FAMILY; did you mean 'llama'? "
                  "known: llama, llama2, mistral, qwen2, qwen3")


def _missing(path: str) -> str:
    return (f"model directory {path!r} does not exist; pass a Hugging Face checkpoint directory, "
            "or tiny:FAMILY for a tiny test model")


def test_resolve_model(tiny_model_dir: Callable[[str], str], tmp_path: Path) -> None:
    assert resolve_model("tiny:qwen2") == tiny_model_dir("qwen2")
    assert resolve_model("tiny:") == tiny_model_dir("llama")
    assert resolve_model(tiny_model_dir("llama")) == tiny_model_dir("llama")
    with pytest.raises(ConfigError) as e:
        resolve_model("tiny:lama")
    assert str(e.value) == UNKNOWN_FAMILY
    with pytest.raises(ConfigError) as e:
        resolve_model(str(tmp_path / "nope"))
    assert str(e.value) == _missing(str(tmp_path / "nope"))
    with pytest.raises(ConfigError) as e:
        resolve_model(str(tmp_path))
    assert str(e.value) == f"{str(tmp_path)!r} has no config.json; is it a Hugging Face checkpoint directory?"


def test_llm_takes_tiny_family(tiny_model_dir: Callable[[str], str]) -> None:
    llm = LLM(model="tiny:llama", max_tokens_in_paged_kv_cache=256, max_seq_len=64)
    try:
        assert llm.config.model == tiny_model_dir("llama")
        out = llm.generate("Hello", SamplingParams(max_tokens=3, min_tokens=3), use_tqdm=False)
        assert len(out[0].outputs[0].token_ids) == 3
    finally:
        llm.shutdown()


@pytest.mark.parametrize("model, message", [("tiny:lama", UNKNOWN_FAMILY),
                                            ("/no/such/model", _missing("/no/such/model"))])
def test_llm_bad_model(model: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        LLM(model=model)
    assert str(e.value) == message


def test_llm_unknown_parameter_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"^unknown engine parameter 'dtpye'; did you mean 'dtype'\? known: "):
        LLM(model="tiny:llama", dtpye="float32")


@pytest.mark.parametrize("argv", [
    ["generate", "--model", "{model}", "Hi"],
    ["bench", "throughput", "--model", "{model}", "--out", "{tmp}"],
    ["bench", "latency", "--model", "{model}", "--out", "{tmp}"],
    ["bench", "profile", "--model", "{model}", "--out", "{tmp}"],
    ["bench", "reuse", "--model", "{model}", "--out", "{tmp}"],
    ["demo", "--model", "{model}"],
])
@pytest.mark.parametrize("model, message", [("tiny:lama", UNKNOWN_FAMILY),
                                            ("/no/such/model", _missing("/no/such/model"))])
def test_every_cli_reports_a_bad_model_in_one_line(
        argv: list[str], model: str, message: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    rc = main([a.format(model=model, tmp=tmp_path) for a in argv])
    assert (rc, capsys.readouterr().err) == (2, f"error: {message}\n")


def test_bench_suggests_a_shipped_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["bench", "latency", "--model", "llama-3.1-8B", "--out", str(tmp_path)])
    assert (rc, capsys.readouterr().err) == (
        2, "error: --model 'llama-3.1-8B' does not exist: it is no checkpoint directory and no "
           "shipped config; did you mean 'llama-3.1-8b'? known: llama-3.1-8b, llama-3.1-70b, "
           "llama-3.2-1b, qwen2.5-0.5b, qwen2.5-7b\n")
