"""benchmarks/sass_stats.py compiles the FP8 kernels for sm_90 without a GPU (Triton's
compiler and the cuobjdump its wheel ships) and counts what the variants differ in."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _has_cuobjdump() -> bool:
    try:
        import triton.backends.nvidia as nv
    except ImportError:
        return False
    return os.path.exists(os.path.join(os.path.dirname(nv.__file__), "bin", "cuobjdump"))


@pytest.mark.skipif(not _has_cuobjdump(), reason="Triton's NVIDIA backend tools are not installed")
def test_decode_attention_variants_compile_for_sm90(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sass_stats.py"),
                          "decode-attention", "--sass-dir", str(tmp_path)], capture_output=True,
                         text=True, timeout=300, env=env, check=True).stdout
    rows = {m.group(1): (int(m.group(2)), m.group(3))
            for m in re.finditer(r"^(decode .*?)\s+(\d+) instructions \| (.*)$", out, re.M)}
    assert len(rows) == 5, out
    for count, line in rows.values():
        assert count > 0, line
        assert "HMMA" in line, line  # the dots run on the tensor cores in every variant
    bf16 = rows["decode bf16 cache, bf16 dots"][1]
    assert "E4M3" not in bf16  # no e4m3 conversion for a bf16 cache
    pairs = rows["decode e4m3 cache, fp16-pairs dots"]
    assert "LDS.U8" not in pairs[1] and "LDSM" in pairs[1]  # 16-bit tiles: ldmatrix, no byte loads
    assert pairs[0] < rows["decode e4m3 cache, fp16 dots"][0]
    for name in ("decode e4m3 cache, fp16 dots", "decode e4m3 cache, fp16-vt dots",
                 "decode e4m3 cache, fp16-pairs dots"):
        assert "F2F.BF16.F16" not in rows[name][1]  # fp16 dots: no second conversion step
        assert "E4M3" in rows[name][1]  # the e4m3 conversion itself is there
    assert len(list(tmp_path.glob("*.sass"))) == 5
