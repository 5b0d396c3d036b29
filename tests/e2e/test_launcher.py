"""A real tritonserver started by ``inflight.tools.serve``: decoupled streaming over gRPC and HTTP,
cancellation, errors, and the ``inflight serve`` process forwarding SIGTERM."""

from __future__ import annotations

import functools
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

import inflight
import numpy as np
import pytest

if TYPE_CHECKING:
    from conftest import RunningServer

pytestmark = pytest.mark.e2e


def _inputs(text: str, count: int, delay_ms: int = 0) -> dict[str, np.ndarray]:
    return {
        "text_input": np.array([text.encode()], dtype=np.object_),
        "count": np.array([count], dtype=np.int32),
        "delay_ms": np.array([delay_ms], dtype=np.int32),
    }


def test_grpc_stream_in_order_then_exactly_one_final(stream_server: RunningServer) -> None:
    """Raw tritonclient: N responses in order, then one empty response flagged final."""
    import tritonclient.grpc as grpcclient
    from inflight.client.grpc_stream import to_infer_inputs

    received: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(stream_server.grpc_url)
    client.start_stream(
        callback=functools.partial(lambda q, result, error: q.put((result, error)), received)
    )
    try:
        client.async_stream_infer(
            "stream",
            to_infer_inputs(_inputs("hello", 5)),
            request_id="r1",
            enable_empty_final_response=True,
        )
        responses = []
        while True:
            result, error = received.get(timeout=30)
            assert error is None, error
            response = result.get_response()
            final = response.parameters["triton_final_response"].bool_param
            responses.append((result, final))
            if final:
                break
        with pytest.raises(queue.Empty):  # nothing after the final response
            received.get(timeout=0.3)
    finally:
        client.stop_stream()
        client.close()

    assert [final for _, final in responses] == [False] * 5 + [True]
    assert responses[-1][0].get_response().outputs == []
    for i, (result, _) in enumerate(responses[:-1]):
        assert result.get_response().id == "r1"
        assert result.as_numpy("text_output").tolist() == [f"hello {i}".encode()]
        assert result.as_numpy("index").tolist() == [i]
    # model.py imported inflight from the same place this interpreter does
    origin = responses[0][0].as_numpy("origin")[0].decode()
    assert Path(origin).resolve() == Path(inflight.__file__).resolve()


def test_stream_generate_helper(stream_server: RunningServer) -> None:
    from inflight.client.grpc_stream import collect, decode_text, stream_generate

    responses = list(
        stream_generate(
            stream_server.grpc_url, "stream", _inputs("hi", 3), request_id="abc", timeout=30
        )
    )
    assert [r.is_final for r in responses] == [False, False, False, True]
    assert [decode_text(r.outputs["text_output"]) for r in responses[:3]] == [
        ["hi 0"],
        ["hi 1"],
        ["hi 2"],
    ]
    assert responses[-1].outputs == {}
    texts = [
        decode_text(o["text_output"])[0]
        for o in collect(stream_server.grpc_url, "stream", _inputs("x", 2))
    ]
    assert texts == ["x 0", "x 1"]


def test_grpc_error_names_the_input(stream_server: RunningServer) -> None:
    from inflight.client.grpc_stream import StreamError, stream_generate

    with pytest.raises(StreamError, match="text_input: 'error' is refused on purpose"):
        list(stream_generate(stream_server.grpc_url, "stream", _inputs("error", 3), timeout=30))


def test_grpc_cancel_then_stream_again(stream_server: RunningServer) -> None:
    from inflight.client.grpc_stream import GrpcStream

    with GrpcStream(stream_server.grpc_url) as stream:
        start = time.monotonic()
        seen = 0
        for _outputs, is_final in stream.generate("stream", _inputs("slow", 1000, delay_ms=20)):
            assert not is_final
            seen += 1
            if seen == 3:
                break  # closing the iterator cancels the request on the server
        assert time.monotonic() - start < 10
        # the same object opens a fresh stream; nothing of the cancelled request leaks in
        again = list(stream.generate("stream", _inputs("after", 2), timeout=30))
    assert [r.is_final for r in again] == [False, False, True]
    assert again[0].outputs["text_output"].tolist() == [b"after 0"]


def test_http_generate_stream_sse(stream_server: RunningServer) -> None:
    from inflight.client.http import generate, generate_stream

    events = list(
        generate_stream(
            stream_server.http_url, "stream", {"text_input": "sse", "count": 4}, timeout=30
        )
    )
    with_text = [e for e in events if "text_output" in e]
    assert [e["text_output"] for e in with_text] == ["sse 0", "sse 1", "sse 2", "sse 3"]
    assert [e["index"] for e in with_text] == [0, 1, 2, 3]
    assert all(e["model_name"] == "stream" for e in events)
    single = generate(stream_server.http_url, "stream", {"text_input": "one", "count": 1})
    assert single["text_output"] == "one 0"


