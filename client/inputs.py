"""Request tensors for the two text contracts inflight serves.

- ``ensemble`` (TensorRT-LLM backend contract, batched: every input is ``[batch, 1]``):
  ``text_input`` BYTES, ``max_tokens`` INT32, ``stream`` BOOL, ``temperature`` FP32,
  ``top_k`` INT32, ``top_p`` FP32, ``seed`` UINT64 (older TensorRT-LLM ensembles call it
  ``random_seed``), ``stop_words`` BYTES ``[batch, n]``, ``exclude_input_in_output`` BOOL.
  Output ``text_output`` BYTES.
- ``llm`` (vLLM backend contract, one prompt per request, inputs ``[1]``): ``text_input``
  BYTES, ``stream`` BOOL, ``sampling_parameters`` BYTES (a JSON string),
  ``exclude_input_in_output`` BOOL. Output ``text_output`` BYTES.

Unset parameters are left out, so the server's defaults apply.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = [
    "MODEL_KINDS",
    "ModelKind",
    "SamplingParams",
    "build_inputs",
    "build_json_payload",
    "model_kind_for",
]

ModelKind = Literal["ensemble", "llm"]
MODEL_KINDS: tuple[ModelKind, ...] = ("ensemble", "llm")


@dataclass(frozen=True)
class SamplingParams:
    """What a client may ask for; None means "not sent" (the server default applies)."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    stream: bool = True
    exclude_input_in_output: bool | None = None
    ignore_eos: bool | None = None  # keep generating past end-of-sequence (benchmarks, tests)

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise ValueError(f"seed must fit in uint64, got {self.seed}")


def model_kind_for(model: str) -> ModelKind:
    """The contract a model name implies: ``llm`` speaks vLLM's, anything else TRT-LLM's."""
    return "llm" if model == "llm" else "ensemble"


def build_inputs(
    model_kind: ModelKind,
    prompts: Sequence[str],
    params: SamplingParams,
    *,
    seed_input: str = "seed",
) -> dict[str, np.ndarray]:
    """Input tensors (name -> array) for one request carrying ``prompts``."""
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt")
    if model_kind == "ensemble":
        return _ensemble_inputs(prompts, params, seed_input)
    if model_kind == "llm":
        if len(prompts) != 1:
            raise ValueError(
                f"the llm model (vLLM contract) takes one prompt per request, got "
                f"{len(prompts)}: send one request per prompt"
            )
        return _llm_inputs(prompts[0], params)
    raise ValueError(f"unknown model kind {model_kind!r}; expected one of {MODEL_KINDS}")


def _ensemble_inputs(
    prompts: Sequence[str], params: SamplingParams, seed_input: str
) -> dict[str, np.ndarray]:
    batch = len(prompts)

    def column(value: Any, dtype: type[np.generic]) -> np.ndarray:
        return np.full((batch, 1), value, dtype=dtype)  # [batch, 1]

    inputs = {
        "text_input": np.array([[p.encode("utf-8")] for p in prompts], dtype=np.object_),
        "stream": column(params.stream, np.bool_),
    }
    optional: list[tuple[str, Any, type[np.generic]]] = [
        ("max_tokens", params.max_tokens, np.int32),
        ("temperature", params.temperature, np.float32),
        ("top_k", params.top_k, np.int32),
        ("top_p", params.top_p, np.float32),
        (seed_input, params.seed, np.uint64),
        ("exclude_input_in_output", params.exclude_input_in_output, np.bool_),
        ("ignore_eos", params.ignore_eos, np.bool_),
    ]
    for name, value, dtype in optional:
        if value is not None:
            inputs[name] = column(value, dtype)
    if params.stop:
        words = [w.encode("utf-8") for w in params.stop]
        inputs["stop_words"] = np.array([words] * batch, dtype=np.object_)  # [batch, n]
    return inputs


def _llm_inputs(prompt: str, params: SamplingParams) -> dict[str, np.ndarray]:
    inputs = {
        "text_input": np.array([prompt.encode("utf-8")], dtype=np.object_),
        "stream": np.array([params.stream], dtype=np.bool_),
        "sampling_parameters": np.array(
            [json.dumps(_vllm_sampling(params)).encode("utf-8")], dtype=np.object_
        ),
    }
    if params.exclude_input_in_output is not None:
        inputs["exclude_input_in_output"] = np.array(
            [params.exclude_input_in_output], dtype=np.bool_
        )
    return inputs


def _vllm_sampling(params: SamplingParams) -> dict[str, Any]:
    """vLLM ``SamplingParams`` fields; unset ones omitted."""
    fields = {
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_k": params.top_k,
        "top_p": params.top_p,
        "seed": params.seed,
        "stop": list(params.stop) or None,
        "ignore_eos": params.ignore_eos,
    }
    return {k: v for k, v in fields.items() if v is not None}


def build_json_payload(
    model_kind: ModelKind, prompt: str, params: SamplingParams, *, seed_input: str = "seed"
) -> dict[str, Any]:
    """The same request as :func:`build_inputs` for one prompt, as a generate-extension
    JSON body (HTTP ``/generate`` and ``/generate_stream``)."""
    tensors = build_inputs(model_kind, [prompt], params, seed_input=seed_input)
    payload: dict[str, Any] = {}
    for name, array in tensors.items():
        values = [_json_value(v) for v in array.reshape(-1)]
        payload[name] = values if name == "stop_words" else values[0]
    return payload


def _json_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value
