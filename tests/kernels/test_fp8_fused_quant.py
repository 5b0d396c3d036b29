"""The FP8 activation quantization fused into RMSNorm and SiLU-and-mul (kernels/rms_norm.py
``rms_norm_fp8`` / ``add_rms_norm_fp8``, kernels/silu_and_mul.py ``silu_and_mul_fp8``) and
the handover to the W8A8 linears (model/quant/fp8_activation.py, ``input_quantizer``):
the fused kernels give the bytes of the unfused pair (16-bit kernel, then
``per_token_quant_fp8``), only W8A8 layers ask for them, a failing fused kernel falls back to
the pair, and a whole FP8 model gives the same logits and greedy tokens with and without the
fusion (kernels in the interpreter on CPU)."""

from __future__ import annotations

import logging
from typing import Any

import inflight.kernels as K
import pytest
import torch
from inflight.config import EngineConfig
from inflight.engine.core import LLMEngine
from inflight.model.layers import Linear, RMSNorm, silu_and_mul
from inflight.model.quant import fp8 as fp8mod
from inflight.model.quant.base import KernelGuard
from inflight.model.quant.fp8 import Fp8LinearMethod, takes_fp8_input
from inflight.model.quant.fp8_activation import Fp8Activation, Fp8Quantizer
from inflight.model.quant.int4 import Int4LinearMethod
from inflight.sampling_params import SamplingParams
from inflight.testing.tiny import tiny_model_dir
from kernel_testing import fp8_decode_kernel, gpu_dispatch_on_cpu, run_to_finals

DTYPES = [torch.bfloat16, torch.float16, torch.float32]


def _assert_same(got: tuple[torch.Tensor, torch.Tensor], want: tuple[torch.Tensor, torch.Tensor]
                 ) -> None:
    (q, s), (qr, sr) = got, want
    assert q.dtype == torch.float8_e4m3fn and q.shape == qr.shape
    assert s.dtype == torch.float32 and s.shape == sr.shape == (q.shape[0], 1)
    assert torch.equal(s, sr), f"scales differ: {s.flatten().tolist()} vs {sr.flatten().tolist()}"
    bad = (q.view(torch.uint8) != qr.view(torch.uint8)).nonzero()
    assert bad.numel() == 0, (f"{bad.shape[0]} e4m3 codes differ, first at {bad[0].tolist()}: "
                              f"{q[tuple(bad[0])].float()} vs {qr[tuple(bad[0])].float()}")