def test_http_errors_carry_the_server_text(stream_server: RunningServer) -> None:
    from inflight.client.http import TritonHTTPError, generate_stream

    with pytest.raises(TritonHTTPError) as info:
        list(generate_stream(stream_server.http_url, "stream", {"text_input": "error"}))
    assert info.value.message == "text_input: 'error' is refused on purpose"
    with pytest.raises(TritonHTTPError) as info:
        list(generate_stream(stream_server.http_url, "no_such_model", {"text_input": "x"}))
    assert info.value.status != 200 and "no_such_model" in info.value.message


def test_health_and_metrics_endpoints(stream_server: RunningServer) -> None:
    with urllib.request.urlopen(f"{stream_server.http_url}/v2/health/ready", timeout=5) as r:
        assert r.status == 200
    with urllib.request.urlopen(stream_server.metrics_url, timeout=5) as r:
        assert b"nv_inference_request_success" in r.read()


def test_serve_forwards_sigterm_and_exits_zero(
    tmp_path: Path, stream_model_writer: Callable[..., Path]
) -> None:
    """``python -m inflight.tools.serve`` (the ``inflight serve`` code path) under SIGTERM."""
    pytest.importorskip("tritonclient.grpc")
    from inflight.tools.serve import TritonServerNotFoundError, find_tritonserver

    try:
        find_tritonserver()
    except TritonServerNotFoundError as exc:
        pytest.skip(str(exc))
    stream_model_writer(tmp_path / "repo")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-u",
            "-m",
            "inflight.tools.serve",
            str(tmp_path / "repo"),
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--metrics-port",
            "0",
            "--",
            "--exit-timeout-secs=10",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = _LineReader(proc)
    try:
        ready = lines.wait_for("tritonserver is ready", timeout=60)
        assert ready, "not ready in 60 s:\n" + lines.text()
        pid_line = lines.wait_for("tritonserver pid", timeout=5)
        server_pid = int(pid_line.rsplit(" ", 1)[1])
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
        elapsed = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, lines.text()
    assert elapsed < 15
    assert not _alive(server_pid), "tritonserver outlived inflight serve"


class _LineReader:
    """Read a child's stdout on a thread so waits can time out."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stdout is not None
        threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True).start()

    def _pump(self, stdout: IO[str]) -> None:
        for line in stdout:
            self.lines.put(line)

    def wait_for(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(line)
            if needle in line:
                return line
        return ""

    def text(self) -> str:
        return "".join(self.seen[-40:])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still "exists"; it is gone for our purposes if it is no longer running
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--protocol", "grpc"], " a b c a\n"),
        (["--protocol", "http"], " a b c a\n"),
        (["--protocol", "http", "--no-stream"], " a b c a\n"),
        (["--no-stream", "--echo"], "a b c a b c a\n"),
        (["--batch", "2"], "--- sequence 0 ---\n a b c a\n--- sequence 1 ---\n a b c a\n"),
    ],
)
def test_inflight_client_cli(
    stream_server: RunningServer,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    expected: str,
) -> None:
    from inflight.client.cli import main

    url = stream_server.http_url if "http" in flags else stream_server.grpc_url
    code = main(["a b c", "--model", "llm", "--max-tokens", "4", "--url", url, *flags])
    out = capsys.readouterr().out
    assert code == 0
    assert out == expected


def test_inflight_client_cli_reports_server_errors(
    stream_server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from inflight.client.cli import main

    code = main(["hi", "--model", "no_such_model", "--url", stream_server.grpc_url])
    assert code == 1
    assert "no_such_model" in capsys.readouterr().err


def test_demo_streams_and_stops_cleanly(triton_server_factory, tmp_path: Path) -> None:
    """The README's first command after install: exit 0, the random-weights notice, the
    completion on stdout, the server stopped with nothing left behind and no log kept."""
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # where the demo's log would be kept
    proc = subprocess.run([sys.executable, "-m", "inflight.tools.cli", "demo", "--max-tokens", "8"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("The weather today is") and len(proc.stdout) > 21
    assert "random weights" in proc.stderr and "server stopped cleanly" in proc.stderr
    assert "left" not in proc.stderr and not list(tmp_path.glob("inflight-demo-*.log"))
