"""benchmarks/decode_attention_sweep.py: the script itself, on the CPU (--dry-run: the kernels
in Triton's interpreter, tiny shapes); its GPU figures come from benchmarks/gpu_bench.sh."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(ROOT / "benchmarks" / "decode_attention_sweep.py")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_dry_run_times_every_variant_and_config(tmp_path: Path) -> None:
    out = tmp_path / "sweep.json"
    res = run("--dry-run", "--variants", "bf16,fp8-fp16,fp8-fp16-pairs", "--json", str(out))
    assert res.returncode == 0, res.stderr
    assert "WRONG" not in res.stdout and "FAILED" not in res.stdout, res.stdout
    rows = json.loads(out.read_text())["results"]
    assert {r["variant"] for r in rows} == {"bf16", "fp8-fp16", "fp8-fp16-pairs"}
    # two tiny shapes x two configs per variant, each timed once
    assert len(rows) == 12, rows
    assert all(math.isfinite(r["us"]) and r["us"] > 0 for r in rows)
    assert res.stdout.count("one config for all shapes") == 3


def test_bad_arguments_name_the_flag() -> None:
    res = run("--dry-run", "--variants", "int4")
    assert res.returncode == 2 and "--variants" in res.stderr and "fp8-fp16" in res.stderr
    res = run("--shapes", "8x")
    assert res.returncode == 2 and "--shapes" in res.stderr
