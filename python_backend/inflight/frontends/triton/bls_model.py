"""The `bls` model: preprocessing -> engine -> postprocessing through BLS calls, for users
who need their own logic between the steps. Same inputs and outputs as `ensemble`.

Each client request runs in a worker thread (execute() returns at once); the engine is
called with decoupled=True and each of its responses is post-processed and forwarded.
Client cancellation (polled on this model's sender at most every POLL_S, from the thread
that also sends the FINAL response, so never after it) is forwarded to the engine over its
stop socket (triton/cancel_forward.py) with the engine request's unique id, and the client
gets CANCELLED at once; so is a failure of this thread. Measured with tritonserver 2.51:
a BLS `stop` request instead deadlocked the server under the cancellation storm, and
draining the engine's remaining responses corrupted the stub's heap.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from typing import Any

from inflight.errors import InvalidRequestError
from inflight.frontends.triton.base import input_names, pb_module, read_inputs, triton_error
from inflight.frontends.triton.cancel_forward import POLL_S, send_stop
from inflight.frontends.triton.convert import refuse_unsupported
from inflight.frontends.triton.front import engine_inputs
from inflight.frontends.triton.params import raw_parameters
from inflight.frontends.triton.stub_reaper import reaper_for_this_stub
from inflight.frontends.triton.text_models import postprocess_outputs

_IDS = itertools.count()


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.pb = pb_module()
        # ends this stub if it outlives tritonserver (a thread stuck in a Triton call)
        self.reaper = reaper_for_this_stub()
        self.model_config = json.loads(args["model_config"])
        self.inputs = input_names(self.model_config)
        params = raw_parameters(self.model_config)
        self.pre = params.get("preprocessing_model", "preprocessing")
        self.engine = params.get("engine_model", "engine")
        self.post = params.get("postprocessing_model", "postprocessing")
        self.outputs = [o["name"] for o in self.model_config.get("output", [])]
        # TensorRT-LLM profile: the engine takes the peer's names, postprocessing its
        # TOKENS_BATCH/OUTPUT; tokenization happens here (front.py), one hop fewer
        self.profile = params.get("profile", "inflight")
        self.tokenizer = None
        if self.profile == "trtllm":
            from inflight.engine.core import load_tokenizer

            self.tokenizer = load_tokenizer(params["tokenizer_dir"], False)

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            threading.Thread(target=self._run, args=(request,), daemon=True).start()
        return None

    def _call(self, model: str, tensors: list[Any], out_names: list[str]) -> Any:
        pb = self.pb
        resp = pb.InferenceRequest(model_name=model, inputs=tensors,
                                   requested_output_names=out_names).exec()
        if resp.has_error():
            raise _Forward(resp.error())
        return resp

    def _run(self, request: Any) -> None:
        pb = self.pb
        sender = request.get_response_sender()
        final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        try:
            tensors = read_inputs(pb, request, self.inputs)
            if "text_input" not in tensors:
                raise InvalidRequestError("text_input", "is required")
            if self.tokenizer is not None:
                refuse_unsupported(tensors)
                tok = self.tokenizer
                pad = tok.pad_token_id if tok.pad_token_id is not None else 0
                eng = engine_inputs(tensors, tok, self.profile, pad, len(tok))
                self._stream(request, sender, [pb.Tensor(k, v) for k, v in eng.items()])
                return
            pre = self._call(self.pre, [pb.Tensor("text_input", tensors["text_input"])],
                             ["input_ids", "input_lengths"])
            inputs = [pb.get_output_tensor_by_name(pre, "input_ids"),
                      pb.get_output_tensor_by_name(pre, "input_lengths")]
            inputs += [pb.Tensor(k, v) for k, v in tensors.items() if k != "text_input"]
            self._stream(request, sender, inputs)
        except _Forward as f:
            sender.send(pb.InferenceResponse(output_tensors=[], error=f.error), flags=final)
        except Exception as e:  # noqa: BLE001 - the client gets the message
            sender.send(pb.InferenceResponse(output_tensors=[], error=triton_error(pb, e)), flags=final)

    def _stream(self, request: Any, sender: Any, engine_inputs: list[Any]) -> None:
        pb = self.pb
        rid = f"bls-{request.request_id() or ''}-{next(_IDS)}"
        eng_req = pb.InferenceRequest(model_name=self.engine, inputs=engine_inputs, request_id=rid,
                                      requested_output_names=self._engine_outputs())
        pending = None
        stopped, next_poll = False, 0.0
        try:
            for resp in eng_req.exec(decoupled=True):
                if resp.has_error():
                    pending = pb.InferenceResponse(output_tensors=[], error=resp.error())
                    continue
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + POLL_S
                    if sender.is_cancelled():
                        stopped = True
                        send_stop(self.engine, rid)  # not a BLS call: see cancel_forward
                        break
                outs = resp.output_tensors()
                if not outs:  # the engine's empty final response
                    continue
                if pending is not None:
                    sender.send(pending)
                pending = pb.InferenceResponse(output_tensors=self._postprocess(outs))
        except BaseException:
            if not stopped:  # never leave the engine generating for nobody
                send_stop(self.engine, rid)
            raise
        final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if stopped:
            err = pb.TritonError("request cancelled", pb.TritonError.CANCELLED)
            sender.send(pb.InferenceResponse(output_tensors=[], error=err), flags=final)
        elif pending is not None:
            sender.send(pending, flags=final)
        else:
            sender.send(pb.InferenceResponse(output_tensors=[]), flags=final)

    def _postprocess(self, outs: list[Any]) -> list[Any]:
        pb = self.pb
        if self.profile != "trtllm":
            # the engine already detokenized (text_delta): map in-process. A synchronous BLS
            # call to postprocessing for every engine response, made while this thread holds
            # the engine's response iterator, wedged the server under a cancellation storm
            # (the engine stub blocked in send, docs/reliability.md)
            tensors = {t.name(): t.as_numpy() for t in outs}
            wanted = set(self.outputs)
            return [pb.Tensor(n, v) for n, v in postprocess_outputs(None, tensors) if n in wanted]
        names = {"output_ids": "TOKENS_BATCH", "sequence_length": "SEQUENCE_LENGTH"}
        ins = [pb.Tensor(names.get(t.name(), t.name()), t.as_numpy()) for t in outs
               if t.name() != "engine_request_key"]
        wanted = ["OUTPUT"] + [n for n in self.outputs if n != "text_output"]
        post = self._call(self.post, ins, wanted).output_tensors()
        return [pb.Tensor("text_output", t.as_numpy()) if t.name() == "OUTPUT" else t for t in post]

    def _engine_outputs(self) -> list[str]:
        if self.profile == "trtllm":  # every result output the client may ask for
            return ["output_ids", "sequence_length", "text_delta"] + [
                n for n in self.outputs if n != "text_output"]
        return ["output_ids", "sequence_length", "text_delta", "batch_index", "sequence_index",
                "finish_reason", "cum_log_probs", "output_log_probs", "num_input_tokens",
                "num_output_tokens"]

    def finalize(self) -> None:
        if self.reaper is not None:
            self.reaper.stop()


class _Forward(Exception):
    def __init__(self, error: Any) -> None:
        super().__init__(str(error))
        self.error = error
