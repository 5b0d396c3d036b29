"""The FP8 linear dispatch (model/quant/fp8.py): which implementation serves which M, each
branch against its reference (kernels in the interpreter on CPU, torch._scaled_mm runs on
CPU too), and the fallback when a kernel fails on the device."""

from __future__ import annotations

import logging
import os

import inflight.kernels as K
import pytest
import torch
from inflight.model.quant import fp8 as fp8mod
from inflight.model.quant.base import KernelGuard
from inflight.model.quant.fp8 import (
    fp8_linear_cuda,
    fp8_linear_path,
    fp8_linear_ref,
    per_channel_fp8,
)


def test_fp8_linear_path_by_rows_and_shape() -> None:
    def gemv(m: int, max_m: int, n: int = 0, k: int = 0) -> str:  # decode kernel "gemv"
        return fp8_linear_path(m, True, max_m, n, k, "gemv")

    assert [gemv(m, 16) for m in (1, 2, 4, 8, 16)] == ["gemv"] * 5
    assert [gemv(m, 16) for m in (0, 17, 128, 4096)] == ["scaled_mm"] * 4
    assert gemv(8, 4) == "scaled_mm" and gemv(4, 4) == "gemv"
    assert gemv(1, 0) == "scaled_mm"  # INFLIGHT_FP8_GEMV_MAX_M=0: off
    assert gemv(17, 64) == "scaled_mm"  # never past the kernels' 16 rows
    assert fp8_linear_path(1, False, 16) == "emulate" == fp8_linear_path(512, False, 16)
    # the defaults: INFLIGHT_FP8_GEMV_MAX_M, 16 when unset; INFLIGHT_FP8_DECODE_KERNEL,
    # tc-w8a8 (the tensor-core kernel on quantized activations) when unset
    assert fp8mod.DECODE_KERNEL == os.environ.get("INFLIGHT_FP8_DECODE_KERNEL", "tc-w8a8")
    default_rows = "4" if fp8mod.DECODE_KERNEL == "gemv" else "16"
    assert fp8mod.GEMV_MAX_M == int(os.environ.get("INFLIGHT_FP8_GEMV_MAX_M", default_rows))
    assert fp8_linear_path(min(fp8mod.GEMV_MAX_M, 16) + 1, True, n=32, k=32) == "scaled_mm"
    # Llama-3.1-8B at M=1 with the register GEMV: qkv, o, down; gate_up (117 MB of e4m3)
    # streams faster through cuBLASLt (the H200 measurements in model/quant/fp8.py)
    shapes = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336)}
    assert {name: gemv(1, 4, n, k) for name, (n, k) in shapes.items()} == {
        "qkv": "gemv", "o": "gemv", "gate_up": "scaled_mm", "down": "gemv"}
    # cuBLASLt needs N and K multiples of 16: other shapes take the GEMV up to its 16 rows,
    # the emulation beyond, never _scaled_mm
    assert gemv(8, 4, 33, 96) == "gemv" == gemv(16, 4, 32, 40)
    assert gemv(17, 4, 33, 96) == "emulate" == gemv(0, 4, 32, 40)
    assert gemv(17, 4, 32, 96) == "scaled_mm"
    # INFLIGHT_FP8_DECODE_KERNEL=tc-w8a16 / tc-w8a8: the tensor-core kernel for every decode
    # shape (no weight-size limit), never past its 16 rows
    for kernel, p in (("tc-w8a16", "tc16"), ("tc-w8a8", "tc8")):
        assert {name: fp8_linear_path(1, True, 4, n, k, kernel) for name, (n, k) in shapes.items()
                } == dict.fromkeys(shapes, p)
        assert fp8_linear_path(16, True, 64, 33, 96, kernel) == p
        assert fp8_linear_path(17, True, 64, 32, 96, kernel) == "scaled_mm"
        assert fp8_linear_path(5, True, 4, 32, 96, kernel) == "scaled_mm"
        assert fp8_linear_path(1, False, 4, 32, 96, kernel) == "emulate"


def _layer(n: int, k: int, device: torch.device, seed: int = 0):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(n, k, generator=g) / k**0.5).to(device=device, dtype=torch.bfloat16)
    q, s = per_channel_fp8(w)
    return w, q, s


