"""`inflight-client` against an address where nothing listens: the same one-line message and
exit status 1 every time, over gRPC and HTTP, never a traceback. (Over gRPC a refused
connection surfaces either as the stream callback's error or, when the stream died before
the request was queued, as tritonclient's InferenceServerException: both must read alike.)"""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from inflight.client.cli import main

DEFAULTS = {"grpc": "localhost:8001", "http": "localhost:8000"}


@pytest.fixture
def closed_port() -> int:
    """A port that was free a moment ago and has no listener now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _expected(port: int, protocol: str) -> str:
    return (f"inflight-client: error: cannot connect to 127.0.0.1:{port} (connection refused); "
            "is tritonserver running? start one with `inflight serve REPO`, or pass --url HOST:PORT "
            f"(default {DEFAULTS[protocol]} for --protocol {protocol})\n")


@pytest.mark.parametrize("protocol", ["grpc", "http"])
@pytest.mark.parametrize("extra", [[], ["--no-stream"], ["--batch", "2"]])
def test_refused_connection_is_one_line(protocol: str, extra: list[str], closed_port: int,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    for _ in range(5):  # the gRPC failure mode depends on a race: try it several times
        rc = main(["Hi", "--protocol", protocol, "--url", f"127.0.0.1:{closed_port}",
                   "--timeout", "10", *extra])
        out, err = capsys.readouterr()
        assert (rc, out, err) == (1, "", _expected(closed_port, protocol))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_refused_connection_from_the_command(protocol: str, closed_port: int) -> None:
    """The installed command: nothing else on stderr, even at interpreter exit."""
    proc = subprocess.run([sys.executable, "-m", "inflight.client.cli", "Hi", "--protocol", protocol,
                           "--url", f"127.0.0.1:{closed_port}", "--timeout", "10"],
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", _expected(closed_port, protocol))
