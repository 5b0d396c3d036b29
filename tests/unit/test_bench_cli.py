"""`inflight bench throughput|profile|reuse` on the tiny model (CPU): the JSON they write
carries the figures the performance page quotes. No timing is asserted, only structure and
counts. Each also ends with a one-line summary on stderr, checked against its own JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from inflight.tools.bench import report
from inflight.tools.cli import main


def _run(tmp_path: Path, *args: str) -> dict:
    assert main(["bench", *args, "--model", "tiny:llama", "--max-seq-len", "512",
                 "--out", str(tmp_path)]) == 0
    (path,) = [p for p in tmp_path.glob("*.json")]
    return json.loads(path.read_text())


def _summary(capsys: pytest.CaptureFixture[str]) -> tuple[dict, str]:
    """(the JSON printed on stdout, the last stderr line); the JSON is what was saved."""
    out, err = capsys.readouterr()
    return json.loads(out), err.splitlines()[-1]


def test_throughput_summary_with_baseline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = _run(tmp_path, "throughput", "--num-requests", "4", "--isl", "8", "--osl", "3",
               "--baseline", "hf", "--hf-requests", "2")
    printed, line = _summary(capsys)
    r, name = res["inflight"], str(tmp_path / res["benchmark"])
    assert printed == {k: v for k, v in res.items() if k not in ("benchmark", "device", "date", "git")}
    assert line == (f"throughput: {r['output_tok_s']:.1f} output tok/s, {r['req_s']:.2f} req/s over 4 "
                    f"requests; {res['ratio_vs_hf']:.2f}x the transformers baseline; JSON {name}.json; "
                    f"plots {name}.png, {name}-vs-hf.png")
    assert Path(f"{name}.png").is_file() and Path(f"{name}-vs-hf.png").is_file()


def test_latency_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = _run(tmp_path, "latency", "--isl", "8", "--osl", "3", "--iters", "1")
    r, (_, line) = res["inflight"], _summary(capsys)
    assert line == (f"latency: {r['decode_tok_s']:.1f} decode tok/s per user ({r['ms_per_token']:.2f} "
                    f"ms/token, TTFT {r['ttft_ms']:.1f} ms); JSON {tmp_path / res['benchmark']}.json")


def test_bench_throughput_counts_every_token(tmp_path: Path) -> None:
    res = _run(tmp_path, "throughput", "--num-requests", "6", "--isl", "16", "--osl", "5")
    r = res["inflight"]
    assert r["requests"] == 6 and r["output_tokens"] == 30 and r["input_tokens"] == 96
    assert r["output_tok_s"] > 0 and set(r["ttft_s"]) == {"p50", "p90", "p99", "mean"}


def test_bench_profile_reports_host_phases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = _run(tmp_path, "profile", "--batch", "3", "--isl", "8", "--steps", "4",
               "--overlap-scheduler", "on")
    r = res["inflight"]
    assert _summary(capsys)[1] == (f"profile: {r['wall_ms_per_step']:.2f} ms per decode step at batch 3 "
                                   f"({r['decode_tok_s']:.1f} tok/s); JSON {tmp_path / res['benchmark']}.json")
    assert r["batch"] == 3 and r["overlap"] is True and r["cuda_graphs"] is False
    assert r["wall_ms_per_step"] > 0 and r["decode_tok_s"] > 0
    assert {"schedule", "prepare", "execute (launch)", "complete (sync + postprocess)"} <= set(r["host_ms_per_step"])
    assert res["engine_config"]["overlap_scheduler"] == "on"


def test_bench_reuse_reports_reused_blocks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = _run(tmp_path, "reuse", "--prompt-len", "64", "--repeats", "2")
    r = res["inflight"]
    assert _summary(capsys)[1] == (f"reuse: TTFT {r['ttft_first_ms']:.1f} ms first, {r['ttft_repeat_ms']:.1f} "
                                   f"ms with the prefix cached ({r['speedup']:.2f}x); "
                                   f"JSON {tmp_path / res['benchmark']}.json")
    # 64 tokens = 4 blocks of 16: the repeat reuses all but the last (its logits are needed)
    assert r["blocks_per_prompt"] == 4 and r["reused_blocks"] == [3, 3]
    assert r["ttft_first_ms"] > 0 and r["ttft_repeat_ms"] > 0


def test_bench_profile_refuses_a_batch_one_step_cannot_hold(tmp_path: Path, capsys) -> None:
    assert main(["bench", "profile", "--model", "tiny:llama", "--batch", "300",
                 "--max-batch-size", "256", "--out", str(tmp_path)]) == 2
    assert "--batch must be in [1, 256]" in capsys.readouterr().err


def test_serve_summary_and_a_missing_plot() -> None:
    """`bench serve` needs a server; its line is checked on a result of the same shape."""
    res = {"requests": 10, "errors": 1, "output_tok_s": 123.456, "req_s": 2.5,
           "ttft_s": {"p50": 0.0421, "p90": 0.05, "p99": 0.06, "mean": 0.045}}
    assert report.summary("serve", res, "out/serve.json", [None]) == (
        "serve: 123.5 output tok/s, 2.50 req/s, TTFT p50 42 ms, 1 errors in 10 requests; "
        "JSON out/serve.json; no plot (matplotlib is missing: pip install matplotlib)")


def test_git_rev_marks_uncommitted_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A result written from a working tree with changes says so (device runs copy the tree
    onto an older HEAD): ``<hash>-dirty``; a clean tree gives the bare hash."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True,
                              text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "f.txt").write_text("a\n")
    git("add", "f.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    monkeypatch.chdir(tmp_path)
    head = git("rev-parse", "--short", "HEAD")
    assert report.git_rev() == head
    (tmp_path / "f.txt").write_text("b\n")
    assert report.git_rev() == f"{head}-dirty"
