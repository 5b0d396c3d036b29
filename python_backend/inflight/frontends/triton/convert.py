"""Request-tensor conversion for the Triton models, testable without a server.

Input: a dict of numpy arrays as the python backend hands them over (batch dim first when
the model has max_batch_size > 0). Output: one `ItemRequest` per batch item. Every error is
an InvalidRequestError naming the tensor and the allowed range or type.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inflight.config import parse_bool
from inflight.errors import ConfigError, InvalidRequestError
from inflight.sampling_params import SamplingParams

MAX_TEXT_BYTES = 1 << 20  # 1 MiB of prompt text per item
MAX_JSON_BYTES = 64 << 10
MAX_JSON_DEPTH = 8


@dataclass
class ItemRequest:
    """One batch item of a Triton request, ready for the engine."""

    prompt: str | list[int]
    params: SamplingParams
    prompt_text: str | None = None  # the text of a prompt tokenized here (for echo)
    batch_index: int = 0
    stream: bool = False
    exclude_input_in_output: bool = True
    return_num_input_tokens: bool = False
    return_num_output_tokens: bool = False
    return_log_probs: bool = False
    return_perf_metrics: bool = False
    return_kv_cache_reuse_stats: bool = False
    batch_size: int = 1  # items in the Triton request (batch_index is sent when > 1)
    # the output names the caller requested (``request.requested_output_names()``: an
    # ensemble step requests what its output_map reads); None: every declared output
    outputs: frozenset[str] | None = None
    flags: dict[str, Any] = field(default_factory=dict)
    # SamplingParams field -> the tensor (or sampling_parameters key) the client sent, so
    # that errors raised later (engine admission) name what the client sent
    names: dict[str, str] = field(default_factory=dict)


# name -> (allowed numpy dtype kinds, python cast). Aliases from older TensorRT-LLM releases
# (min_length, random_seed, runtime_top_k, ...) map to the same field.
_SCALARS: dict[str, tuple[str, type]] = {
    "max_tokens": ("iu", int), "request_output_len": ("iu", int),
    "min_tokens": ("iu", int), "min_length": ("iu", int),
    "end_id": ("iu", int), "pad_id": ("iu", int),
    "top_k": ("iu", int), "runtime_top_k": ("iu", int),
    "top_p": ("f", float), "runtime_top_p": ("f", float), "min_p": ("f", float),
    "temperature": ("f", float), "length_penalty": ("f", float),
    "repetition_penalty": ("f", float), "presence_penalty": ("f", float),
    "frequency_penalty": ("f", float),
    "seed": ("iu", int), "random_seed": ("iu", int),
    "beam_width": ("iu", int), "num_return_sequences": ("iu", int),
    "return_log_probs": ("b", bool), "return_context_logits": ("b", bool),
    "return_generation_logits": ("b", bool), "stream": ("b", bool),
    "exclude_input_in_output": ("b", bool), "return_num_input_tokens": ("b", bool),
    "return_num_output_tokens": ("b", bool), "return_perf_metrics": ("b", bool),
    "return_kv_cache_reuse_stats": ("b", bool), "ignore_eos": ("b", bool),
    "len_penalty": ("f", float), "early_stopping": ("b", bool), "streaming": ("b", bool),
}
_ALIASES = {"request_output_len": "max_tokens", "min_length": "min_tokens",
            "random_seed": "seed", "runtime_top_k": "top_k", "runtime_top_p": "top_p",
            "len_penalty": "length_penalty", "streaming": "stream"}
# SamplingParams fields whose client-side name differs from the field's
_FIELD_TENSORS = {"n": "num_return_sequences", "stop": "stop_words", "logprobs": "return_log_probs",
                  "stop_words_ids": "stop_words_list", "bad_words_ids": "bad_words_list"}
# Peer (TensorRT-LLM) inputs inflight does not implement -> the feature, named in the error
UNSUPPORTED_FEATURES: dict[str, str] = {}


def client_error(e: InvalidRequestError, names: dict[str, str]) -> InvalidRequestError:
    """``e`` re-worded to name what the client sent (``names``: field -> client name)."""
    name = names.get(e.field)
    if not name or name == e.field:
        return e
    return InvalidRequestError(name, str(e)[len(e.field) + 2:])


def refuse_unsupported(tensors: dict[str, np.ndarray]) -> None:
    """A peer input inflight cannot honour is an INVALID_ARG naming the feature."""
    if not UNSUPPORTED_FEATURES:
        from inflight.frontends.triton.trtllm_contract import TRTLLM_ENGINE_UNSUPPORTED
        UNSUPPORTED_FEATURES.update({k: v[2] for k, v in TRTLLM_ENGINE_UNSUPPORTED.items()})
    # decoder-only models: the peer's preprocessing always sends decoder_input_ids (a
    # placeholder); only a non-zero decoder_input_lengths asks for encoder-decoder decoding
    lens = tensors.get("decoder_input_lengths")
    no_decoder = lens is None or (lens.dtype.kind in "iu" and not lens.any())
    for name in tensors:
        if no_decoder and name in ("decoder_input_ids", "decoder_input_lengths"):
            continue  # the neutral value the peer's preprocessing sends for decoder-only models
        if name in UNSUPPORTED_FEATURES:
            raise InvalidRequestError(name, f"{UNSUPPORTED_FEATURES[name]} is not supported by "
                                      "inflight yet; leave this input out")
_INT32 = (-(2**31), 2**31 - 1)


def batch_size(tensors: dict[str, np.ndarray], anchor: str) -> int:
    if anchor not in tensors:
        raise InvalidRequestError(anchor, "is required")
    arr = tensors[anchor]
    n = int(arr.shape[0]) if arr.ndim >= 2 else 1
    if n < 1:
        raise InvalidRequestError(anchor, f"has an empty batch (shape {list(arr.shape)}); "
                                  "send at least one batch item")
    return n


def _row(arr: np.ndarray, name: str, item: int) -> np.ndarray:
    """Batch item `item` of a [B, ...] tensor ([N] / scalar: one row for every item)."""
    if arr.size == 0:
        raise InvalidRequestError(name, f"must not be empty, got shape {arr.shape}")
    rows = arr.reshape(arr.shape[0], -1) if arr.ndim >= 2 else arr.reshape(1, -1)
    if rows.shape[0] == 1:
        return rows[0]
    if item >= rows.shape[0]:
        raise InvalidRequestError(name, f"has batch size {rows.shape[0]}; item {item} is missing")
    return rows[item]


def scalar(tensors: dict[str, np.ndarray], name: str, item: int) -> Any:
    """The value of a [B, 1] (or [1]) tensor for batch item `item`, type-checked."""
    arr = tensors[name]
    kinds, cast = _SCALARS[name]
    if arr.dtype.kind not in kinds:
        want = {"iu": "an integer", "f": "a float", "b": "a bool"}[kinds]
        raise InvalidRequestError(name, f"must be {want} tensor, got dtype {arr.dtype}")
    row = _row(arr, name, item)
    if row.size != 1:
        raise InvalidRequestError(name, f"must hold one value per batch item, got shape {arr.shape}")
    v = row[0].item()
    if cast is float and not math.isfinite(v):
        raise InvalidRequestError(name, f"must be finite, got {v}")
    return cast(v)


def text_item(tensors: dict[str, np.ndarray], name: str, item: int) -> str:
    if name not in tensors:
        raise InvalidRequestError(name, "is required")
    arr = tensors[name]
    if arr.dtype.kind not in "OSU":
        raise InvalidRequestError(name, f"must be a BYTES/string tensor, got dtype {arr.dtype}")
    if arr.size == 0:
        raise InvalidRequestError(name, f"must not be empty, got shape {arr.shape}")
    flat = arr.reshape(-1) if arr.ndim < 2 else arr.reshape(arr.shape[0], -1)[:, 0]
    if flat.shape[0] > 1 and item >= flat.shape[0]:
        raise InvalidRequestError(name, f"has batch size {flat.shape[0]}; item {item} is missing")
    v = flat[item if flat.shape[0] > 1 else 0]
    raw = v if isinstance(v, bytes) else str(v).encode()
    if len(raw) > MAX_TEXT_BYTES:
        raise InvalidRequestError(name, f"is {len(raw)} bytes; at most {MAX_TEXT_BYTES} allowed")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRequestError(name, f"is not valid UTF-8 ({e.reason} at byte {e.start})") from None


def prompt_text(tensors: dict[str, np.ndarray], name: str, item: int) -> str:
    """A text prompt: like `text_item`, and an empty prompt is an error (not a BOS-only
    prompt the model would continue from nothing)."""
    text = text_item(tensors, name, item)
    if not text:
        raise InvalidRequestError(name, "is empty; send a non-empty prompt")
    return text


def word_list(tensors: dict[str, np.ndarray], name: str, item: int) -> list[str]:
    """TensorRT-LLM `stop_words`/`bad_words`: a [B, N] BYTES tensor of strings."""
    if name not in tensors:
        return []
    arr = tensors[name]
    if arr.dtype.kind not in "OSU":
        raise InvalidRequestError(name, f"must be a BYTES tensor of strings, got dtype {arr.dtype}")
    if arr.size == 0:
        return []
    row = _row(arr, name, item)
    out = []
    for v in row:
        s = v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
        if s:
            out.append(s)
    return out


def _check_int32(name: str, v: int) -> int:
    if not _INT32[0] <= v <= _INT32[1]:
        raise InvalidRequestError(name, f"must fit in int32, got {v}")
    return v


def token_lists(tensors: dict[str, np.ndarray], name: str, item: int) -> list[list[int]]:
    """TensorRT-LLM `stop_words_list` / `bad_words_list`: INT32 [B, 2, N] per item, row 0 the
    concatenated token ids, row 1 the end offset of each word (-1 padding) -> token lists."""
    if name not in tensors:
        return []
    arr = tensors[name]
    if arr.dtype.kind not in "iu":
        raise InvalidRequestError(name, f"must be an INT32 tensor [batch, 2, N], got dtype {arr.dtype}")
    if arr.size == 0:
        return []
    a = arr if arr.ndim == 3 else arr.reshape(1, *arr.shape[-2:]) if arr.ndim == 2 else None
    if a is None or a.shape[1] != 2:
        raise InvalidRequestError(name, f"must have shape [batch, 2, N], got {list(arr.shape)}")
    if a.shape[0] > 1 and item >= a.shape[0]:
        raise InvalidRequestError(name, f"has batch size {a.shape[0]}; item {item} is missing")
    ids, offsets = a[item if a.shape[0] > 1 else 0].tolist()
    words, start = [], 0
    for end in offsets:
        if end < 0:
            break
        if not start <= end <= len(ids):
            raise InvalidRequestError(name, f"offset {end} is outside the {len(ids)} token ids of row 0")
        if end > start:
            words.append([int(t) for t in ids[start:end]])
        start = end
    return words


def embedding_bias_item(tensors: dict[str, np.ndarray], item: int) -> dict[int, float]:
    """TensorRT-LLM `embedding_bias`: FP32 [B, V] (a dense additive logit bias; an empty
    tensor means none) -> {token id: bias} of its non-zero entries."""
    if "embedding_bias" not in tensors or tensors["embedding_bias"].size == 0:
        return {}
    arr = tensors["embedding_bias"]
    if arr.dtype.kind != "f":
        raise InvalidRequestError("embedding_bias", f"must be an FP32 tensor, got dtype {arr.dtype}")
    row = _row(arr, "embedding_bias", item).astype(np.float64)
    if not np.isfinite(row).all():
        raise InvalidRequestError("embedding_bias", "must be finite")
    nz = np.nonzero(row)[0]
    return {int(i): float(row[i]) for i in nz}


def sampling_from_tensors(tensors: dict[str, np.ndarray], item: int, *, require_max_tokens: bool,
                          max_beam_width: int = 1, trtllm_defaults: bool = False
                          ) -> tuple[SamplingParams, dict[str, Any]]:
    """TensorRT-LLM contract tensors -> SamplingParams + the return_* flags (+ ``_names``:
    field -> the tensor the client sent, for error messages)."""
    vals: dict[str, Any] = {}
    names: dict[str, str] = dict(_FIELD_TENSORS)
    for name in _SCALARS:
        if name in tensors:
            field_name = _ALIASES.get(name, name)
            vals[field_name] = scalar(tensors, name, item)
            names[field_name] = name
    if "max_tokens" not in vals:
        if require_max_tokens:
            raise InvalidRequestError("max_tokens (request_output_len)",
                                      "is required (an INT32 >= 1); there is no default")
        vals["max_tokens"] = 16
    for name in ("max_tokens", "min_tokens", "top_k", "end_id", "pad_id", "beam_width",
                 "num_return_sequences"):
        if name in vals:
            _check_int32(names.get(name, name), vals[name])
    if trtllm_defaults and vals.get("top_p") == 0.0:  # TensorRT-LLM: 0 means "not set"
        vals["top_p"] = 1.0
    if trtllm_defaults and not vals.get("top_k") and vals.get("top_p", 1.0) == 1.0:
        vals["temperature"] = 0.0  # TensorRT-LLM: no top_k / top_p is greedy decoding
    beam = vals.pop("beam_width", 1)
    if not 1 <= beam <= max_beam_width:
        raise InvalidRequestError("beam_width", f"must be in [1, {max_beam_width}] (beam search is "
                                  f"not supported; max_beam_width={max_beam_width}), got {beam}")
    vals.pop("length_penalty", None)  # only meaningful for beam search
    vals.pop("early_stopping", None)  # likewise
    flags = {k: vals.pop(k) for k in list(vals) if k.startswith("return_") or k in
             ("stream", "exclude_input_in_output")}
    if "stop_words_list" not in tensors:
        names["stop_words_ids"] = "stop_words"
    if "bad_words_list" not in tensors:
        names["bad_words_ids"] = "bad_words"
    end_id = vals.pop("end_id", None)
    try:
        sp = SamplingParams(
            max_tokens=vals.get("max_tokens"), min_tokens=vals.get("min_tokens", 0),
            temperature=vals.get("temperature", 1.0), top_k=vals.get("top_k", 0),
            top_p=vals.get("top_p", 1.0), min_p=vals.get("min_p", 0.0),
            repetition_penalty=vals.get("repetition_penalty", 1.0),
            presence_penalty=vals.get("presence_penalty", 0.0),
            frequency_penalty=vals.get("frequency_penalty", 0.0),
            seed=vals.get("seed"), end_id=end_id, pad_id=vals.get("pad_id"),
            ignore_eos=bool(vals.get("ignore_eos", False)),
            stop=word_list(tensors, "stop_words", item),
            stop_words_ids=token_lists(tensors, "stop_words_list", item),
            bad_words=word_list(tensors, "bad_words", item),
            bad_words_ids=token_lists(tensors, "bad_words_list", item),
            n=vals.get("num_return_sequences", 1),
            logprobs=0 if flags.get("return_log_probs") else None,
            return_context_logits=bool(flags.get("return_context_logits", False)),
            return_generation_logits=bool(flags.get("return_generation_logits", False)),
        )
    except InvalidRequestError as e:
        raise client_error(e, names) from None
    bias = embedding_bias_item(tensors, item)
    if bias:
        sp.embedding_bias = bias
    flags["_names"] = names
    return sp, flags


def input_ids_item(tensors: dict[str, np.ndarray], item: int) -> list[int]:
    """`input_ids` [B, L] int with `input_lengths` [B, 1] -> the item's token ids."""
    if "input_ids" not in tensors:
        raise InvalidRequestError("input_ids", "is required")
    ids = tensors["input_ids"]
    if ids.dtype.kind not in "iu":
        raise InvalidRequestError("input_ids", f"must be an integer tensor, got dtype {ids.dtype}")
    row = _row(ids, "input_ids", item) if ids.size else ids.reshape(-1)
    n = row.shape[0]
    if "input_lengths" in tensors:
        lens = tensors["input_lengths"]
        if lens.dtype.kind not in "iu":
            raise InvalidRequestError("input_lengths", f"must be an integer tensor, got {lens.dtype}")
        n = int(_row(lens.reshape(-1, 1), "input_lengths", item)[0])
        if not 0 <= n <= row.shape[0]:
            raise InvalidRequestError("input_lengths", f"must be in [0, {row.shape[0]}], got {n}")
    return [int(t) for t in row[:n]]


