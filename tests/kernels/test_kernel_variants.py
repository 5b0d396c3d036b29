"""After warm-up, serving never needs a new compiled variant of a Triton kernel.

OpenAI-Triton compiles one variant per combination of constexpr values, argument types and
specializations (an integer equal to 1 or divisible by 16, a pointer 16-byte aligned); a
variant first met while serving compiles inside that step (the H200 load curve of
2026-12-01: TTFT p99 0.8 s at 2 req/s, _prefill_kernel and _decode_split_kernel compiled
after warm-up). This test records the variant every kernel launch would need, by Triton's
rules and each kernel's ``do_not_specialize`` list, during the warm-up and then during a
varied workload (arrivals while others decode, chunked prompts, lengths on and off block
and 16-token boundaries, batches of decodes), and asserts the workload met none the warm-up
did not. On CPU the kernels run in the interpreter, every step eagerly; on the GPU the
eager steps are the ones the graphs do not take.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest
import torch
from inflight.config import EngineConfig
from inflight.engine.core import LLMEngine
from inflight.engine.warmup import warm_up
from inflight.sampling_params import SamplingParams
from inflight.testing.tiny import tiny_model_dir
from kernel_testing import fp8_decode_kernel, gpu_dispatch_on_cpu

KERNELS = [("paged_prefill_attention", "_prefill_kernel"),
           ("paged_decode_attention", "_decode_split_kernel"),
           ("paged_decode_attention", "_decode_reduce_kernel"),
           ("kv_cache_write", "_kv_cache_write_kernel"), ("rms_norm", "_rms_norm_kernel"),
           ("rotary_embedding", "_rotary_kernel"), ("silu_and_mul", "_silu_and_mul_kernel"),
           ("silu_and_mul", "_silu_and_mul_fp8_kernel"), ("fp8_quant", "_fp8_quant_kernel")]


def _variant(names: list[str], consts: set[str], fixed: set[str], values: dict[str, Any]
             ) -> tuple[Any, ...]:
    key: list[Any] = []
    for n in names:
        v = values.get(n)
        if n in consts:
            key.append((n, v))
        elif isinstance(v, torch.Tensor):
            key.append((n, str(v.dtype)) if n in fixed else (n, str(v.dtype), v.data_ptr() % 16 == 0))
        elif isinstance(v, bool):
            key.append((n, "i1", v))
        elif isinstance(v, int):
            width = "i32" if -2**31 <= v < 2**31 else "i64"
            key.append((n, width) if n in fixed else (n, width, v == 1, v % 16 == 0))
        else:
            key.append((n, type(v).__name__))
    return tuple(key)


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, set[tuple[Any, ...]]]:
    seen: dict[str, set[tuple[Any, ...]]] = {}
    for module, name in KERNELS:
        fn = getattr(importlib.import_module(f"inflight.kernels.{module}"), name)
        if not hasattr(fn, "run") or not hasattr(fn, "fn"):
            pytest.skip("needs the kernels as OpenAI-Triton JIT functions")
        params = inspect.signature(fn.fn).parameters
        names = list(params)
        consts = {n for n, p in params.items() if "constexpr" in str(p.annotation)}
        # interpreted: the decorator's kwargs; compiled (GPU): the JITFunction's params
        fixed = set((getattr(fn, "kwargs", None) or {}).get("do_not_specialize") or []) | {
            p.name for p in getattr(fn, "params", []) if p.do_not_specialize}
        run = fn.run

        def record(*args: Any, _run: Any = run, _name: str = name, _names: list[str] = names,
                   _consts: set[str] = consts, _fixed: set[str] = fixed, **kw: Any) -> Any:
            values = dict(zip(_names, args)) | {k: v for k, v in kw.items() if k in _names}
            seen.setdefault(_name, set()).add(_variant(_names, _consts, _fixed, values))
            return _run(*args, **kw)

        monkeypatch.setattr(fn, "run", record)
    return seen


def test_a_varied_workload_needs_no_variant_the_warm_up_did_not_compile(
        recorded: dict[str, set[tuple[Any, ...]]], device: torch.device) -> None:
    if device.type != "cpu":
        pytest.skip("the GPU replays graphs for most steps; this checks the eager paths")
    engine = LLMEngine(EngineConfig(model=tiny_model_dir("llama"), device="cpu", dtype="float32",
                                    attention_backend="triton", max_num_tokens=64, max_seq_len=256,
                                    max_tokens_in_paged_kv_cache=4096, max_batch_size=16))
    warm_up(engine)
    warmed = {k: set(v) for k, v in recorded.items()}
    # on CPU the model's norms, rotary and MLP take torch ops; attention and the KV write run
    # the Triton kernels (split decode only with several splits: not on these short contexts)
    assert {"_prefill_kernel", "_decode_split_kernel", "_kv_cache_write_kernel"} <= set(warmed)
    recorded.clear()
    _varied_workload(engine, [2, 15, 16, 17, 31, 32, 33, 47, 48, 63, 64, 65, 96, 100, 127, 130])
    new = {k: v - warmed.get(k, set()) for k, v in recorded.items() if v - warmed.get(k, set())}
    assert not new, f"variants the warm-up did not compile: {new}"


@pytest.mark.slow
def test_fp8_fused_quantization_needs_no_variant_the_warm_up_did_not_compile(
        recorded: dict[str, set[tuple[Any, ...]]], monkeypatch: pytest.MonkeyPatch,
        device: torch.device) -> None:
    """An FP8 bf16 model through the GPU dispatch (kernels in the interpreter) with the
    register GEMV for decode batches of up to 4 rows: the norms hand W8A16 layers 16-bit rows
    there and W8A8 layers (more rows, or gate_up's weight past the GEMV's limit) e4m3 rows,
    a constexpr chosen by the batch size; the warm-up compiles both."""
    if device.type != "cpu":
        pytest.skip("the GPU replays graphs for most steps; this checks the eager paths")
    gpu_dispatch_on_cpu(monkeypatch)
    fp8_decode_kernel(monkeypatch, "gemv", 4)
    engine = LLMEngine(EngineConfig(model=tiny_model_dir("llama"), device="cpu", dtype="bfloat16",
                                    quantization="fp8", attention_backend="triton",
                                    max_num_tokens=64, max_seq_len=128,
                                    max_tokens_in_paged_kv_cache=2048, max_batch_size=8))
    warm_up(engine)
    warmed = {k: set(v) for k, v in recorded.items()}
    # the first layer's input norm (no residual yet) met both ways; the final norm (residual,
    # lm_head unquantized) never asks, so only the former tells
    first = [key for key in warmed["_rms_norm_kernel"] if ("HAS_RESIDUAL", False) in key]
    assert {fp8 for key in first for fp8 in (True, False) if ("OUT_FP8", fp8) in key} == {True, False}
    assert {"_silu_and_mul_kernel", "_silu_and_mul_fp8_kernel", "_fp8_quant_kernel"} <= set(warmed)
    recorded.clear()
    _varied_workload(engine, [2, 5, 17, 33, 48, 65], max_out=8)
    new = {k: v - warmed.get(k, set()) for k, v in recorded.items() if v - warmed.get(k, set())}
    assert not new, f"variants the warm-up did not compile: {new}"
    assert {"_rms_norm_kernel", "_silu_and_mul_fp8_kernel"} <= set(recorded)


def _varied_workload(engine: LLMEngine, lengths: list[int], max_out: int = 24) -> None:
    """Prompts of ``lengths`` arriving two at a time, every third step, while others decode."""
    g = torch.Generator().manual_seed(3)
    joining: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):  # two at a time, every third step, while others decode
        joining.setdefault(3 * (i // 2), []).append(n)
    n_req, steps = 0, 0
    while steps < 200:
        for n in joining.pop(steps, []):
            prompt = torch.randint(10, 1500, (n,), generator=g).tolist()
            out = int(torch.randint(1, max_out, (1,), generator=g))
            engine.add_request(f"r{n_req}", prompt, SamplingParams(
                max_tokens=out, temperature=0.0, ignore_eos=True, detokenize=False))
            n_req += 1
        if not engine.has_unfinished() and not joining:
            break
        engine.step()
        steps += 1
    engine.kv.assert_all_free()
