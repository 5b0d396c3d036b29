"""Front-model (ensemble contract) tensors -> engine-model tensors, testable without a server.

Used by the unary model and by `tensorrt_llm_bls`: the client speaks the ensemble contract
(`text_input`, `max_tokens`, `top_k`, `embedding_bias_words`, ...); the engine of the
TensorRT-LLM profile takes the peer's engine names (`request_output_len`, `runtime_top_k`,
`embedding_bias`, ...). Errors the engine raises name its tensor; :func:`front_error_text`
turns them back into the name the client sent.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from inflight.errors import InvalidRequestError
from inflight.frontends.triton.convert import batch_size, prompt_text, word_list

# ensemble input -> tensorrt_llm input, where they differ (TensorRT-LLM profile)
TRTLLM_RENAMES = {"max_tokens": "request_output_len", "top_k": "runtime_top_k",
                  "top_p": "runtime_top_p", "length_penalty": "len_penalty", "stream": "streaming"}
# front-only inputs that never go to the engine as such
FRONT_ONLY = {"text_input", "embedding_bias_words", "embedding_bias_weights"}


def tokenize_items(tokenizer: Any, tensors: dict[str, np.ndarray]) -> list[list[int]]:
    n = batch_size(tensors, "text_input")
    out = []
    for i in range(n):
        ids = list(tokenizer(prompt_text(tensors, "text_input", i))["input_ids"])
        if not ids:
            raise InvalidRequestError("text_input", "tokenizes to no tokens; send a non-empty prompt")
        out.append(ids)
    return out


def pad_ids(ids: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """-> input_ids [B, Lmax] int32, input_lengths [B, 1] int32."""
    width = max(len(x) for x in ids)
    arr = np.full((len(ids), width), pad_id, dtype=np.int32)
    for i, x in enumerate(ids):
        arr[i, : len(x)] = x
    return arr, np.array([[len(x)] for x in ids], dtype=np.int32)


def embedding_bias_from_words(tokenizer: Any, tensors: dict[str, np.ndarray], batch: int,
                              vocab_size: int) -> np.ndarray | None:
    """`embedding_bias_words` [B, N] BYTES + `embedding_bias_weights` [B, N] FP32 -> the
    engine's dense `embedding_bias` [B, V]: each word's first token gets its weight (the
    TensorRT-LLM preprocessing rule). None when no words were sent."""
    if "embedding_bias_words" not in tensors and "embedding_bias_weights" not in tensors:
        return None
    if "embedding_bias_words" not in tensors or "embedding_bias_weights" not in tensors:
        missing = "embedding_bias_words" if "embedding_bias_words" not in tensors else "embedding_bias_weights"
        raise InvalidRequestError(missing, "is required with the other embedding_bias_* input")
    w = tensors["embedding_bias_weights"]
    if w.dtype.kind != "f":
        raise InvalidRequestError("embedding_bias_weights", f"must be an FP32 tensor, got dtype {w.dtype}")
    out = np.zeros((batch, vocab_size), dtype=np.float32)
    weights = w.reshape(w.shape[0], -1) if w.ndim >= 2 else w.reshape(1, -1)
    for i in range(batch):
        words = word_list(tensors, "embedding_bias_words", i)
        row = weights[i if weights.shape[0] > 1 else 0]
        if len(words) > row.shape[0]:
            raise InvalidRequestError("embedding_bias_weights",
                                      f"has {row.shape[0]} weights for {len(words)} embedding_bias_words")
        for word, weight in zip(words, row):
            if not np.isfinite(weight):
                raise InvalidRequestError("embedding_bias_weights", f"must be finite, got {weight}")
            toks = tokenizer(word, add_special_tokens=False)["input_ids"]
            if toks:
                out[i, toks[0]] += float(weight)
    return out


def engine_inputs(tensors: dict[str, np.ndarray], tokenizer: Any, profile: str, pad_id: int,
                  vocab_size: int) -> dict[str, np.ndarray]:
    """The engine request for a front request (all batch items in one engine request)."""
    ids, lens = pad_ids(tokenize_items(tokenizer, tensors), pad_id)
    out: dict[str, np.ndarray] = {"input_ids": ids, "input_lengths": lens}
    renames = TRTLLM_RENAMES if profile == "trtllm" else {}
    for name, arr in tensors.items():
        if name in FRONT_ONLY:
            continue
        out[renames.get(name, name)] = arr
    bias = embedding_bias_from_words(tokenizer, tensors, ids.shape[0], vocab_size)
    if bias is not None:
        out["embedding_bias"] = bias
    return out


def front_error_text(message: str, profile: str) -> str:
    """An engine error names the engine tensor; give the client the name it sent."""
    if profile != "trtllm":
        return message
    for front, engine in TRTLLM_RENAMES.items():
        if message.startswith(engine + ":"):
            return front + message[len(engine):]
    return message
