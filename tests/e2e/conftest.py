"""Fixtures that run a real tritonserver (``inflight.tools.serve``) on a model repository.

``triton_server_factory(repo)`` starts a server on free ports, waits until it is ready and
returns a :class:`RunningServer` with its URLs; every server it started is stopped when the
session ends (or earlier through ``RunningServer.stop()``). Without a tritonserver or
tritonclient the tests are skipped, except under CI (``CI`` set), where that fails them: a CI
run that silently skipped the end-to-end suite would prove nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from inflight.tools.serve import TritonServer, TritonServerNotFoundError, find_tritonserver

if os.environ.get("CI"):  # the modules' importorskip("tritonclient...") must not skip in CI
    import tritonclient.grpc  # noqa: F401

# A decoupled python-backend model: for a BYTES `text_input` it sends `count` responses
# ("<text> <i>", index i, and where `inflight` was imported from) from a thread, then an
# empty response with the FINAL flag. text_input "error" answers with an error instead.
STREAM_MODEL_PY = """
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils

import inflight  # the point: the stub runs the launcher's Python environment
{extra_imports}

ORIGIN = inflight.__file__


class TritonPythonModel:
    def initialize(self, args):
        self._threads = []

    def execute(self, requests):
        for request in requests:
            text = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy()
            count = _scalar(request, "count", 3)
            delay = _scalar(request, "delay_ms", 0) / 1000.0
            prompt = text.reshape(-1)[0].decode("utf-8")
            sender = request.get_response_sender()
            thread = threading.Thread(
                target=self._stream, args=(sender, prompt, count, delay), daemon=True
            )
            thread.start()
            self._threads.append(thread)
        self._threads = [t for t in self._threads if t.is_alive()]
        return None

    def _stream(self, sender, prompt, count, delay):
        if prompt == "error":
            error = pb_utils.TritonError("text_input: 'error' is refused on purpose")
            sender.send(pb_utils.InferenceResponse(error=error),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return
        for i in range(count):
            if delay:
                time.sleep(delay)
            if sender.is_cancelled():
                break
            outputs = [
                pb_utils.Tensor("text_output", np.array([f"{{prompt}} {{i}}".encode()], dtype=np.object_)),
                pb_utils.Tensor("index", np.array([i], dtype=np.int32)),
                pb_utils.Tensor("origin", np.array([ORIGIN.encode()], dtype=np.object_)),
            ]
            sender.send(pb_utils.InferenceResponse(output_tensors=outputs))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self):
        for thread in self._threads:
            thread.join(timeout=5)


