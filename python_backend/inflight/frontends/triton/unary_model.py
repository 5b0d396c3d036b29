"""The unary front model: one response per request on the ensemble contract, from the same
engine that streams.

Triton answers `ModelInfer` / HTTP `/infer` only for non-decoupled models, and a model is one
or the other. The engine that streams is decoupled, and it must be loaded once. So this model
(non-decoupled) sends one engine request per client request through BLS
(`exec(decoupled=True)` on the decoupled engine, `exec()` when `decoupled_mode=false` made the
engine unary itself), reads the engine's responses to the end, and answers with one response:
every batch item x sequence as one row. docs/architecture.md says why this design.

Each request runs in its own thread (the response sender of a non-decoupled model may be
used from a thread in python_backend >= 24.04), so one instance serves many requests at once.
Cancellation (client cancel, gRPC deadline): one :class:`CancelWatch` thread per instance polls
the senders of the requests in flight every POLL_S (not on the engine's responses: a
non-streamed engine request answers once, at its end); the engine is told over its stop socket
(never a BLS stop request: docs/reliability.md) and this model keeps reading the engine's
responses to their FINAL (never abandons a BLS iterator, the 2.51 stub crash), then answers
CANCELLED.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from inflight.engine.core import load_tokenizer
from inflight.errors import InvalidRequestError
from inflight.frontends.triton.base import input_names, pb_module, read_inputs, triton_error
from inflight.frontends.triton.cancel_forward import POLL_S, send_stop
from inflight.frontends.triton.convert import refuse_unsupported
from inflight.frontends.triton.front import engine_inputs, front_error_text
from inflight.frontends.triton.gather import stack_parts
from inflight.frontends.triton.params import param_bool, raw_parameters, trust_remote_code
from inflight.frontends.triton.stub_reaper import reaper_for_this_stub

_IDS = itertools.count()
# engine outputs this model folds into text_output / does not return
_ENGINE_ONLY = ("output_ids", "sequence_length", "text_delta", "engine_request_key")


class _Row:
    """One (batch item, sequence) of the engine's answer, accumulated over its responses."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.last: dict[str, np.ndarray] = {}

    def add(self, part: dict[str, np.ndarray]) -> None:
        delta = part.get("text_delta")
        if delta is not None:
            self.text.extend(v.decode("utf-8") if isinstance(v, bytes) else str(v)
                             for v in delta.reshape(-1))
        lps = part.get("output_log_probs")
        if lps is not None and "output_log_probs" in self.last:  # streamed: concatenate
            part = dict(part)
            part["output_log_probs"] = np.concatenate([self.last["output_log_probs"], lps], axis=-1)
        self.last.update(part)