def item_from_tensors(tensors: dict[str, np.ndarray], item: int, *, text_input: str | None,
                      defaults: dict[str, bool], max_beam_width: int = 1,
                      trtllm_defaults: bool = False) -> ItemRequest:
    """One batch item of an `ensemble` (text_input) or `engine` (input_ids) request."""
    prompt: str | list[int] = (prompt_text(tensors, text_input, item) if text_input
                               else input_ids_item(tensors, item))
    sp, flags = sampling_from_tensors(tensors, item, require_max_tokens=True,
                                      max_beam_width=max_beam_width, trtllm_defaults=trtllm_defaults)
    names = flags.pop("_names")
    return ItemRequest(
        prompt=prompt, params=sp, batch_index=item,
        stream=bool(flags.get("stream", False)),
        exclude_input_in_output=bool(flags.get("exclude_input_in_output",
                                               defaults.get("exclude_input_in_output", True))),
        return_num_input_tokens=bool(flags.get("return_num_input_tokens", False)),
        return_num_output_tokens=bool(flags.get("return_num_output_tokens", False)),
        return_log_probs=bool(flags.get("return_log_probs", False)),
        return_perf_metrics=bool(flags.get("return_perf_metrics", False)),
        return_kv_cache_reuse_stats=bool(flags.get("return_kv_cache_reuse_stats", False)),
        names=names,
    )


