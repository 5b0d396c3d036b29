"""inflight.tools.serve without a real tritonserver: discovery, stub install, argv, CLI parsing."""

from __future__ import annotations

import argparse
import os
import stat
import sys
import time
from pathlib import Path

import pytest
from inflight.tools.serve import binary as binary_mod
from inflight.tools.serve.binary import (
    TritonServerBinary,
    TritonServerNotFoundError,
    find_tritonserver,
    install_stub,
    python_env,
)
from inflight.tools.serve.launcher import add_serve_parser, build_argparser, serve_main
from inflight.tools.serve.process import ServerEndpoints, TritonServer, TritonServerError

PY = f"{sys.version_info.major}.{sys.version_info.minor}"


def _executable(path: Path, body: str = "exit 0") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _fake_pytriton(site: Path) -> Path:
    """The nvidia-pytriton wheel layout, with shell scripts for binaries."""
    root = site / "pytriton"
    dist = root / "tritonserver"
    _executable(dist / "bin" / "tritonserver")
    (dist / "backends" / "python").mkdir(parents=True)
    (dist / "caches" / "local").mkdir(parents=True)
    _executable(dist / "python_backend_stubs" / PY / "triton_python_backend_stub", "echo stub")
    (site / "nvidia_pytriton.libs").mkdir()
    return root


