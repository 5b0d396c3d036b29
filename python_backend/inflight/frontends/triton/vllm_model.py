"""The vLLM compatibility profile of the `llm` model (`inflight repo build --layout llm
--profile vllm`): vllm_backend's request contract and defaults.

What differs from inflight's own `llm` profile (docs/compatibility.md):
- sampling parameters come from the `sampling_parameters` tensor, else from the request's
  `parameters` (the vLLM README's `"parameters": {"temperature": 0}`; a top-level
  `max_tokens` of an HTTP /generate body lands there too);
- vLLM's defaults: `max_tokens` 16, and a non-streamed output starts with the prompt unless
  `exclude_input_in_output` is true (a stream never carries it; asking for it is an error);
- the `return_*` outputs are on every response: `finish_reason` ("None" until the sequence
  finished), the running `cumulative_logprob` (computed whether or not logprobs were asked),
  `num_output_tokens` of this response, `num_input_tokens`; `logprobs` is "null" unless
  `sampling_parameters.logprobs` asked for them, else one {token id: {logprob, rank,
  decoded_token}} entry per new token.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inflight.errors import InvalidRequestError
from inflight.frontends.triton.base import read_inputs
from inflight.frontends.triton.convert import (
    ItemRequest,
    json_names,
    prompt_text,
    sampling_from_json,
    text_item,
)
from inflight.frontends.triton.llm_model import TritonPythonModel as LlmModel
from inflight.frontends.triton.llm_model import read_flags
from inflight.frontends.triton.params import raw_parameters
from inflight.frontends.triton.serving import ItemStream
from inflight.outputs import SequenceUpdate

VLLM_DEFAULT_MAX_TOKENS = 16
# request `parameters` that are not sampling parameters (inputs of this model, Triton's own)
VLLM_STREAM_ECHO_ERROR = ("Error generating stream: When streaming, `exclude_input_in_output` "
                          "= False is not allowed.")
_NOT_SAMPLING = {"stream", "exclude_input_in_output", "return_finish_reason",
                 "return_cumulative_logprob", "return_logprobs", "return_num_input_tokens",
                 "return_num_output_tokens", "text_input", "sampling_parameters"}
_UNSUPPORTED = {"lora_name": "LoRA adapters", "image": "multimodal (image) input",
                "structured_outputs": "structured outputs (guided decoding)"}


@dataclass
class SeqState:
    """Per sequence, across its responses (sender thread only)."""

    cumulative: float = 0.0
    ids: list[int] = field(default_factory=list)  # prompt + output ids so far (decoded_token)
    text: str | None = None  # the stable text of ``ids`` (None: not decoded yet)


def request_parameters(request: Any) -> str:
    """The request's `parameters` as a JSON object string (empty when none)."""
    raw = request.parameters() if hasattr(request, "parameters") else "{}"
    try:
        obj = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return ""
    keep = {k: v for k, v in obj.items() if k not in _NOT_SAMPLING and not k.startswith("triton_")}
    return json.dumps(keep) if keep else ""


def vllm_item(tensors: dict[str, np.ndarray], params_json: str, tokenizer: Any = None
              ) -> ItemRequest:
    """One vLLM-contract request -> ItemRequest; errors name what the client sent."""
    for name, feature in _UNSUPPORTED.items():
        if name in tensors:
            raise InvalidRequestError(name, f"{feature} is not supported by inflight yet")
    if "text_input" not in tensors:
        raise InvalidRequestError("text_input", "is required")
    prompt = prompt_text(tensors, "text_input", 0)
    if "sampling_parameters" in tensors:
        raw, source = text_item(tensors, "sampling_parameters", 0), "sampling_parameters"
    else:
        raw, source = params_json, "parameters"
    _refuse_unsupported_keys(raw, source)
    options: dict[str, Any] = {}
    params = sampling_from_json(raw, options, source=source)
    engine_prompt: str | list[int] = prompt
    if not options.get("add_special_tokens", True):
        if tokenizer is None:
            raise InvalidRequestError(f"{source}.add_special_tokens", "false needs the model's tokenizer")
        engine_prompt = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        if not engine_prompt:
            raise InvalidRequestError("text_input", "tokenizes to no tokens; send a non-empty prompt")
    if params.max_tokens is None:
        params.max_tokens = VLLM_DEFAULT_MAX_TOKENS
    flags = read_flags(tensors, {})
    stream = flags.get("stream", False)
    if "exclude_input_in_output" in flags:
        echo = not flags["exclude_input_in_output"]
        if echo and stream:
            # vllm_backend's clients compare this error's exact text (its enabled_stream test)
            raise InvalidRequestError(
                "exclude_input_in_output", "false is not allowed when streaming",
                wording=VLLM_STREAM_ECHO_ERROR)
    else:
        echo = not stream
    flags["client_logprobs"] = params.logprobs is not None  # asked in the sampling parameters
    if params.logprobs is None and (flags.get("return_cumulative_logprob") or flags.get("return_logprobs")):
        params.logprobs = 0  # the chosen token's logprob, for the running cumulative_logprob
    names = json_names(source)
    return ItemRequest(prompt=engine_prompt, params=params, stream=stream, prompt_text=prompt,
                       exclude_input_in_output=not echo,
                       return_num_input_tokens=flags.get("return_num_input_tokens", False),
                       return_num_output_tokens=flags.get("return_num_output_tokens", False),
                       return_log_probs=flags.get("return_logprobs", False), flags=flags,
                       names=names)


