"""The `engine` model: TensorRT-LLM engine contract (token ids in, token ids out).

Besides `output_ids` each response carries `text_delta`: the incrementally detokenized text
of exactly these tokens, produced in the engine where the stream's detokenizer state lives,
so the (stateless) postprocessing model can pass it on with spaces and multi-byte
characters intact.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from inflight.errors import InvalidRequestError
from inflight.frontends.triton.base import EngineModel, read_inputs
from inflight.frontends.triton.cancel_forward import StopSocket
from inflight.frontends.triton.convert import (
    ItemRequest,
    batch_size,
    item_from_tensors,
    refuse_unsupported,
)
from inflight.frontends.triton.gather import GatheringRequest, GatheringSender
from inflight.frontends.triton.serving import ItemStream
from inflight.outputs import SequenceUpdate


def _bool_input(tensors: dict[str, np.ndarray], name: str) -> bool:
    arr = tensors.get(name)
    if arr is None:
        return False
    if arr.dtype.kind != "b":
        raise InvalidRequestError(name, f"must be a BOOL tensor, got dtype {arr.dtype}")
    return bool(arr.reshape(-1)[0])


def requested_outputs(request: Any) -> frozenset[str] | None:
    """The output names the caller requested, or None (every declared output). Triton fills
    in every output when a client names none; an ensemble step requests exactly the outputs
    its ``output_map`` reads, so the engine builds only what the next step consumes (the
    python backend drops unrequested tensors anyway, after they were built and copied)."""
    try:
        names = request.requested_output_names()
    except AttributeError:  # a caller without the method (tests, old stubs)
        return None
    return frozenset(names) or None


def sequence_outputs(pb: Any, stream: ItemStream, m: SequenceUpdate,
                     want: frozenset[str], peer_perf_outputs: bool = False) -> list[Any]:
    """Per-response tensors shared by `engine` and the ensemble contract (batch dim 1).

    ``want``: the outputs the caller requested (the model's declared outputs when it named
    none). Only what a response needs goes out, as TensorRT-LLM's backend does:
    `batch_index` when the request has more than one batch item, `sequence_index` when it
    asked for more than one sequence (a missing one means 0), `finish_reason` on the final
    response, the optional outputs when their `return_*` flag asked. Where the TensorRT-LLM
    profile declares its speculative-decoding outputs (`acceptance_rate`, ...:
    ``peer_perf_outputs``), `return_perf_metrics` also returns the KV-reuse stats and those outputs with their
    neutral values (no speculation here), as the peer does.
    """
    item = stream.item
    t = pb.Tensor
    out = []
    if item.batch_size > 1 and "batch_index" in want:
        out.append(t("batch_index", np.array([[item.batch_index]], dtype=np.int32)))
    if item.params.n > 1 and "sequence_index" in want:
        out.append(t("sequence_index", np.array([[m.index]], dtype=np.int32)))
    if m.finished and "finish_reason" in want:
        out.append(t("finish_reason", np.array([[(m.finish_reason or "").encode()]], dtype=object)))
    if not (item.return_log_probs or item.return_num_input_tokens or item.return_num_output_tokens
            or item.return_kv_cache_reuse_stats or item.return_perf_metrics
            or m.context_logits is not None or m.generation_logits is not None):
        return out  # the common case: no optional output asked
    if item.return_log_probs:
        if "output_log_probs" in want:
            lps = [lp[tok] for lp, tok in zip(m.logprobs or [], m.token_ids) if tok in lp]
            out.append(t("output_log_probs", np.array([[lps]], dtype=np.float32).reshape(1, 1, -1)))
        if "cum_log_probs" in want:
            out.append(t("cum_log_probs", np.array([[m.cumulative_logprob or 0.0]], dtype=np.float32)))
    mt = m.metrics
    if item.return_num_input_tokens and "num_input_tokens" in want:
        out.append(t("num_input_tokens", np.array([[len(stream.prompt_ids)]], dtype=np.int32)))
    if item.return_num_output_tokens and mt is not None and "num_output_tokens" in want:
        out.append(t("num_output_tokens", np.array([[mt.num_output_tokens]], dtype=np.int32)))
    peer_perf = peer_perf_outputs and item.return_perf_metrics
    if item.return_kv_cache_reuse_stats or peer_perf:  # every response (the peer's clients read
        reused, new = (mt.kv_reused_blocks, mt.kv_new_blocks) if mt is not None else (0, 0)  # each)
        for name, v in (("kv_cache_reused_blocks", reused), ("kv_cache_alloc_new_blocks", new),
                        ("kv_cache_alloc_total_blocks", reused + new)):
            if name in want:
                out.append(t(name, np.array([[v]], dtype=np.int32)))
    if m.context_logits is not None and "context_logits" in want:
        out.append(t("context_logits", m.context_logits.numpy()[None].astype(np.float32)))
    if m.generation_logits is not None and "generation_logits" in want:
        out.append(t("generation_logits", m.generation_logits.numpy()[None, None].astype(np.float32)))
    if item.return_perf_metrics:  # timings are known on the final response (0 before it)
        for name, v in (("arrival_time_ns", mt and mt.arrival_time),
                        ("first_scheduled_time_ns", mt and mt.first_scheduled_time),
                        ("first_token_time_ns", mt and mt.first_token_time),
                        ("last_token_time_ns", mt and mt.finished_time)):
            if name in want:
                out.append(t(name, np.array([[int((v or 0.0) * 1e9)]], dtype=np.int64)))
    if peer_perf:  # no speculative decoding: nothing drafted, nothing accepted
        for name, dtype in (("acceptance_rate", np.float32), ("total_accepted_draft_tokens", np.int32),
                            ("total_draft_tokens", np.int32)):
            if name in want:
                out.append(t(name, np.zeros((1, 1), dtype=dtype)))
    return out


class TritonPythonModel(EngineModel):
    def initialize(self, args: dict[str, Any]) -> None:
        super().initialize(args)
        # quiet stops from postprocessing and bls (triton/cancel_forward.py)
        self.core.stops = StopSocket(self.model_name)
        self.declared = frozenset(o["name"] for o in self.model_config.get("output", []))
        # decoupled_mode=false: one response per request (triton/gather.py)
        self.decoupled = bool(self.model_config.get("model_transaction_policy", {}).get("decoupled", False))
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0

    def finalize(self) -> None:
        super().finalize()
        if self.core.stops is not None:
            self.core.stops.close()

    def build_outputs(self, stream: ItemStream, m: SequenceUpdate) -> list[Any]:
        item = stream.item
        want = item.outputs if item.outputs is not None else self.declared
        t = self.pb.Tensor
        out = []
        # the prompt leads a non-streamed output only: a stream never repeats it (as TensorRT-LLM)
        echo = (not item.exclude_input_in_output and not item.stream
                and m.index not in stream.sent_first)
        if "output_ids" in want or "sequence_length" in want:
            ids = [*stream.prompt_ids, *m.token_ids] if echo else m.token_ids
            if "output_ids" in want:
                out.append(t("output_ids", np.array(ids, dtype=np.int32).reshape(1, 1, -1)))
            if "sequence_length" in want:
                out.append(t("sequence_length", np.array([[len(ids)]], dtype=np.int32)))
        if "text_delta" in want:
            text = m.text
            if echo:
                text = self.tokenizer.decode(stream.prompt_ids, skip_special_tokens=True) + text
            out.append(t("text_delta", np.array([[text.encode("utf-8")]], dtype=object)))
        if "engine_request_key" in want:
            out.append(t("engine_request_key", np.array([[stream.key]], dtype=np.uint64)))
        return out + sequence_outputs(self.pb, stream, m, want, "acceptance_rate" in self.declared)

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            try:
                tensors = read_inputs(self.pb, request, self.inputs)
                if _bool_input(tensors, "stop"):
                    if "engine_request_key" in tensors:
                        self.core.cancel_key(int(tensors["engine_request_key"].reshape(-1)[0]))
                    else:
                        self.core.cancel_client_id(request.request_id() or "")
                    request.get_response_sender().send(
                        self.pb.InferenceResponse(output_tensors=[]),
                        flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    continue
                refuse_unsupported(tensors)
                items = self.items(tensors)
                if not self.decoupled:
                    for it in items:
                        if it.stream:
                            raise InvalidRequestError(
                                it.names.get("stream", "streaming"),
                                "streaming needs decoupled_mode=true (this model is unary)")
            except Exception as e:  # noqa: BLE001 - the client gets the message
                self.reject(request, e)
                continue
            outputs = requested_outputs(request)
            for it in items:
                it.outputs = outputs
            if not self.decoupled:  # one response per request: gather the sequences
                request = GatheringRequest(request, GatheringSender(
                    self.pb, request.get_response_sender(), self.pad_id))
            self.submit_items(request, items)
        return None

    def items(self, tensors: dict[str, np.ndarray]) -> list[ItemRequest]:
        defaults = {"exclude_input_in_output": self.serving.exclude_input_in_output}
        n = batch_size(tensors, "input_ids")
        out = []
        for i in range(n):
            it = item_from_tensors(tensors, i, text_input=None, defaults=defaults,
                                   max_beam_width=self.serving.max_beam_width,
                                   trtllm_defaults="acceptance_rate" in self.declared)
            it.batch_size = n
            out.append(it)
        return out