def _want(path: str, x: torch.Tensor, q: torch.Tensor, s: torch.Tensor
          ) -> tuple[torch.Tensor, float]:
    """Each branch's reference and tolerance: the GEMV is W8A16 (unquantized activations
    times the dequantized weight), _scaled_mm W8A8 (the emulation quantizes x the same way)."""
    if path in ("gemv", "tc16"):
        return (x.float() @ (q.float() * s[:, None]).t()).to(x.dtype), 2e-2
    return fp8_linear_ref(x, q, s, None), 3e-2  # scaled_mm, or the emulation itself


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records which kernel each call reached (the real kernels still run)."""
    seen: list[str] = []
    gemv, quant, skinny = K.fp8_gemv, K.per_token_quant_fp8, K.fp8_skinny_mm
    monkeypatch.setattr(K, "fp8_gemv", lambda *a, **kw: (seen.append("gemv"), gemv(*a, **kw))[1])
    monkeypatch.setattr(K, "fp8_skinny_mm",
                        lambda *a, **kw: (seen.append("skinny"), skinny(*a, **kw))[1])
    monkeypatch.setattr(K, "per_token_quant_fp8",
                        lambda *a, **kw: (seen.append("quant"), quant(*a, **kw))[1])
    monkeypatch.setattr(KernelGuard, "failed", {})
    return seen


@pytest.mark.parametrize("m,n,k", [(1, 24, 40), (3, 17, 33), (16, 40, 64), (16, 32, 64),
                                   (20, 32, 96), (20, 33, 96)])
def test_dispatch_runs_the_chosen_branch(m: int, n: int, k: int, calls: list[str],
                                         device: torch.device) -> None:
    w, q, s = _layer(n, k, device, m)
    x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
    out = fp8_linear_cuda(x, q, s, None)  # the default path for a GPU input of m rows
    path = fp8_linear_path(m, True, n=n, k=k)
    assert calls == {"gemv": ["gemv"], "scaled_mm": ["quant"], "emulate": [], "tc16": ["skinny"],
                     "tc8": ["quant", "skinny"]}[path]
    assert out.shape == (m, n) and out.dtype == torch.bfloat16
    want, tol = _want(path, x, q, s)
    torch.testing.assert_close(out.float(), want.float(), atol=tol, rtol=tol)
    rel = (out.float() - x.float() @ w.float().t()).norm() / (x.float() @ w.float().t()).norm()
    assert rel < 0.06


@pytest.mark.parametrize("path", ["gemv", "scaled_mm", "tc16", "tc8"])
@pytest.mark.parametrize("m", [1, 5])
def test_every_branch_at_one_m(path: str, m: int, calls: list[str], device: torch.device) -> None:
    """An explicit path overrides the default (the benchmark times each at every M)."""
    _, q, s = _layer(32, 48, device, 7)  # N, K multiples of 16: cuBLASLt runs it on a GPU
    x = torch.randn(m, 48, device=device, dtype=torch.bfloat16)
    a = fp8_linear_cuda(x, q, s, None, path)
    assert calls == {"gemv": ["gemv"], "scaled_mm": ["quant"], "tc16": ["skinny"],
                     "tc8": ["quant", "skinny"]}[path]
    want, tol = _want(path, x, q, s)
    torch.testing.assert_close(a.float(), want.float(), atol=tol, rtol=tol)
    with pytest.raises(ValueError, match="unknown FP8 linear path"):
        fp8_linear_cuda(x, q, s, None, "cutlass")


def test_static_input_scale_through_scaled_mm(calls: list[str], device: torch.device) -> None:
    _, q, s = _layer(32, 64, device, 3)
    x = torch.randn(32, 64, device=device, dtype=torch.bfloat16)
    static = torch.tensor(x.float().abs().max().item() / 448, device=device)
    out = fp8_linear_cuda(x, q, s, static)
    assert calls == ["quant"]
    torch.testing.assert_close(out.float(), fp8_linear_ref(x, q, s, static).float(),
                               atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("kernel,path", [("fp8_gemv", "gemv"), ("fp8_skinny_mm", "tc16"),
                                         ("fp8_skinny_mm", "tc8")])
def test_kernel_failure_falls_back_once_with_an_error(kernel: str, path: str,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture,
                                                      device: torch.device) -> None:
    """A kernel failing on the device: one error naming it, then its fallback for good (the
    quantization kernel of tc8 is not blamed for the matmul's failure)."""
    monkeypatch.setattr(KernelGuard, "failed", {})
    tries: list[int] = []

    def broken(*a: object, **kw: object) -> torch.Tensor:
        tries.append(1)
        raise RuntimeError("PTX too new for this driver")

    monkeypatch.setattr(K, kernel, broken)
    _, q, s = _layer(16, 32, device)
    x = torch.randn(2, 32, device=device, dtype=torch.bfloat16)
    with caplog.at_level(logging.ERROR):
        out1 = fp8_linear_cuda(x, q, s, None, path)
        out2 = fp8_linear_cuda(x, q, s, None, path)
    assert len(tries) == 1  # not retried: the fallback from then on
    assert list(KernelGuard.failed) == [kernel] and "PTX too new" in caplog.text
    torch.testing.assert_close(out1, out2)
    torch.testing.assert_close(out1.float(), fp8_linear_ref(x, q, s, None).float(),
                               atol=3e-2, rtol=3e-2)


def test_a_launcher_argument_error_is_not_hidden(monkeypatch: pytest.MonkeyPatch,
                                                device: torch.device) -> None:
    monkeypatch.setattr(KernelGuard, "failed", {})
    _, q, s = _layer(16, 32, device)
    x = torch.randn(2, 32, device=device, dtype=torch.bfloat16)

    def bad_args(*a: object, **kw: object) -> torch.Tensor:
        raise ValueError("x must be 2-D")

    monkeypatch.setattr(K, "per_token_quant_fp8", bad_args)
    with pytest.raises(ValueError, match="2-D"):  # a caller bug is not hidden
        fp8_linear_cuda(x, q, s, None, "scaled_mm")
    assert "fp8_quant" not in KernelGuard.failed


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 8, 64])
def test_fp8_linear_cuda_graph_capture(m: int) -> None:
    """Both branches replay from a CUDA graph (no host sync in the forward path)."""
    _, q, s = _layer(6144, 4096, torch.device("cuda"))
    x = torch.randn(m, 4096, device="cuda", dtype=torch.bfloat16)
    fp8_linear_cuda(x, q, s, None)  # warm-up: compiles outside the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fp8_linear_cuda(x, q, s, None)
    x.copy_(torch.randn_like(x))
    g.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, fp8_linear_cuda(x, q, s, None), atol=0, rtol=0)