def _scalar(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else int(tensor.as_numpy().reshape(-1)[0])
"""

STREAM_MODEL_CONFIG = """
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [
  { name: "text_input", data_type: TYPE_STRING, dims: [ 1 ] },
  { name: "count", data_type: TYPE_INT32, dims: [ 1 ], optional: true },
  { name: "delay_ms", data_type: TYPE_INT32, dims: [ 1 ], optional: true }
]
output [
  { name: "text_output", data_type: TYPE_STRING, dims: [ 1 ] },
  { name: "index", data_type: TYPE_INT32, dims: [ 1 ] },
  { name: "origin", data_type: TYPE_STRING, dims: [ 1 ] }
]
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""


def write_stream_model(repo: Path, name: str = "stream", *, import_torch: bool = False) -> Path:
    """Write the decoupled test model into ``repo/name``; returns the model directory."""
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(STREAM_MODEL_CONFIG)
    extra = "import torch  # and the heavy dependencies the engine needs" if import_torch else ""
    (model_dir / "1" / "model.py").write_text(STREAM_MODEL_PY.format(extra_imports=extra))
    return model_dir


# A stand-in for the `llm` model (vLLM backend contract): it "generates" by cycling
# through the prompt's words, max_tokens of them, one per streamed response.
ECHO_LLM_MODEL_PY = """
import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            self._answer(request)
        return None

    def _answer(self, request):
        sender = request.get_response_sender()
        prompt = _get(request, "text_input", b"").decode("utf-8")
        stream = bool(_get(request, "stream", False))
        params = json.loads(_get(request, "sampling_parameters", b"{}") or b"{}")
        words = prompt.split() or ["?"]
        pieces = [" " + words[i % len(words)] for i in range(int(params.get("max_tokens", 4)))]
        if not bool(_get(request, "exclude_input_in_output", False)):
            pieces.insert(0, prompt)
        chunks = pieces if stream else ["".join(pieces)]
        for chunk in chunks:
            out = pb_utils.Tensor("text_output", np.array([chunk.encode()], dtype=np.object_))
            sender.send(pb_utils.InferenceResponse(output_tensors=[out]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


def _get(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else tensor.as_numpy().reshape(-1)[0]
"""

ECHO_LLM_MODEL_CONFIG = """
backend: "python"
max_batch_size: 0
model_transaction_policy { decoupled: true }
input [
  { name: "text_input", data_type: TYPE_STRING, dims: [ 1 ] },
  { name: "stream", data_type: TYPE_BOOL, dims: [ 1 ], optional: true },
  { name: "sampling_parameters", data_type: TYPE_STRING, dims: [ 1 ], optional: true },
  { name: "exclude_input_in_output", data_type: TYPE_BOOL, dims: [ 1 ], optional: true }
]
output [ { name: "text_output", data_type: TYPE_STRING, dims: [ -1 ] } ]
instance_group [ { kind: KIND_CPU, count: 1 } ]
"""


def write_echo_llm_model(repo: Path, name: str = "llm") -> Path:
    model_dir = repo / name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(ECHO_LLM_MODEL_CONFIG)
    (model_dir / "1" / "model.py").write_text(ECHO_LLM_MODEL_PY)
    return model_dir


@dataclass
class RunningServer:
    """A started, ready server and where to reach it."""

    server: TritonServer
    repository: Path
    log_path: Path

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:PORT``"""
        assert self.server.endpoints is not None
        return self.server.endpoints.http_url

    @property
    def grpc_url(self) -> str:
        """``127.0.0.1:PORT`` (the form tritonclient.grpc takes)"""
        assert self.server.endpoints is not None
        return self.server.endpoints.grpc_url

    @property
    def metrics_url(self) -> str:
        assert self.server.endpoints is not None
        return self.server.endpoints.metrics_url

    def logs(self) -> str:
        return self.server.logs()

    def stop(self, timeout: float = 30.0) -> int | None:
        return self.server.stop(timeout)


class TritonServerFactory:
    """Callable: ``factory(repo, extra_args=..., ready_timeout=..., env=...) -> RunningServer``."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[RunningServer] = []

    def __call__(
        self,
        repository: Path,
        *,
        extra_args: Sequence[str] = ("--exit-timeout-secs=10",),
        ready_timeout: float = 60.0,
        log_verbose: int = 0,
        env: dict[str, str] | None = None,
    ) -> RunningServer:
        log_path = self.log_dir / f"tritonserver-{len(self.started)}.log"
        server = TritonServer(log_path=log_path)
        running = RunningServer(server, Path(repository), log_path)
        self.started.append(running)
        server.start(
            repository,
            http_port=0,
            grpc_port=0,
            metrics_port=0,
            log_verbose=log_verbose,
            extra_args=extra_args,
            env=env,
        )
        server.wait_ready(timeout=ready_timeout)  # raises with the log tail on failure
        return running

    def stop_all(self) -> None:
        for running in reversed(self.started):
            running.stop()


@pytest.fixture(scope="session")
def triton_server_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TritonServerFactory]:
    try:
        import tritonclient.grpc  # noqa: F401
        find_tritonserver()
    except (ImportError, TritonServerNotFoundError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but the end-to-end tests cannot run: {exc}")
        pytest.skip(str(exc))
    factory = TritonServerFactory(tmp_path_factory.mktemp("tritonserver-logs"))
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def stream_model_writer() -> Callable[..., Path]:
    """``write_stream_model(repo, name="stream", import_torch=False)`` for tests."""
    return write_stream_model


@pytest.fixture(scope="session")
def stream_model_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The decoupled ``stream`` model (its model.py imports torch too) and ``llm`` echo."""
    repo = tmp_path_factory.mktemp("stream_repo")
    write_stream_model(repo, import_torch=True)
    write_echo_llm_model(repo)
    return repo


@pytest.fixture(scope="session")
def stream_server(
    triton_server_factory: TritonServerFactory, stream_model_repo: Path
) -> Iterator[RunningServer]:
    running = triton_server_factory(stream_model_repo)
    yield running
    running.stop()