def _refuse_unsupported_keys(raw: str, source: str) -> None:
    try:
        obj = json.loads(raw) if raw.strip() else {}
    except (json.JSONDecodeError, RecursionError):
        return  # sampling_from_json names the JSON error
    if isinstance(obj, dict):
        for key, feature in _UNSUPPORTED.items():
            if obj.get(key) is not None:
                raise InvalidRequestError(f"{source}.{key}", f"{feature} is not supported by inflight yet")


def stable_text(tokenizer: Any, ids: list[int]) -> str:
    """The text of ``ids`` without a trailing incomplete character (as the stream shows it)."""
    return tokenizer.decode(ids, skip_special_tokens=True).rstrip("\ufffd")


def logprob_entries(tokenizer: Any, st: SeqState, m: SequenceUpdate) -> list[dict[str, Any]]:
    """One {token id: {logprob, rank, decoded_token}} per new token. ``rank``: the position in
    the requested top-k (1 = most likely); a sampled token outside it gets k + 1 (a lower bound:
    the engine returns the top-k, not the whole distribution). ``decoded_token``: the text the
    token added to the output, so the rank-1 pieces of a greedy response concatenate to its
    text_output."""
    out = []
    if st.text is None:  # decoded in the prompt's context, as the engine's detokenizer does
        st.text = stable_text(tokenizer, st.ids)
    for tok, lp in zip(m.token_ids, m.logprobs or []):
        prev = st.text
        st.ids.append(tok)
        st.text = stable_text(tokenizer, st.ids)
        piece = st.text[len(prev):] if st.text.startswith(prev) else st.text
        # the chosen token and the top-k; sorted by logprob, the position is the rank (a
        # chosen token outside the top-k sorts last: k + 1)
        ranked = sorted(lp.items(), key=lambda x: -x[1])
        entry: dict[str, Any] = {}
        for i, (t, v) in enumerate(ranked):
            text = piece if t == tok else tokenizer.decode([t], skip_special_tokens=False)
            entry[str(t)] = {"logprob": float(v), "rank": i + 1, "decoded_token": text}
        out.append(entry)
    return out


class TritonPythonModel(LlmModel):
    """`llm` with the vLLM profile's contract (the `profile` parameter says which)."""

    def initialize(self, args: dict[str, Any]) -> None:
        super().initialize(args)
        self.vllm = raw_parameters(self.model_config).get("profile") == "vllm"
        self._seqs: dict[tuple[str, int], SeqState] = {}

    def execute(self, requests: list[Any]) -> None:
        if not self.vllm:
            return super().execute(requests)
        for request in requests:
            try:
                tensors = read_inputs(self.pb, request, self.inputs)
                item = vllm_item(tensors, request_parameters(request), self.tokenizer)
            except Exception as e:  # noqa: BLE001 - the client gets the message
                self.reject(request, e)
                continue
            self.submit_items(request, [item])
        return None

    def build_outputs(self, stream: ItemStream, m: SequenceUpdate) -> list[Any]:
        if not self.vllm:
            return super().build_outputs(stream, m)
        item, f = stream.item, stream.item.flags
        key = (stream.engine_id, m.index)
        st = self._seqs.get(key)
        if st is None:
            st = self._seqs[key] = SeqState(ids=list(stream.prompt_ids))
        if m.finished:
            self._seqs.pop(key, None)
        text = m.text
        if m.index not in stream.sent_first and not item.exclude_input_in_output:
            text = (item.prompt_text or "") + text
        t = self.pb.Tensor
        out = [t("text_output", np.array([text.encode("utf-8")], dtype=object))]
        if f.get("return_finish_reason"):
            reason = (m.finish_reason or "None") if m.finished else "None"
            out.append(t("finish_reason", np.array([reason.encode()], dtype=object)))
        new_lps = [lp.get(tok, 0.0) for tok, lp in zip(m.token_ids, m.logprobs or [])]
        st.cumulative += float(sum(new_lps))
        if f.get("return_cumulative_logprob"):
            out.append(t("cumulative_logprob", np.array([st.cumulative], dtype=np.float32)))
        if f.get("return_logprobs"):
            lps = logprob_entries(self.tokenizer, st, m) if f.get("client_logprobs") else None
            out.append(t("logprobs", np.array([json.dumps(lps).encode()], dtype=object)))
        if f.get("return_num_input_tokens"):
            out.append(t("num_input_tokens", np.array([len(stream.prompt_ids)], dtype=np.uint32)))
        if f.get("return_num_output_tokens"):
            out.append(t("num_output_tokens", np.array([len(m.token_ids)], dtype=np.uint32)))
        return out