# ---- vLLM backend contract (the `llm` model) ----------------------------------------------
_VLLM_FIELDS: dict[str, type] = {
    "max_tokens": int, "min_tokens": int, "temperature": float, "top_k": int, "top_p": float,
    "min_p": float, "repetition_penalty": float, "presence_penalty": float,
    "frequency_penalty": float, "seed": int, "n": int, "logprobs": int, "ignore_eos": bool,
    "stop": list, "stop_token_ids": list, "bad_words": list,
    "include_stop_str_in_output": bool, "skip_special_tokens": bool,
}
# Request options in sampling_parameters that are not sampling: how the prompt is tokenized.
# add_special_tokens=false (as in vLLM's OpenAI server) for a prompt rendered by a chat
# template, which already holds the BOS token as text.
_VLLM_PROMPT_OPTIONS: dict[str, type] = {"add_special_tokens": bool}
_VLLM_IGNORED = {"best_of", "use_beam_search", "length_penalty", "early_stopping",
                 "spaces_between_special_tokens", "prompt_logprobs", "detokenize"}


def _depth(obj: Any, d: int = 0) -> int:
    if isinstance(obj, dict):
        return max([d + 1] + [_depth(v, d + 1) for v in obj.values()])
    if isinstance(obj, list):
        return max([d + 1] + [_depth(v, d + 1) for v in obj])
    return d


