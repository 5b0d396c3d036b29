"""What every engine-owning Triton model shares: config parsing, the engine loop, the
sender, metrics, and turning exceptions into Triton errors."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Collection
from typing import Any

import numpy as np

from inflight.engine.client import EngineClient
from inflight.engine.loop import EngineLoop
from inflight.errors import EngineDeadError, InvalidRequestError, QueueFullError
from inflight.frontends.triton.convert import ItemRequest, client_error
from inflight.frontends.triton.health import (
    EngineWatcher,
    ServerLink,
    check_fault_injection,
    fault_hook,
)
from inflight.frontends.triton.params import ServingConfig, parse_parameters, raw_parameters
from inflight.frontends.triton.serving import ServingCore
from inflight.frontends.triton.stub_reaper import STUB_GRACE_S, reaper_for_this_stub

log = logging.getLogger(__name__)


def pb_module() -> Any:
    import triton_python_backend_utils as pb  # only importable inside the python backend stub

    return pb


def input_names(model_config: dict[str, Any]) -> list[str]:
    return [i["name"] for i in model_config.get("input", [])]


def read_inputs(pb: Any, request: Any, names: Collection[str]) -> dict[str, np.ndarray]:
    """The request's inputs among ``names`` as numpy arrays, in one pass over
    ``request.inputs()``. (``pb.get_input_tensor_by_name`` walks the whole input list in
    Python per name: ~20 names x every input per postprocessing step, the largest Python
    cost of that model, issue 13.)"""
    wanted = names if isinstance(names, (set, frozenset)) else frozenset(names)
    out = {}
    for t in request.inputs():
        name = t.name()
        if name in wanted:
            out[name] = t.as_numpy()
    return out


def triton_error(pb: Any, e: Exception) -> Any:
    """Map inflight errors onto Triton error codes; the message names the tensor."""
    if isinstance(e, InvalidRequestError):
        return pb.TritonError(str(e), pb.TritonError.INVALID_ARG)
    if isinstance(e, QueueFullError):
        return pb.TritonError(str(e), pb.TritonError.UNAVAILABLE)
    if isinstance(e, EngineDeadError):
        return pb.TritonError(str(e), pb.TritonError.UNAVAILABLE)
    return pb.TritonError(f"{type(e).__name__}: {e}", pb.TritonError.INTERNAL)


def start_engine(cfg: Any, srv: ServingConfig, server_pid: int | None = None) -> EngineLoop | EngineClient:
    """``engine_process`` auto/on: the engine core in its own process, fed over a local
    channel (engine/client.py, issue 13); off: the engine thread inside this stub.
    ``server_pid``: tritonserver's (default: this stub's parent)."""
    step, delay = srv.fault_injection_step, srv.fault_injection_step_delay_ms
    if step or delay:
        check_fault_injection(step, delay)
    if srv.engine_process != "off":
        # the stub's parent is tritonserver: a stub may outlive a SIGKILLed server, the engine
        # process (and its device memory) must not
        return EngineClient(cfg, warmup=srv.warmup, fault_step=step, fault_delay_ms=delay,
                            watch=[os.getppid() if server_pid is None else server_pid],
                            parent_grace_s=STUB_GRACE_S)
    loop = EngineLoop(cfg, warmup=srv.warmup)
    if step or delay:
        loop._fault_hook = fault_hook(loop, step, delay)
    return loop


class EngineModel:
    """Base of the `engine` and `llm` models (decoupled python-backend models)."""

    def build_outputs(self, stream: Any, m: Any) -> list[Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def initialize(self, args: dict[str, Any]) -> None:
        from inflight.frontends.triton.metrics import Metrics

        self.pb = pb_module()
        self.model_config = json.loads(args["model_config"])
        self.model_name = args.get("model_name", "engine")
        self.inputs = input_names(self.model_config)
        repo = args.get("model_repository")
        engine_kwargs, self.serving = parse_parameters(raw_parameters(self.model_config), repo)
        from inflight.config import EngineConfig

        cfg = EngineConfig.from_kwargs(**engine_kwargs)
        # tritonserver: once it is gone, this model's threads must not call into Triton
        self.server = ServerLink()
        self.loop = start_engine(cfg, self.serving, self.server.pid)
        # the engine process ends this stub if it outlives tritonserver; without one, a reaper
        self.reaper = reaper_for_this_stub() if self.serving.engine_process == "off" else None
        self.watcher = EngineWatcher(self.pb, self.model_name, self.loop, self.server)
        self.tokenizer = self.loop.engine.tokenizer
        from inflight.frontends.triton.metric_families import metrics_options

        opts = metrics_options(raw_parameters(self.model_config), self.loop.engine.max_seq_len)
        self.metrics = Metrics(self.pb, self.model_name, args.get("model_version", "1"), self.loop,
                               opts, server=self.server)
        self.core = ServingCore(self.loop, self.pb, self.build_outputs,
                                self.serving.stream_interval, on_final=self.metrics.on_final,
                                observer=self.metrics, server=self.server)

    @property
    def serving_config(self) -> ServingConfig:
        return self.serving

    def submit_items(self, request: Any, items: list[ItemRequest]) -> None:
        call = self.core.new_call(request, items)
        client_id = request.request_id() or ""
        for item in items:
            try:
                self.core.submit(call, item, client_id)
            except InvalidRequestError as e:  # named as the client sent it (issue 12)
                self.core.fail_item(call, item, triton_error(self.pb, client_error(e, item.names)))
            except Exception as e:  # noqa: BLE001 - reported to this client only
                self.core.fail_item(call, item, triton_error(self.pb, e))

    def reject(self, request: Any, e: Exception) -> None:
        sender = request.get_response_sender()
        sender.send(self.pb.InferenceResponse(output_tensors=[], error=triton_error(self.pb, e)),
                    flags=self.pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self) -> None:
        self.watcher.close()
        self.metrics.close()
        self.loop.shutdown()
        self.core.shutdown()
        if self.reaper is not None:
            self.reaper.stop()
