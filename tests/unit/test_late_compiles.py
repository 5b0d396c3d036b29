"""engine/late_compiles.py: Triton compiles after warm-up are counted and logged once per
kernel; the hook never stops a compile."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from inflight.engine import late_compiles
from inflight.engine.late_compiles import LateCompiles


def test_each_kernel_is_logged_once_and_every_compile_counted(caplog: pytest.LogCaptureFixture) -> None:
    watch = LateCompiles()
    caplog.set_level(logging.WARNING, logger="inflight.engine.late_compiles")
    calls = [("_fp8_gemv_kernel", "_fp8_gemv_kernel[num_warps=4](M: i32, K: i32)"),
             ("_fp8_gemv_kernel", "_fp8_gemv_kernel[num_warps=4](M: constexpr[1], K: i32)"),
             ("_prefill_kernel", "_prefill_kernel[num_warps=8](q: *bf16)")]
    for name, rep in calls:
        assert watch(key=(), repr=rep, fn=SimpleNamespace(name=name), compile={},
                     is_manual_warmup=False, already_compiled=False) is False  # compile as usual
    assert watch.kernels == {"_fp8_gemv_kernel": 2, "_prefill_kernel": 1}
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 2
    assert "compiled _fp8_gemv_kernel after warm-up" in warned[0] and "M: i32, K: i32" in warned[0]
    assert "compiled _prefill_kernel after warm-up" in warned[1]


def test_watch_installs_triton_hook_once_and_keeps_a_foreign_one(monkeypatch: pytest.MonkeyPatch) -> None:
    knobs = pytest.importorskip("triton").knobs
    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", None)
    got = late_compiles.watch()
    assert got is late_compiles._WATCH and knobs.runtime.jit_cache_hook is got
    assert late_compiles.watch() is got  # idempotent: warm-up may run again
    def theirs(**_: object) -> bool:
        return False

    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", theirs)
    assert late_compiles.watch() is None and knobs.runtime.jit_cache_hook is theirs
