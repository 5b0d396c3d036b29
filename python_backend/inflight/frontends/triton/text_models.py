"""`preprocessing` (text -> token ids) and `postprocessing` (engine outputs -> text) models.

Postprocessing is stateless by design and still exact: the engine already produced each
response's text delta with the stream's incremental detokenizer (`text_delta`), so spaces
and multi-byte characters survive streaming. Only when called on its own with token ids and
no `text_delta` does it decode the ids it was given.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from inflight.engine.core import load_tokenizer
from inflight.errors import InvalidRequestError
from inflight.frontends.triton.base import input_names, pb_module, read_inputs, triton_error
from inflight.frontends.triton.cancel_forward import CancelForwarder
from inflight.frontends.triton.convert import batch_size, prompt_text
from inflight.frontends.triton.params import raw_parameters, trust_remote_code
from inflight.frontends.triton.stub_reaper import reaper_for_this_stub

# engine outputs postprocessing forwards when the engine produced them
PASSTHROUGH_ALWAYS = ("batch_index", "sequence_index", "finish_reason", "cum_log_probs",
                      "num_input_tokens", "num_output_tokens")
OPTIONAL_PASSTHROUGH = ("output_log_probs", "context_logits", "generation_logits",
                        "kv_cache_reused_blocks", "kv_cache_alloc_new_blocks",
                        "kv_cache_alloc_total_blocks", "arrival_time_ns", "first_scheduled_time_ns",
                        "first_token_time_ns", "last_token_time_ns")


class _TokenizerModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.pb = pb_module()
        # ends this stub if it outlives tritonserver (a thread stuck in a Triton call)
        self.reaper = reaper_for_this_stub()
        self.model_config = json.loads(args["model_config"])
        self.inputs = input_names(self.model_config)
        params = raw_parameters(self.model_config)
        path = params.get("tokenizer_dir") or params.get("model_path")
        if not path:
            raise ValueError("config.pbtxt parameter 'tokenizer_dir' is required")
        self.tokenizer = load_tokenizer(path, trust_remote_code(params))

    def execute(self, requests: list[Any]) -> list[Any]:
        out = []
        for request in requests:
            try:
                tensors = read_inputs(self.pb, request, self.inputs)
                if self.cancelled(request, tensors):
                    err = self.pb.TritonError("request cancelled", self.pb.TritonError.CANCELLED)
                    out.append(self.pb.InferenceResponse(output_tensors=[], error=err))
                    continue
                out.append(self.pb.InferenceResponse(output_tensors=self.convert(tensors)))
            except Exception as e:  # noqa: BLE001 - the client gets the message
                out.append(self.pb.InferenceResponse(output_tensors=[], error=triton_error(self.pb, e)))
        return out

    def convert(self, tensors: dict[str, np.ndarray]) -> list[Any]:  # pragma: no cover
        raise NotImplementedError

    def cancelled(self, request: Any, tensors: dict[str, np.ndarray]) -> bool:
        return False

    def finalize(self) -> None:
        if self.reaper is not None:
            self.reaper.stop()


def tokenize_batch(tokenizer: Any, texts: list[str], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """-> input_ids [B, Lmax] int32 (right-padded), input_lengths [B, 1] int32."""
    ids = [tokenizer(t)["input_ids"] for t in texts]
    if any(len(x) == 0 for x in ids):
        raise InvalidRequestError("text_input", "tokenizes to no tokens; send a non-empty prompt")
    width = max(len(x) for x in ids)
    arr = np.full((len(ids), width), pad_id, dtype=np.int32)
    for i, x in enumerate(ids):
        arr[i, : len(x)] = x
    return arr, np.array([[len(x)] for x in ids], dtype=np.int32)


class PreprocessingModel(_TokenizerModel):
    def convert(self, tensors: dict[str, np.ndarray]) -> list[Any]:
        n = batch_size(tensors, "text_input")
        texts = [prompt_text(tensors, "text_input", i) for i in range(n)]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids, lens = tokenize_batch(self.tokenizer, texts, pad)
        return [self.pb.Tensor("input_ids", ids), self.pb.Tensor("input_lengths", lens)]


def postprocess_text(tokenizer: Any, tensors: dict[str, np.ndarray]) -> np.ndarray:
    """-> text_output [B, 1] bytes (B > 1 behind a unary engine, decoupled_mode=false): the
    engine's text delta, else a decode of the ids."""
    if "text_delta" in tensors:
        return np.asarray(tensors["text_delta"], dtype=object).reshape(-1, 1)
    ids = tensors["output_ids"].reshape(-1)
    n = int(tensors["sequence_length"].reshape(-1)[0]) if "sequence_length" in tensors else len(ids)
    text = tokenizer.decode(ids[:n].tolist(), skip_special_tokens=True)
    return np.array([[text.encode("utf-8")]], dtype=object)


def postprocess_outputs(tokenizer: Any, tensors: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """The postprocessing step as (name, array) pairs: text_output plus the engine's result
    outputs passed through. Shared by the postprocessing model and the bls model (which maps
    in-process instead of a nested BLS call per engine response)."""
    out = [("text_output", postprocess_text(tokenizer, tensors))]
    out += [(n, tensors[n]) for n in PASSTHROUGH_ALWAYS + OPTIONAL_PASSTHROUGH if n in tensors]
    return out


class PostprocessingModel(_TokenizerModel):
    def initialize(self, args: dict[str, Any]) -> None:
        super().initialize(args)
        engine = raw_parameters(self.model_config).get("engine_model", "engine")
        self.cancels = CancelForwarder(engine)

    def cancelled(self, request: Any, tensors: dict[str, np.ndarray]) -> bool:
        return self.cancels.cancelled(request, tensors)

    def convert(self, tensors: dict[str, np.ndarray]) -> list[Any]:
        return [self.pb.Tensor(n, v) for n, v in postprocess_outputs(self.tokenizer, tensors)]