@pytest.fixture
def no_discovery(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Nothing found unless a test provides it."""
    monkeypatch.delenv("INFLIGHT_TRITONSERVER", raising=False)
    monkeypatch.setattr(binary_mod.shutil, "which", lambda name: None)
    monkeypatch.setattr(binary_mod, "pytriton_root", lambda: None)
    return monkeypatch


def test_not_found_says_how_to_install(no_discovery: pytest.MonkeyPatch) -> None:
    with pytest.raises(TritonServerNotFoundError, match=r"pip install 'inflight\[serve\]'"):
        find_tritonserver()


def test_env_var_must_name_an_executable(no_discovery: pytest.MonkeyPatch, tmp_path: Path) -> None:
    no_discovery.setenv("INFLIGHT_TRITONSERVER", str(tmp_path / "missing"))
    with pytest.raises(TritonServerNotFoundError, match="INFLIGHT_TRITONSERVER="):
        find_tritonserver()


def test_env_var_wins_and_uses_sibling_backends(
    no_discovery: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    server = _executable(tmp_path / "triton" / "bin" / "tritonserver")
    (tmp_path / "triton" / "backends").mkdir()
    no_discovery.setenv("INFLIGHT_TRITONSERVER", str(server))
    no_discovery.setattr(binary_mod.shutil, "which", lambda name: "/elsewhere/tritonserver")
    found = find_tritonserver()
    assert (found.path, found.backend_dir, found.source) == (
        server,
        tmp_path / "triton" / "backends",
        "env",
    )
    assert "LD_LIBRARY_PATH" not in found.env  # a full install brings its own libraries


def test_path_binary(no_discovery: pytest.MonkeyPatch, tmp_path: Path) -> None:
    server = _executable(tmp_path / "bin" / "tritonserver")
    no_discovery.setattr(binary_mod.shutil, "which", lambda name: str(server))
    found = find_tritonserver()
    assert found.source == "path" and found.path == server


def test_pytriton_wheel_gets_stub_and_library_path(
    no_discovery: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = _fake_pytriton(tmp_path)
    no_discovery.setattr(binary_mod, "pytriton_root", lambda: root)
    found = find_tritonserver()
    dist = root / "tritonserver"
    stub = dist / "backends" / "python" / "triton_python_backend_stub"
    assert found.source == "pytriton"
    assert found.path == dist / "bin" / "tritonserver"
    assert found.backend_dir == dist / "backends" and found.cache_dir == dist / "caches"
    assert stub.read_text() == "#!/bin/sh\necho stub\n" and os.access(stub, os.X_OK)
    assert str(tmp_path / "nvidia_pytriton.libs") in found.env["LD_LIBRARY_PATH"].split(":")
    assert found.server_args() == [
        f"--backend-directory={dist / 'backends'}",
        f"--cache-directory={dist / 'caches'}",
    ]


def test_pytriton_read_only_falls_back_to_private_copy(
    no_discovery: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = _fake_pytriton(tmp_path / "site")
    no_discovery.setattr(binary_mod, "pytriton_root", lambda: root)
    no_discovery.setenv("INFLIGHT_CACHE_DIR", str(tmp_path / "cache"))
    original = binary_mod.install_stub

    def refuse_in_wheel(stub: Path, target: Path) -> Path:
        if root in target.parents:
            raise PermissionError(13, "read-only", str(target))
        return original(stub, target)

    no_discovery.setattr(binary_mod, "install_stub", refuse_in_wheel)
    found = find_tritonserver()
    copy = tmp_path / "cache" / f"tritonserver-py{PY.replace('.', '')}"
    assert found.path == copy / "bin" / "tritonserver" and found.backend_dir == copy / "backends"
    assert (copy / "backends" / "python" / "triton_python_backend_stub").is_file()
    assert not (copy / "python_backend_stubs").exists()


def test_missing_stub_lists_available_versions(
    no_discovery: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = _fake_pytriton(tmp_path)
    stubs = root / "tritonserver" / "python_backend_stubs"
    (stubs / PY).rename(stubs / "3.99")
    no_discovery.setattr(binary_mod, "pytriton_root", lambda: root)
    with pytest.raises(TritonServerNotFoundError, match=rf"stub for Python {PY} \(it has: 3.99\)"):
        find_tritonserver()


def test_install_stub_is_idempotent(tmp_path: Path) -> None:
    stub = _executable(tmp_path / "src" / "triton_python_backend_stub", "echo 1")
    (tmp_path / "dst").mkdir()
    dst = install_stub(stub, tmp_path / "dst")
    os.utime(dst, (1, 1))
    install_stub(stub, tmp_path / "dst")
    assert dst.stat().st_mtime == 1  # identical: not rewritten
    _executable(stub, "echo 2")
    install_stub(stub, tmp_path / "dst")
    assert dst.read_text().endswith("echo 2\n")
    assert sorted(p.name for p in (tmp_path / "dst").iterdir()) == [dst.name]  # no temp left


def test_python_env_points_at_this_interpreter() -> None:
    import inflight

    env = python_env()
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)
    entries = env["PYTHONPATH"].split(":")
    assert str(Path(inflight.__file__).resolve().parent.parent) == entries[0]


def _fake_server(tmp_path: Path, body: str) -> TritonServer:
    binary = TritonServerBinary(
        path=_executable(tmp_path / "tritonserver", body), backend_dir=tmp_path / "backends"
    )
    return TritonServer(binary, log_path=tmp_path / "server.log")


def test_command_has_secure_defaults_and_free_ports(tmp_path: Path) -> None:
    server = _fake_server(tmp_path, "exit 0")
    command, endpoints = server.build_command(tmp_path, http_port=0, grpc_port=0, metrics_port=0)
    assert command[0] == str(tmp_path / "tritonserver")
    assert "--model-control-mode=none" in command
    assert f"--model-repository={tmp_path.resolve()}" in command
    assert f"--backend-directory={tmp_path / 'backends'}" in command
    assert {
        "--http-address=127.0.0.1",
        "--grpc-address=127.0.0.1",
        "--metrics-address=127.0.0.1",
    } <= set(command)
    ports = {endpoints.http_port, endpoints.grpc_port, endpoints.metrics_port}
    assert len(ports) == 3 and 0 not in ports
    assert any(
        a.startswith("--backend-config=python,shm-region-prefix-name=inflight_") for a in command
    )


@pytest.mark.parametrize("gpu", [False, True])
def test_cpu_only_flags_without_a_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      gpu: bool) -> None:
    from inflight.tools.serve import process

    monkeypatch.setattr(process, "gpu_present", lambda: gpu)
    command, _ = _fake_server(tmp_path, "exit 0").build_command(tmp_path)
    cpu_flags = set(process.CPU_ONLY_ARGS) & set(command)
    assert cpu_flags == (set() if gpu else set(process.CPU_ONLY_ARGS))
    # a flag the user passes wins over the CPU default
    command, _ = _fake_server(tmp_path, "exit 0").build_command(
        tmp_path, extra_args=["--allow-gpu-metrics=true"])
    assert "--allow-gpu-metrics=false" not in command


def test_stop_reaps_group_survivors_and_shm(tmp_path: Path) -> None:
    """A server that exits leaving a child behind (as tritonserver orphans a stub it could
    not unload) and a shm segment: stop() kills the child and removes the segment."""
    server = _fake_server(tmp_path, "sleep 300 &\nexec sleep 300")
    server.start(tmp_path, http_port=0, grpc_port=0, metrics_port=0)
    assert server.shm_prefix is not None
    segment = Path("/dev/shm") / f"{server.shm_prefix}test"
    segment.write_bytes(b"x")
    deadline = time.monotonic() + 10
    while len(process_group(server.pid)) < 2:  # the child started
        assert time.monotonic() < deadline
        time.sleep(0.01)
    child = (process_group(server.pid) - {server.pid}).pop()
    server.stop(timeout=10)
    assert server.reaped == [child] and child not in process_group(server.pid)  # dead
    assert server.removed_shm == [segment.name] and not segment.exists()


def process_group(pgid: int | None) -> set[int]:
    from inflight.tools.serve.process import _group_members

    assert pgid is not None
    return _group_members(pgid)


def test_extra_args_override_defaults(tmp_path: Path) -> None:
    server = _fake_server(tmp_path, "exit 0")
    extra = [
        "--model-control-mode=explicit",
        "--http-port",
        "9123",
        "--backend-config=python,shm-region-prefix-name=mine",
    ]
    command, endpoints = server.build_command(tmp_path, http_port=0, extra_args=extra)
    assert command[-4:] == extra
    assert "--model-control-mode=none" not in command
    assert not any(a.startswith("--http-port=") for a in command)
    assert sum("shm-region-prefix-name" in a for a in command) == 1
    assert endpoints.http_port == 9123


def test_endpoints_urls() -> None:
    ep = ServerEndpoints("127.0.0.1", 1, 2, 3)
    assert (ep.http_url, ep.grpc_url, ep.metrics_url) == (
        "http://127.0.0.1:1",
        "127.0.0.1:2",
        "http://127.0.0.1:3/metrics",
    )
    assert ServerEndpoints("::1", 1, 2, 3).grpc_url == "[::1]:2"


def test_bind_all_is_reached_through_loopback(tmp_path: Path) -> None:
    _, endpoints = _fake_server(tmp_path, "exit 0").build_command(tmp_path, host="0.0.0.0")
    assert endpoints.host == "127.0.0.1"


def test_missing_repository(tmp_path: Path) -> None:
    with pytest.raises(TritonServerError, match="is not a directory"):
        _fake_server(tmp_path, "exit 0").start(tmp_path / "nope")


def test_early_exit_reports_code_and_log(tmp_path: Path) -> None:
    server = _fake_server(tmp_path, "echo 'E0000 bad model config'; exit 3")
    server.start(tmp_path, http_port=0, grpc_port=0, metrics_port=0)
    with pytest.raises(TritonServerError, match=r"(?s)exited with code 3.*bad model config"):
        server.wait_ready(timeout=10)
    assert server.stop() == 3


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    server = _fake_server(tmp_path, "trap '' TERM\necho started\nwhile :; do sleep 0.1; done")
    server.start(tmp_path, http_port=0, grpc_port=0, metrics_port=0)
    with pytest.raises(TritonServerError, match="not ready"):
        server.wait_ready(timeout=0.5)
    assert server.stop(timeout=0.5) == -9


def test_context_manager_stops(tmp_path: Path) -> None:
    with _fake_server(tmp_path, "exec sleep 30") as server:
        server.start(tmp_path, http_port=0, grpc_port=0, metrics_port=0)
        assert server.poll() is None
    assert server.poll() == -15


def test_standalone_parser_passes_unknown_flags_through() -> None:
    args = build_argparser().parse_args(
        ["repo", "--http-port", "0", "--log-info", "false", "--", "--exit-timeout-secs", "5"]
    )
    assert args.repository == Path("repo") and args.http_port == 0
    assert args.tritonserver_args == ["--log-info", "false", "--exit-timeout-secs", "5"]
    assert args.func is serve_main and args.model_control_mode == "none"


def test_subparser_passes_unknown_flags_through_parent_parse_args() -> None:
    parent = argparse.ArgumentParser(prog="inflight")
    sub = parent.add_subparsers(dest="command", required=True)
    assert add_serve_parser(sub).prog == "inflight serve"
    args = parent.parse_args(
        [
            "serve",
            "repo",
            "--log-format=ISO8601",
            "--grpc-port",
            "9",
            "--",
            "--strict-readiness",
            "false",
        ]
    )
    assert args.command == "serve" and args.grpc_port == 9
    assert args.tritonserver_args == ["--log-format=ISO8601", "--strict-readiness", "false"]


def test_serve_main_returns_server_exit_code(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = TritonServerBinary(
        path=_executable(tmp_path / "tritonserver", "exit 7"), backend_dir=None
    )
    monkeypatch.setattr("inflight.tools.serve.launcher.find_tritonserver", lambda: fake)
    args = build_argparser().parse_args(
        [str(tmp_path), "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0"]
    )
    assert serve_main(args) == 7
    assert "exited with code 7" in capsys.readouterr().err


def test_serve_dry_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = TritonServerBinary(
        path=Path("/opt/tritonserver/bin/tritonserver"),
        backend_dir=Path("/opt/tritonserver/backends"),
        env={"PATH": "/venv/bin"},
    )
    monkeypatch.setattr("inflight.tools.serve.launcher.find_tritonserver", lambda: fake)
    args = build_argparser().parse_args([str(tmp_path), "--dry-run", "--", "--log-verbose=2"])
    assert serve_main(args) == 0
    out = capsys.readouterr().out
    assert "export PATH=/venv/bin" in out
    assert "--backend-directory=/opt/tritonserver/backends" in out
    assert out.rstrip().endswith("--log-verbose=2")


def test_serve_main_without_tritonserver(
    no_discovery: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert serve_main(build_argparser().parse_args([str(tmp_path)])) == 2
    assert "tritonserver not found" in capsys.readouterr().err


def test_stub_built_for_numpy_1_is_refused_under_numpy_2(tmp_path) -> None:
    from inflight.tools.serve.binary import StubNumpyError, check_stub_numpy

    old = tmp_path / "old_stub"
    old.write_bytes(b"\x7fELF...numpy.core.multiarray\x00...")
    new = tmp_path / "new_stub"
    new.write_bytes(b"\x7fELF...numpy.core.multiarray\x00numpy._core.multiarray\x00")
    with pytest.raises(StubNumpyError, match=r"pybind11 < 2\.12.*numpy 2\.1\.3.*tritonserver >= 2\.52"):
        check_stub_numpy(old, "2.1.3")
    check_stub_numpy(old, "1.26.4")  # numpy 1: the old stub is fine
    check_stub_numpy(new, "2.1.3")  # a pybind11 >= 2.12 stub knows numpy._core
    check_stub_numpy(tmp_path / "missing", "2.1.3")  # no stub there: nothing to say


def test_the_bundled_pytriton_stub_is_the_old_kind() -> None:
    """The finding the check rests on, on the stub the CI machine runs (nvidia-pytriton 0.7)."""
    from inflight.tools.serve.binary import (
        StubNumpyError,
        check_stub_numpy,
        pytriton_root,
        stub_source,
    )

    root = pytriton_root()
    if root is None:
        pytest.skip("nvidia-pytriton is not installed")
    if b"numpy._core" in stub_source(root).read_bytes():
        pytest.skip("this nvidia-pytriton ships a pybind11 >= 2.12 stub")
    with pytest.raises(StubNumpyError):
        check_stub_numpy(stub_source(root), "2.0.0")


def test_a_left_over_stub_is_named_by_its_model() -> None:
    """What the launcher prints for a process tritonserver left behind: the stub's model (from
    the model.py path in its arguments) and where it sleeps, so a report says which model hung."""
    import subprocess

    from inflight.testing.procs import proc, wait_for
    from inflight.tools.serve.process import _describe

    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                          "/repo/postprocessing/1/model.py", "shm-key"])
    try:
        # /proc shows the new arguments once the exec is through (empty for a moment before)
        wait_for(lambda: "model.py" in getattr(proc(p.pid), "cmdline", ""), "the child's arguments")
        what = _describe(p.pid)  # "running" while it starts, "sleeping in ..." after
        assert what.startswith("stub of model 'postprocessing', "), what
        assert "sleeping in " in what or what.endswith("running"), what
    finally:
        p.kill()
        p.wait()
    assert _describe(p.pid) == "exited meanwhile"
