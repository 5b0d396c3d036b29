"""The `llm` model: one decoupled model with the tokenizer inside (vLLM backend contract).

The fast path: no preprocessing/postprocessing hops, so one response costs one IPC.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from inflight.errors import InvalidRequestError
from inflight.frontends.triton.base import EngineModel, read_inputs
from inflight.frontends.triton.convert import (
    ItemRequest,
    json_names,
    prompt_text,
    sampling_from_json,
    text_item,
)
from inflight.frontends.triton.serving import ItemStream
from inflight.outputs import SequenceUpdate

_FLAGS = ("stream", "exclude_input_in_output", "return_finish_reason", "return_cumulative_logprob",
          "return_logprobs", "return_num_input_tokens", "return_num_output_tokens")


def read_flags(tensors: dict[str, np.ndarray], defaults: dict[str, bool]) -> dict[str, bool]:
    out = dict(defaults)
    for name in _FLAGS:
        arr = tensors.get(name)
        if arr is None:
            continue
        if arr.dtype.kind != "b":
            raise InvalidRequestError(name, f"must be a BOOL tensor, got dtype {arr.dtype}")
        if arr.size != 1:
            raise InvalidRequestError(name, f"must hold one value, got shape {arr.shape}")
        out[name] = bool(arr.reshape(-1)[0])
    return out


def llm_item(tensors: dict[str, np.ndarray], defaults: dict[str, bool],
             default_max_tokens: int | None, tokenizer: Any = None) -> ItemRequest:
    if "text_input" not in tensors:
        raise InvalidRequestError("text_input", "is required")
    prompt = prompt_text(tensors, "text_input", 0)
    raw = text_item(tensors, "sampling_parameters", 0) if "sampling_parameters" in tensors else ""
    options: dict[str, Any] = {}
    params = sampling_from_json(raw, options)
    engine_prompt: str | list[int] = prompt
    if not options.get("add_special_tokens", True):  # no BOS added: the text has its own
        if tokenizer is None:
            raise InvalidRequestError("sampling_parameters.add_special_tokens",
                                      "false needs the model's tokenizer")
        engine_prompt = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if not engine_prompt:
            raise InvalidRequestError("text_input", "tokenizes to no tokens; send a non-empty prompt")
    if params.max_tokens is None and default_max_tokens is not None:
        params.max_tokens = default_max_tokens
    flags = read_flags(tensors, defaults)
    if (flags.get("return_logprobs") or flags.get("return_cumulative_logprob")) and params.logprobs is None:
        params.logprobs = 0  # the chosen token's logprob: cumulative_logprob needs it (issue 12)
    return ItemRequest(prompt=engine_prompt, params=params, stream=flags["stream"],
                       prompt_text=prompt,
                       exclude_input_in_output=flags["exclude_input_in_output"],
                       return_num_input_tokens=flags.get("return_num_input_tokens", False),
                       return_num_output_tokens=flags.get("return_num_output_tokens", False),
                       return_log_probs=flags.get("return_logprobs", False), flags=flags,
                       names=json_names())


class TritonPythonModel(EngineModel):
    def build_outputs(self, stream: ItemStream, m: SequenceUpdate) -> list[Any]:
        item, f = stream.item, stream.item.flags
        text = m.text
        if m.index not in stream.sent_first and not item.exclude_input_in_output:
            text = (item.prompt_text or (item.prompt if isinstance(item.prompt, str) else "")) + text
        t = self.pb.Tensor
        out = [t("text_output", np.array([text.encode("utf-8")], dtype=object))]
        if f.get("return_finish_reason") and m.finished:
            out.append(t("finish_reason", np.array([(m.finish_reason or "").encode()], dtype=object)))
        if f.get("return_cumulative_logprob") and m.finished:
            out.append(t("cumulative_logprob", np.array([m.cumulative_logprob or 0.0], dtype=np.float32)))
        if f.get("return_logprobs"):
            lps = [{str(k): {"logprob": v} for k, v in lp.items()} for lp in (m.logprobs or [])]
            out.append(t("logprobs", np.array([json.dumps(lps).encode()], dtype=object)))
        if f.get("return_num_input_tokens"):
            out.append(t("num_input_tokens", np.array([len(stream.prompt_ids)], dtype=np.uint32)))
        if f.get("return_num_output_tokens") and m.metrics is not None:
            out.append(t("num_output_tokens", np.array([m.metrics.num_output_tokens], dtype=np.uint32)))
        return out

    def execute(self, requests: list[Any]) -> None:
        defaults = {name: False for name in _FLAGS}
        defaults["exclude_input_in_output"] = self.serving.exclude_input_in_output
        for request in requests:
            try:
                tensors = read_inputs(self.pb, request, self.inputs)
                item = llm_item(tensors, defaults, self.serving.default_max_tokens,
                                self.tokenizer)
            except Exception as e:  # noqa: BLE001 - the client gets the message
                self.reject(request, e)
                continue
            self.submit_items(request, [item])
        return None
