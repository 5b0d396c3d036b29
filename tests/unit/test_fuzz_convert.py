"""Fuzz the request conversion code: random tensors in, an ItemRequest or an
InvalidRequestError out, never any other exception (bounded: a few hundred examples)."""

from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inflight.errors import InvalidRequestError
from inflight.frontends.triton.contract import ENGINE_INPUTS, ENSEMBLE_INPUTS, LLM_INPUTS
from inflight.frontends.triton.convert import ItemRequest, item_from_tensors, sampling_from_json
from inflight.frontends.triton.llm_model import llm_item
from inflight.sampling_params import SamplingParams

NAMES = sorted({n for n, *_ in ENGINE_INPUTS + ENSEMBLE_INPUTS + LLM_INPUTS})
DTYPES = [np.int32, np.int64, np.uint64, np.float32, np.float64, np.bool_, np.object_]
SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

numbers = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, 1, -1, 2**31, 2**31 - 1, -(2**31) - 1, 2**64 - 1]))
blobs = st.one_of(st.binary(max_size=64), st.text(max_size=32).map(str.encode),
                  st.sampled_from([b"", b"\x00", b"\xff\xfe", b"{}", b'{"max_tokens": 4}']))


@st.composite
def arrays(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(st.sampled_from(DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 3), min_size=0, max_size=3)))
    size = int(np.prod(shape)) if shape else 1
    if dtype is np.object_:
        vals = draw(st.lists(blobs, min_size=size, max_size=size))
        arr = np.empty(size, dtype=object)
        arr[:] = vals
    elif dtype is np.bool_:
        arr = np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size)), dtype=bool)
    else:
        vals = draw(st.lists(numbers, min_size=size, max_size=size))
        with np.errstate(all="ignore"):
            arr = np.array([_fit(v, dtype) for v in vals], dtype=dtype)
    return arr.reshape(shape)


def _fit(v: float, dtype: type) -> float:
    """Clamp into the dtype (numpy refuses out-of-range python ints)."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        v = 0 if isinstance(v, float) and not math.isfinite(v) else int(v)
        return max(info.min, min(info.max, v))
    return v


tensor_dicts = st.dictionaries(st.sampled_from(NAMES), arrays(), max_size=8)


def _valid(item: ItemRequest) -> None:
    assert isinstance(item, ItemRequest)
    assert isinstance(item.params, SamplingParams)
    assert item.params.max_tokens is None or item.params.max_tokens >= 1
    assert math.isfinite(item.params.temperature) and math.isfinite(item.params.top_p)


@SETTINGS
@given(tensor_dicts, st.booleans())
def test_item_from_tensors(tensors: dict[str, np.ndarray], text: bool) -> None:
    try:
        item = item_from_tensors(tensors, 0, text_input="text_input" if text else None,
                                 defaults={"exclude_input_in_output": True})
    except InvalidRequestError:
        return
    _valid(item)


@SETTINGS
@given(tensor_dicts)
def test_llm_item(tensors: dict[str, np.ndarray]) -> None:
    try:
        item = llm_item(tensors, {"stream": False, "exclude_input_in_output": True}, None)
    except InvalidRequestError:
        return
    _valid(item)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20)
KEYS = st.sampled_from(["max_tokens", "min_tokens", "temperature", "top_k", "top_p", "min_p",
                        "repetition_penalty", "presence_penalty", "frequency_penalty", "seed",
                        "n", "logprobs", "ignore_eos", "stop", "stop_token_ids", "bad_words",
                        "include_stop_str_in_output", "skip_special_tokens", "best_of", "x"])


@SETTINGS
@given(st.one_of(st.dictionaries(KEYS, json_values, max_size=6).map(
    json.dumps), st.text(max_size=64)))
def test_sampling_from_json(raw: str) -> None:
    try:
        sp = sampling_from_json(raw)
    except InvalidRequestError:
        return
    assert isinstance(sp, SamplingParams)
    assert all(isinstance(s, str) and s for s in sp.stop)


# ---- regressions the reliability suite found ------------------------------------------------
def _raises(fn: object, *args: object, **kwargs: object) -> str:
    try:
        fn(*args, **kwargs)  # type: ignore[operator]
    except InvalidRequestError as e:
        return str(e)
    raise AssertionError("no InvalidRequestError")


def test_nan_in_json_says_finite() -> None:
    assert "must be finite" in _raises(sampling_from_json, '{"temperature": NaN}')
    assert "must be finite" in _raises(sampling_from_json, '{"top_p": "inf"}')


def test_empty_text_prompt_is_refused() -> None:
    text = {"text_input": np.array([b""], dtype=object)}
    assert "text_input: is empty" in _raises(llm_item, text, {"stream": False,
                                                             "exclude_input_in_output": True}, 4)
    ens = {"text_input": np.array([[b""]], dtype=object), "max_tokens": np.array([[4]], np.int32)}
    assert "text_input: is empty" in _raises(item_from_tensors, ens, 0, text_input="text_input",
                                             defaults={})


def test_missing_text_and_short_batch_are_invalid_arg() -> None:
    assert "text_input: is required" in _raises(item_from_tensors, {}, 0, text_input="text_input",
                                                defaults={})
    ids = {"input_ids": np.zeros((3, 2), np.int32), "max_tokens": np.array([[4], [4]], np.int32)}
    assert "max_tokens: has batch size 2" in _raises(item_from_tensors, ids, 2, text_input=None,
                                                     defaults={})
