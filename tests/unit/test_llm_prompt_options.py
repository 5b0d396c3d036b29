"""`llm` model: `add_special_tokens` in sampling_parameters (a chat-rendered prompt holds its
own BOS as text, so the model must not add a second one)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from inflight.engine.core import load_tokenizer
from inflight.errors import InvalidRequestError
from inflight.frontends.triton.convert import sampling_from_json
from inflight.frontends.triton.llm_model import llm_item
from inflight.testing.tiny import BOS, tiny_model_dir

DEFAULTS = {"stream": False, "exclude_input_in_output": True}


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(tiny_model_dir("llama"))


def tensors(prompt: str, params: dict) -> dict[str, np.ndarray]:
    return {"text_input": np.array([prompt.encode()], dtype=object),
            "sampling_parameters": np.array([json.dumps(params).encode()], dtype=object)}


def test_default_keeps_the_text_prompt(tokenizer) -> None:
    item = llm_item(tensors("Hello world", {"max_tokens": 4}), DEFAULTS, None, tokenizer)
    assert item.prompt == "Hello world" and item.prompt_text == "Hello world"


def test_add_special_tokens_false_tokenizes_without_bos(tokenizer) -> None:
    text = BOS + "Hello world"
    item = llm_item(tensors(text, {"max_tokens": 4, "add_special_tokens": False}), DEFAULTS,
                    None, tokenizer)
    with_bos = tokenizer(text)["input_ids"]
    assert with_bos[:2] == [tokenizer.bos_token_id] * 2  # what the default would send
    assert item.prompt == with_bos[1:]  # exactly one BOS: the one in the text
    assert item.prompt_text == text  # echo still returns the text
    assert item.params.max_tokens == 4


def test_add_special_tokens_true_and_string_values(tokenizer) -> None:
    item = llm_item(tensors("Hi", {"add_special_tokens": "true"}), DEFAULTS, None, tokenizer)
    assert item.prompt == "Hi"
    with pytest.raises(InvalidRequestError, match="sampling_parameters.add_special_tokens"):
        llm_item(tensors("Hi", {"add_special_tokens": "maybe"}), DEFAULTS, None, tokenizer)


def test_add_special_tokens_false_without_tokenizer_is_an_error() -> None:
    with pytest.raises(InvalidRequestError, match="needs the model's tokenizer"):
        llm_item(tensors("Hi", {"add_special_tokens": False}), DEFAULTS, None)


def test_sampling_from_json_reports_prompt_options() -> None:
    opts: dict = {}
    sp = sampling_from_json('{"add_special_tokens": false, "max_tokens": 3}', opts)
    assert opts == {"add_special_tokens": False} and sp.max_tokens == 3
    assert sampling_from_json('{"add_special_tokens": false}').max_tokens is None
