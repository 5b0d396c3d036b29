"""`inflight bench throughput|profile|reuse` on the tiny model (CPU): the JSON they write
carries the figures the performance page quotes. No timing is asserted, only structure and
counts."""

from __future__ import annotations

import json
from pathlib import Path

from inflight.cli import main


def _run(tmp_path: Path, *args: str) -> dict:
    assert main(["bench", *args, "--model", "tiny:llama", "--max-seq-len", "512",
                 "--out", str(tmp_path)]) == 0
    (path,) = [p for p in tmp_path.glob("*.json")]
    return json.loads(path.read_text())


def test_bench_throughput_counts_every_token(tmp_path: Path) -> None:
    res = _run(tmp_path, "throughput", "--num-requests", "6", "--isl", "16", "--osl", "5")
    r = res["inflight"]
    assert r["requests"] == 6 and r["output_tokens"] == 30 and r["input_tokens"] == 96
    assert r["output_tok_s"] > 0 and set(r["ttft_s"]) == {"p50", "p90", "p99", "mean"}


def test_bench_profile_reports_host_phases(tmp_path: Path) -> None:
    res = _run(tmp_path, "profile", "--batch", "3", "--isl", "8", "--steps", "4",
               "--overlap-scheduler", "on")
    r = res["inflight"]
    assert r["batch"] == 3 and r["overlap"] is True and r["cuda_graphs"] is False
    assert r["wall_ms_per_step"] > 0 and r["decode_tok_s"] > 0
    assert {"schedule", "prepare", "execute (launch)", "complete (sync + postprocess)"} <= set(r["host_ms_per_step"])
    assert res["engine_config"]["overlap_scheduler"] == "on"


def test_bench_reuse_reports_reused_blocks(tmp_path: Path) -> None:
    res = _run(tmp_path, "reuse", "--prompt-len", "64", "--repeats", "2")
    r = res["inflight"]
    # 64 tokens = 4 blocks of 16: the repeat reuses all but the last (its logits are needed)
    assert r["blocks_per_prompt"] == 4 and r["reused_blocks"] == [3, 3]
    assert r["ttft_first_ms"] > 0 and r["ttft_repeat_ms"] > 0


def test_bench_profile_refuses_a_batch_one_step_cannot_hold(tmp_path: Path, capsys) -> None:
    assert main(["bench", "profile", "--model", "tiny:llama", "--batch", "300",
                 "--max-batch-size", "256", "--out", str(tmp_path)]) == 2
    assert "--batch must be in [1, 256]" in capsys.readouterr().err