def _rows(t: int, h: int, dtype: torch.dtype, device: torch.device, seed: int) -> torch.Tensor:
    """[t, h] over many magnitudes per row, with row 1 (if any) all zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, h, generator=g) * torch.logspace(-2, 2, t)[:, None]
    if t > 1:
        x[1] = 0
    return x.to(device=device, dtype=dtype)


def _scales(device: torch.device) -> list[torch.Tensor | None]:
    # dynamic, and a small static scale (many values saturate at +-448)
    return [None, torch.tensor(0.01, device=device)]


# --------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t,h", [(1, 1), (3, 100), (5, 257), (4, 64)])
def test_rms_norm_fp8_equals_norm_then_quant(dtype: torch.dtype, t: int, h: int,
                                             device: torch.device) -> None:
    x = _rows(t, h, dtype, device, t * 1000 + h)
    # weights over five decades: small outputs land on e4m3 subnormals after the row's scale
    g = torch.Generator().manual_seed(h)
    w = (torch.randn(h, generator=g) * torch.logspace(-4, 1, h)).to(device=device, dtype=dtype)
    for static in _scales(device):
        got = K.rms_norm_fp8(x, w, 1e-6, static)
        _assert_same(got, K.per_token_quant_fp8(K.rms_norm(x, w, 1e-6), static))
        if t > 1 and static is None:  # the zero row: the 1e-12 floor, all codes +-0
            assert got[1][1].item() == pytest.approx(1e-12) and not got[0][1].float().any()
        if static is not None:
            assert (got[1] == 0.01).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t,h", [(1, 24), (5, 200), (3, 257)])
def test_add_rms_norm_fp8_equals_add_norm_then_quant(dtype: torch.dtype, t: int, h: int,
                                                     device: torch.device) -> None:
    x = _rows(t, h, dtype, device, t + h)
    res = _rows(t, h, dtype, device, t + h + 1)
    if t > 1:
        x[2] = -res[2]  # the sum is a zero row
    w = (torch.rand(h, device=device) + 0.5).to(dtype)
    out, new_res = K.add_rms_norm(x, res, w, 1e-5)
    for static in _scales(device):
        q, s, r = K.add_rms_norm_fp8(x, res, w, 1e-5, static)
        _assert_same((q, s), K.per_token_quant_fp8(out, static))
        assert torch.equal(r, new_res)


def test_norm_fp8_strided_rows(device: torch.device) -> None:
    base = torch.randn(6, 160, device=device, dtype=torch.bfloat16)
    x, res = base[:, :130], base.flip(0)[:, 10:140]  # row stride 160
    w = torch.randn(130, device=device, dtype=torch.bfloat16)
    _assert_same(K.rms_norm_fp8(x, w, 1e-6), K.per_token_quant_fp8(K.rms_norm(x, w, 1e-6)))
    q, s, r = K.add_rms_norm_fp8(x, res, w, 1e-6)
    out, new_res = K.add_rms_norm(x, res, w, 1e-6)
    _assert_same((q, s), K.per_token_quant_fp8(out))
    assert torch.equal(r, new_res)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t,inter", [(1, 1), (3, 40), (2, 64), (5, 100), (3, 257)])
def test_silu_and_mul_fp8_equals_silu_then_quant(dtype: torch.dtype, t: int, inter: int,
                                                 device: torch.device) -> None:
    """Rows of up to 64 in one pass, longer ones in two (the interpreter's step is 64)."""
    x = _rows(t, 2 * inter, dtype, device, 7 * t + inter) / 4  # products within fp16's range
    for static in _scales(device):
        got = K.silu_and_mul_fp8(x, static)
        _assert_same(got, K.per_token_quant_fp8(K.silu_and_mul(x), static))
        if t > 1 and static is None:
            assert got[1][1].item() == pytest.approx(1e-12)
    strided = torch.randn(t, 2 * inter + 6, device=device).to(dtype)[:, 3 : 3 + 2 * inter]
    _assert_same(K.silu_and_mul_fp8(strided), K.per_token_quant_fp8(K.silu_and_mul(strided)))


def test_fused_launchers_reject_bad_inputs(device: torch.device) -> None:
    x = torch.randn(2, 16, device=device)
    w = torch.ones(16, device=device)
    two = torch.ones(2, device=device)
    with pytest.raises(ValueError, match="static_scale must be one fp32 value"):
        K.rms_norm_fp8(x, w, 1e-6, two)
    with pytest.raises(ValueError, match="static_scale must be one fp32 value"):
        K.add_rms_norm_fp8(x, x, w, 1e-6, two.half()[:1])
    with pytest.raises(ValueError, match="static_scale must be one fp32 value"):
        K.silu_and_mul_fp8(x, two)
    with pytest.raises(ValueError, match="must be even"):
        K.silu_and_mul_fp8(torch.randn(2, 7, device=device))
    q, s = K.silu_and_mul_fp8(torch.randn(0, 8, device=device))  # no rows: nothing launched
    assert q.shape == (0, 4) and s.shape == (0, 1)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 300])
@pytest.mark.parametrize("dtype", [torch.bfloat16, pytest.param(torch.float16, marks=pytest.mark.xfail(
    reason="the H200 run of 2026-12-01 found one fp16 case (300 rows) not byte-equal, cause not "
    "found; fp16 models do not use the fusion (fp8.FUSED_DTYPES)", strict=False))])