def _coerce(name: str, typ: type, v: Any, source: str = "sampling_parameters") -> Any:
    """Coerce JSON values the way the vLLM backend does: strings become numbers/bools."""
    try:
        if typ is bool:
            if isinstance(v, str):
                try:
                    return parse_bool(v, name, source)
                except ConfigError:
                    raise ValueError(v) from None  # re-worded below, naming source.name
            return bool(v)
        if typ is list:
            if isinstance(v, str):
                return [v]
            if not isinstance(v, list):
                raise ValueError(v)
            return v
        if typ is int:
            if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
                raise ValueError(v)
            return int(v)
        out = float(v)
    except (TypeError, ValueError):
        raise InvalidRequestError(f"{source}.{name}",
                                  f"must be {typ.__name__}, got {v!r}") from None
    # outside the try: InvalidRequestError is a ValueError and would be re-worded above
    if not math.isfinite(out):
        raise InvalidRequestError(f"{source}.{name}", f"must be finite, got {v!r}")
    return out


def sampling_from_json(raw: str, options: dict[str, Any] | None = None,
                       source: str = "sampling_parameters") -> SamplingParams:
    """vLLM-contract JSON -> SamplingParams; prompt options (`_VLLM_PROMPT_OPTIONS`) go to
    ``options`` when given. ``source`` names where the JSON came from (the
    `sampling_parameters` tensor or the request's `parameters`): every error names
    ``<source>.<key>``."""
    if len(raw) > MAX_JSON_BYTES:
        raise InvalidRequestError(source, f"is {len(raw)} bytes; at most {MAX_JSON_BYTES}")
    try:
        obj = json.loads(raw) if raw.strip() else {}
    except (json.JSONDecodeError, RecursionError) as e:
        raise InvalidRequestError(source, f"is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise InvalidRequestError(source, "must be a JSON object")
    if _depth(obj) > MAX_JSON_DEPTH:
        raise InvalidRequestError(source, f"is nested deeper than {MAX_JSON_DEPTH}")
    kw: dict[str, Any] = {}
    for k, v in obj.items():
        if k in _VLLM_IGNORED or v is None:
            continue
        if k in _VLLM_PROMPT_OPTIONS:
            if options is not None:
                options[k] = _coerce(k, _VLLM_PROMPT_OPTIONS[k], v, source)
            continue
        if k not in _VLLM_FIELDS:
            raise InvalidRequestError(f"{source}.{k}",
                                      f"is not a known parameter; known: {', '.join(sorted(_VLLM_FIELDS))}")
        kw[k] = _coerce(k, _VLLM_FIELDS[k], v, source)
    if "stop" in kw:
        kw["stop"] = [str(s) for s in kw["stop"]]
    try:
        return SamplingParams(**kw)
    except InvalidRequestError as e:  # named as the client sent it (issue 12)
        raise client_error(e, json_names(source)) from None


def json_names(source: str = "sampling_parameters") -> dict[str, str]:
    """SamplingParams field -> the JSON key the client sent (`<source>.<key>`), for errors
    raised later (engine admission: n, logprobs, stop token ids against the model's caps)."""
    return {k: f"{source}.{k}" for k in _VLLM_FIELDS}
