"""Shared fixtures: tiny checkpoints, Hugging Face reference models, shared engines and the
``assert_no_leak`` invariant (checked after every test on every engine a fixture made)."""

from __future__ import annotations

import os
import shutil

os.environ["INFLIGHT_NO_PROGRESS"] = "1"  # before inflight reads it: no tqdm bars in tests
if shutil.which("nvidia-smi") is None:
    # No GPU: OpenAI-Triton kernels run in the interpreter. Set before anything imports
    # triton (torch and transformers may), since triton caches the setting on first read.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import functools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

FAMILIES = ("llama", "llama2", "mistral", "qwen2", "qwen3")
# The shared engines: a small pool (128 blocks of 8 tokens) and max_seq_len 256 so that the
# validation bounds are known numbers.
SMALL_POOL: dict[str, Any] = {
    "max_tokens_in_paged_kv_cache": 1024,
    "block_size": 8,
    "max_seq_len": 256,
}

_live_llms: list[Any] = []  # every LLM a fixture made and has not shut down yet


def _assert_no_leak(llm: Any, timeout: float = 30.0) -> None:
    """Idle invariant: the engine thread drains, then no request holds a KV block."""
    assert llm.loop.alive, f"engine died: {llm.loop.dead_reason}"
    assert llm.loop.wait_idle(timeout), "engine did not become idle"
    llm.engine.kv.assert_all_free()
    assert not llm.engine.seqs, f"sequences left behind: {list(llm.engine.seqs)}"
    assert not llm.engine.scheduler.has_work()


@pytest.fixture(scope="session")
def assert_no_leak() -> Callable[..., None]:
    return _assert_no_leak


@pytest.fixture(autouse=True)
def _no_leak_after_test() -> Iterator[None]:
    yield
    for llm in list(_live_llms):
        _assert_no_leak(llm)


@pytest.fixture(scope="session")
def tiny_model_dir() -> Callable[[str], str]:
    """family -> path of the cached tiny seeded checkpoint."""
    from inflight.testing import tiny

    return functools.cache(tiny.tiny_model_dir)


@pytest.fixture(scope="session")
def hf_model(tiny_model_dir: Callable[[str], str]) -> Callable[[str], Any]:
    """family -> the transformers reference model (float32, eval), loaded once."""
    import transformers
    from transformers import AutoModelForCausalLM

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()

    @functools.cache
    def load(family: str) -> Any:
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(family), dtype=torch.float32)
        return model.eval()

    return load


def _new_llm(model_dir: str, **config: Any) -> Any:
    from inflight.llm import LLM

    llm = LLM(model=model_dir, **config)
    _live_llms.append(llm)
    return llm


def _shutdown(llm: Any) -> None:
    if llm in _live_llms:
        _live_llms.remove(llm)
    llm.shutdown()


@pytest.fixture(scope="session")
def llm_for(tiny_model_dir: Callable[[str], str]) -> Iterator[Callable[[str], Any]]:
    """family -> a shared LLM over that family's tiny model with the SMALL_POOL config."""
    made: dict[str, Any] = {}

    def get(family: str) -> Any:
        if family not in made:
            made[family] = _new_llm(tiny_model_dir(family), **SMALL_POOL)
        return made[family]

    yield get
    for llm in made.values():
        _shutdown(llm)


@pytest.fixture(scope="session")
def llm(llm_for: Callable[[str], Any]) -> Any:
    """The shared llama engine."""
    return llm_for("llama")


@pytest.fixture
def make_llm(tiny_model_dir: Callable[[str], str]) -> Iterator[Callable[..., Any]]:
    """Factory for engines with custom configs: ``make_llm(family="llama", model_dir=None,
    **EngineConfig)``; SMALL_POOL values are defaults. Each one is leak-checked and shut down
    after the test."""
    made: list[Any] = []

    def make(family: str = "llama", model_dir: str | None = None, **config: Any) -> Any:
        llm = _new_llm(model_dir or tiny_model_dir(family), **{**SMALL_POOL, **config})
        made.append(llm)
        return llm

    yield make
    try:
        for llm in made:
            if llm in _live_llms:
                _assert_no_leak(llm)
    finally:
        for llm in made:
            _shutdown(llm)