def test_fused_quant_gpu_llama_shapes(m: int, dtype: torch.dtype) -> None:
    """Llama-3.1-8B's hidden 4096 and intermediate 14336 (one pass), 70B's 28672 (two)."""
    x = torch.randn(m, 4096, device="cuda", dtype=dtype) * 3
    res = torch.randn_like(x)
    w = torch.rand(4096, device="cuda", dtype=dtype) + 0.5
    static = torch.tensor(0.02, device="cuda")
    out, _ = K.add_rms_norm(x, res, w, 1e-5)
    for sc in (None, static):
        _assert_same(K.rms_norm_fp8(x, w, 1e-5, sc), K.per_token_quant_fp8(K.rms_norm(x, w, 1e-5), sc))
        _assert_same(K.add_rms_norm_fp8(x, res, w, 1e-5, sc)[:2], K.per_token_quant_fp8(out, sc))
        for inter in (14336, 28672):
            g = torch.randn(m, 2 * inter, device="cuda", dtype=dtype) * 4
            _assert_same(K.silu_and_mul_fp8(g, sc), K.per_token_quant_fp8(K.silu_and_mul(g), sc))


# --------------------------------------------------------------------------- the decision


def _fp8_linear(n: int, k: int, device: torch.device, static: float | None = None) -> Linear:
    layer = Linear(k, n, bias=False).to(device)
    layer.quant = Fp8LinearMethod("fp8", from_checkpoint=False, static_input=False)
    layer.quant.from_float(layer, layer.weight.detach().to(torch.bfloat16))
    if static is not None:
        layer.input_scale = torch.tensor(static, device=device)
    layer.weight = None  # type: ignore[assignment]
    return layer


@pytest.fixture
def kernels_on_cpu(monkeypatch: pytest.MonkeyPatch, device: torch.device) -> None:
    """On CPU: the model's GPU dispatch with the kernels in the interpreter (norms, SiLU,
    rotary and the FP8 linears; cuBLAS's GEMV timing is CUDA-only: F.linear)."""
    monkeypatch.setattr(KernelGuard, "failed", {})
    if device.type != "cuda":
        gpu_dispatch_on_cpu(monkeypatch)