def split_rows(part: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """A gathered engine response ([rows, ...] tensors) -> one part per row."""
    n = next(iter(part.values())).shape[0] if part else 0
    return [{k: v[i:i + 1] for k, v in part.items()} for i in range(n)]


def row_key(part: dict[str, np.ndarray]) -> tuple[int, int]:
    b, s = part.get("batch_index"), part.get("sequence_index")
    return (int(b.reshape(-1)[0]) if b is not None else 0, int(s.reshape(-1)[0]) if s is not None else 0)


def unary_outputs(rows: dict[tuple[int, int], _Row], outputs: list[str], profile: str
                  ) -> dict[str, np.ndarray]:
    """The one response: text_output per row ([rows] in the TensorRT-LLM profile, as its
    postprocessing shapes it; [rows, 1] in inflight's), every other declared output stacked."""
    keys = sorted(rows)
    texts = np.array(["".join(rows[k].text).encode("utf-8") for k in keys], dtype=object)
    out = {"text_output": texts if profile == "trtllm" else texts.reshape(-1, 1)}
    parts = [{n: v for n, v in rows[k].last.items() if n not in _ENGINE_ONLY and n in outputs}
             for k in keys]
    out.update(stack_parts(parts))
    return out


class CancelWatch:
    """The requests in flight of one model instance, their senders polled by one thread.

    ``watch(rid, sender)`` before the engine request is sent, ``done(rid)`` once its last
    response arrived (True if it was stopped for a cancel). A cancelled request's engine
    request is stopped once (``stop(engine, rid)``) and its sender is not polled again.
    """

    def __init__(self, engine: str, poll_s: float = POLL_S,
                 stop: Callable[[str, str], None] = send_stop) -> None:
        self.engine = engine
        self.poll_s = poll_s
        self._stop = stop
        self._live: dict[str, Any] = {}
        self._stopped: set[str] = set()
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def watch(self, rid: str, sender: Any) -> None:
        with self._cond:
            self._live[rid] = sender
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="unary-cancel-watch",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def done(self, rid: str) -> bool:
        with self._cond:
            self._live.pop(rid, None)
            if rid in self._stopped:
                self._stopped.discard(rid)
                return True
            return False

    def poll_once(self) -> list[str]:
        """Ask every live sender once; stop the cancelled ones. Returns their ids."""
        with self._cond:
            live = list(self._live.items())
        hit = [rid for rid, sender in live if sender.is_cancelled()]
        with self._cond:
            hit = [rid for rid in hit if self._live.pop(rid, None) is not None]
            self._stopped.update(hit)
        for rid in hit:
            self._stop(self.engine, rid)  # the engine ends it with a normal (abort) final
        return hit

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._live and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                self._cond.wait(self.poll_s)  # woken early only by close() or a new request
                if self._closed:
                    return
            self.poll_once()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        self.pb = pb_module()
        # ends this stub if it outlives tritonserver (a thread stuck in a Triton call)
        self.reaper = reaper_for_this_stub()
        self.model_config = json.loads(args["model_config"])
        self.inputs = input_names(self.model_config)
        self.outputs = [o["name"] for o in self.model_config.get("output", [])]
        params = raw_parameters(self.model_config)
        self.engine = params.get("engine_model", "engine")
        self.profile = params.get("profile", "inflight")
        self.engine_decoupled = param_bool(params, "decoupled_mode", True)
        path = params.get("tokenizer_dir") or params.get("model_path")
        if not path:
            raise ValueError("config.pbtxt parameter 'tokenizer_dir' is required")
        self.tokenizer = load_tokenizer(path, trust_remote_code(params))
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0
        self.vocab_size = len(self.tokenizer)
        self._threads: set[threading.Thread] = set()
        self.watch = CancelWatch(self.engine)

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            th = threading.Thread(target=self._run, args=(request,), daemon=True)
            self._threads.add(th)
            th.start()
        self._threads = {t for t in self._threads if t.is_alive()}
        return None

    def _run(self, request: Any) -> None:
        pb = self.pb
        sender = request.get_response_sender()
        final = pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        try:
            response = self._answer(request, sender)
        except Exception as e:  # noqa: BLE001 - the client gets the message
            response = pb.InferenceResponse(output_tensors=[], error=triton_error(pb, e))
        sender.send(response, flags=final)

    def _engine_request(self, request: Any) -> tuple[list[Any], str]:
        pb = self.pb
        tensors = read_inputs(pb, request, self.inputs)
        refuse_unsupported(tensors)
        if "text_input" not in tensors:
            raise InvalidRequestError("text_input", "is required")
        stream = tensors.get("stream")
        if stream is not None and stream.dtype.kind == "b" and bool(stream.reshape(-1).any()):
            raise InvalidRequestError("stream", "true needs a decoupled model: stream from the "
                                      "ensemble with stream_infer / generate_stream; this one is unary")
        eng = engine_inputs(tensors, self.tokenizer, self.profile, self.pad_id, self.vocab_size)
        rid = f"unary-{request.request_id() or ''}-{next(_IDS)}"
        return [pb.Tensor(k, v) for k, v in eng.items()], rid

    def _answer(self, request: Any, sender: Any) -> Any:
        pb = self.pb
        inputs, rid = self._engine_request(request)
        wanted = [n for n in self.outputs if n != "text_output"] + list(_ENGINE_ONLY)
        eng_req = pb.InferenceRequest(model_name=self.engine, inputs=inputs, request_id=rid,
                                      requested_output_names=wanted)
        rows: dict[tuple[int, int], _Row] = {}
        error: Any = None
        self.watch.watch(rid, sender)
        try:
            responses = eng_req.exec(decoupled=True) if self.engine_decoupled else [eng_req.exec()]
            for resp in responses:  # always to the end: never abandon a BLS iterator
                if resp.has_error():
                    error = error or resp.error()
                    continue
                tensors = {t.name(): t.as_numpy() for t in resp.output_tensors()}
                for part in split_rows(tensors) if tensors else ():
                    rows.setdefault(row_key(part), _Row()).add(part)
        except BaseException:
            if not self.watch.done(rid):
                send_stop(self.engine, rid)
            raise
        stopped = self.watch.done(rid)
        if stopped:
            err = pb.TritonError("request cancelled", pb.TritonError.CANCELLED)
            return pb.InferenceResponse(output_tensors=[], error=err)
        if error is not None:
            msg = front_error_text(error.message(), self.profile)
            return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(msg, error.code()))
        out = unary_outputs(rows, self.outputs, self.profile)
        return pb.InferenceResponse(output_tensors=[pb.Tensor(n, a) for n, a in out.items()])

    def finalize(self) -> None:
        self.watch.close()
        for th in list(self._threads):
            th.join(timeout=5)
        if self.reaper is not None:
            self.reaper.stop()