@pytest.mark.parametrize("kernel,max_m", [("tc-w8a8", 16), ("tc-w8a16", 16), ("gemv", 4)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_only_w8a8_layers_ask_and_take_the_same_path(kernel: str, max_m: int, dtype: torch.dtype,
                                                     kernels_on_cpu: None,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     device: torch.device) -> None:
    """A layer asks for a quantized input exactly when its dispatch for those rows multiplies
    e4m3 activations; handed the fused producer's output it gives the bytes the unfused pair
    gives (the same path, the same quantization)."""
    fp8_decode_kernel(monkeypatch, kernel, max_m)
    quantized = {"tc-w8a8": {"tc8", "scaled_mm"}, "tc-w8a16": {"scaled_mm"}, "gemv": {"scaled_mm"}}
    asked = []
    for n, m, static in ((32, 1, None), (32, 3, 0.05), (48, 5, None), (32, 17, None), (48, 20, 0.05),
                         (33, 20, None)):  # N = 33: cuBLASLt refuses it: the emulation, W8A16-free
        layer = _fp8_linear(n, 64, device, static)
        h = torch.randn(m, 128, device=device).to(dtype)  # gate_up's output feeding this layer
        quant = layer.input_quantizer(h)
        path = fp8mod.fp8_linear_path(m, True, n=n, k=64)
        want_fp8 = (path in quantized[kernel] and takes_fp8_input(path, dtype)
                    and dtype in fp8mod.FUSED_DTYPES)
        assert (quant is not None) == want_fp8, (kernel, n, m, path, dtype)
        if quant is None:
            continue
        asked.append(path)
        assert quant.static_scale is layer.input_scale
        a = silu_and_mul(h, quant)
        assert isinstance(a, Fp8Activation) and a.dtype == dtype and a.shape == (m, 64)
        assert torch.equal(layer(a), layer(silu_and_mul(h)))  # fused == quantized in the layer
    if dtype != torch.bfloat16:  # fp16 and fp32 activations: never fused (FUSED_DTYPES)
        assert asked == []
    else:
        assert set(asked) == ({"tc8", "scaled_mm"} if kernel == "tc-w8a8" else {"scaled_mm"})


def test_no_request_off_the_gpu_path_with_the_switch_off_or_not_fp8(
        monkeypatch: pytest.MonkeyPatch, device: torch.device) -> None:
    x = torch.randn(20, 64, device=device, dtype=torch.bfloat16)
    layer = _fp8_linear(32, 64, device)
    monkeypatch.setattr(fp8mod, "gpu_dispatch", lambda dev: True)
    assert isinstance(layer.input_quantizer(x), Fp8Quantizer)
    monkeypatch.setattr(fp8mod, "FUSED_QUANT", False)  # INFLIGHT_FP8_FUSED_QUANT=0
    assert layer.input_quantizer(x) is None
    monkeypatch.setattr(fp8mod, "FUSED_QUANT", True)
    monkeypatch.setattr(fp8mod, "gpu_dispatch", lambda dev: False)  # CPU: the emulation
    assert layer.input_quantizer(x) is None
    assert Linear(64, 32).input_quantizer(x) is None  # a float layer
    int4 = Linear(64, 32)
    int4.quant = Int4LinearMethod("awq", "awq", 32, True, from_checkpoint=False)  # weight-only
    assert int4.input_quantizer(x) is None
    layer.quant = Fp8LinearMethod("fp8", from_checkpoint=False, static_input=False)
    monkeypatch.setattr(fp8mod, "gpu_dispatch", lambda dev: True)
    with pytest.raises(ValueError, match="takes 16-bit activations"):  # a caller's bug
        fp8mod.fp8_linear_cuda(Fp8Quantizer(None).quantize(x), layer.qweight, layer.weight_scale,
                               None, "gemv")


def test_fp8_fused_quant_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    from inflight import env
    from inflight.errors import ConfigError

    monkeypatch.delenv("INFLIGHT_FP8_FUSED_QUANT", raising=False)
    assert env.fp8_fused_quant() is True
    for value, want in (("0", False), ("false", False), ("1", True), ("yes", True)):
        monkeypatch.setenv("INFLIGHT_FP8_FUSED_QUANT", value)
        assert env.fp8_fused_quant() is want
    monkeypatch.setenv("INFLIGHT_FP8_FUSED_QUANT", "maybe")
    with pytest.raises(ConfigError, match="INFLIGHT_FP8_FUSED_QUANT"):
        env.fp8_fused_quant()


# --------------------------------------------------------------------------- fallbacks


@pytest.mark.parametrize("kernel", ["rms_norm_fp8", "silu_and_mul_fp8"])
def test_fused_kernel_failure_falls_back_to_the_pair(kernel: str, kernels_on_cpu: None,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture,
                                                     device: torch.device) -> None:
    """A fused kernel failing on the device: one error naming it, then the unfused pair (16-bit
    kernel + quantization kernel) for good, with the same bytes."""
    tries: list[int] = []

    def broken(*a: object, **kw: object) -> Any:
        tries.append(1)
        raise RuntimeError("PTX too new for this driver")

    x = _rows(5, 96, torch.bfloat16, device, 11) / 4
    res = _rows(5, 96, torch.bfloat16, device, 12)
    norm = RMSNorm(96, 1e-5).to(device=device, dtype=torch.bfloat16)
    quant = Fp8Quantizer(None)

    def run() -> list[torch.Tensor]:
        if kernel == "silu_and_mul_fp8":
            a = silu_and_mul(x, quant)
            assert isinstance(a, Fp8Activation)
            return [a.q.view(torch.uint8), a.scale]
        a1 = norm(x, quant=quant)
        a2, r = norm(x, res, quant)
        return [a1.q.view(torch.uint8), a1.scale, a2.q.view(torch.uint8), a2.scale, r]

    fused = run()
    for name in (["add_rms_norm_fp8", "rms_norm_fp8"] if kernel == "rms_norm_fp8" else [kernel]):
        monkeypatch.setattr(K, name, broken)
    with caplog.at_level(logging.ERROR):
        first, second = run(), run()
    assert len(tries) == 1  # not retried: the pair from then on
    assert list(KernelGuard.failed) == [kernel] and "PTX too new" in caplog.text
    for a, b, c in zip(fused, first, second, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)


# --------------------------------------------------------------------------- the model


def _count(monkeypatch: pytest.MonkeyPatch, names: list[str]) -> dict[str, int]:
    calls = dict.fromkeys(names, 0)
    for name in names:
        fn = getattr(K, name)

        def counted(*a: Any, _fn: Any = fn, _name: str = name, **kw: Any) -> Any:
            calls[_name] += 1
            return _fn(*a, **kw)

        monkeypatch.setattr(K, name, counted)
    return calls


def _greedy(fused: bool, monkeypatch: pytest.MonkeyPatch, device: torch.device,
            dtype: str, eager: bool = True) -> dict[str, Any]:
    monkeypatch.setattr(fp8mod, "FUSED_QUANT", fused)  # before the CUDA graphs are captured
    engine = LLMEngine(EngineConfig(model=tiny_model_dir("llama"), device=device.type, dtype=dtype,
                                    quantization="fp8", attention_backend="triton",
                                    enforce_eager=eager, max_seq_len=128, max_num_tokens=64,
                                    max_tokens_in_paged_kv_cache=1024, max_batch_size=4))
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, detokenize=False,
                            return_context_logits=True, return_generation_logits=True)
    return run_to_finals(engine, [list(range(20, 41)), [5, 17, 300, 41, 9]], params)  # prefill: 26 rows


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_fp8_model_fused_equals_unfused(dtype: str, kernels_on_cpu: None,
                                        monkeypatch: pytest.MonkeyPatch,
                                        device: torch.device) -> None:
    """The tiny Llama quantized to FP8, through the GPU dispatch (prefill: _scaled_mm, decode
    batches of 2: the tensor-core W8A8 kernel): the same context and generation logits, bit for
    bit, and the same greedy tokens with the fusion as without; and the fusion really ran: 3 of
    the 4 quantization launches per layer and step gone (o_proj's input is attention's)."""
    if fp8mod.DECODE_KERNEL != "tc-w8a8":
        pytest.skip("INFLIGHT_FP8_DECODE_KERNEL is set: the decode steps are not W8A8")
    calls = _count(monkeypatch, ["rms_norm_fp8", "add_rms_norm_fp8", "silu_and_mul_fp8",
                                 "per_token_quant_fp8", "fp8_skinny_mm"])
    ref = _greedy(False, monkeypatch, device, dtype)
    ref_calls = dict(calls)
    calls.update(dict.fromkeys(calls, 0))
    got = _greedy(True, monkeypatch, device, dtype)
    assert ref_calls["rms_norm_fp8"] == ref_calls["add_rms_norm_fp8"] == 0
    assert ref_calls["silu_and_mul_fp8"] == 0 and ref_calls["fp8_skinny_mm"] > 0
    layers_steps = ref_calls["per_token_quant_fp8"] // 4  # every linear quantized its input
    assert ref_calls["per_token_quant_fp8"] == 4 * layers_steps > 0
    if dtype == "float16":  # not in FUSED_DTYPES: the fusion stays off, nothing changes
        assert calls == ref_calls
        layers_steps = 0
    else:
        assert calls["per_token_quant_fp8"] == layers_steps  # o_proj only
    assert calls["silu_and_mul_fp8"] == layers_steps  # one per layer and step
    # the first layer's input norm has no residual yet; every other norm adds it
    assert calls["rms_norm_fp8"] + calls["add_rms_norm_fp8"] == 2 * layers_steps
    assert calls["rms_norm_fp8"] > 0 or dtype == "float16"
    for k, want in ref.items():
        assert got[k].token_ids == want.token_ids, k
        assert torch.equal(got[k].context_logits, want.context_logits), k
        assert torch.equal(got[k].generation_logits, want.generation_logits), k


@pytest.mark.gpu
def test_fp8_model_fused_equals_unfused_in_cuda_graphs(monkeypatch: pytest.MonkeyPatch) -> None:
    """On the GPU, decode steps replayed from CUDA graphs captured with the fused kernels:
    the same logits and tokens as graphs of the unfused pair."""
    monkeypatch.setattr(KernelGuard, "failed", {})
    cuda = torch.device("cuda")
    ref = _greedy(False, monkeypatch, cuda, "bfloat16", eager=False)
    got = _greedy(True, monkeypatch, cuda, "bfloat16", eager=False)
    assert not KernelGuard.failed
    for k, want in ref.items():
        assert got[k].token_ids == want.token_ids, k
        assert torch.equal(got[k].context_logits, want.context_logits), k
        assert torch.equal(got[k].generation_logits, want.generation_logits), k
