"""Quantization on CPU: accuracy of each format against the float model (trained tiny models
of each family), checkpoint round trips (inflight quantize -> load == in-memory
quantization), the AWQ / compressed-tensors bit orders, the FP8 KV cache and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from inflight.config import EngineConfig, ModelConfig
from inflight.errors import ConfigError
from inflight.model.attention.base import AttentionMetadata
from inflight.model.quant import check_device, detect
from inflight.model.quant.int4 import awq_pack, awq_unpack, dequantize_int4, pack_nibbles
from inflight.testing.tiny import FAMILIES, tiny_model_dir
from inflight.testing.trained import trained_model_dir
from inflight.tools.quantize import quantize_checkpoint
from inflight.worker.model_runner import ModelRunner
from safetensors.torch import load_file, save_file

PROMPT = [5, 6, 7, 8, 9, 10, 11, 12, 40, 50, 60, 70, 80, 90, 100, 110, 300, 301, 302, 700]
COS_MIN = {"fp8": 0.99, "awq": 0.97, "kv-fp8": 0.99, "fp8+kv-fp8": 0.99}


def _runner(model_dir: str, **kw: object) -> ModelRunner:
    cfg = EngineConfig(model=model_dir, max_tokens_in_paged_kv_cache=256, max_seq_len=64, **kw)
    return ModelRunner(cfg, ModelConfig.from_hf(model_dir), 64)


@torch.inference_mode()
def prompt_logits(runner: ModelRunner, ids: list[int] = PROMPT) -> torch.Tensor:
    """fp32 logits [T, V] of every prompt position (one prefill through the runner's model)."""
    t = len(ids)
    meta = AttentionMetadata(
        slot_mapping=torch.arange(t), query_start_loc=torch.tensor([0, t], dtype=torch.int32),
        seq_lens=torch.tensor([t], dtype=torch.int32),
        block_tables=torch.arange(runner.max_blocks_per_seq, dtype=torch.int32)[None],
        num_decodes=0, max_query_len=t, max_seq_len=t, query_start_loc_cpu=[0, t], seq_lens_cpu=[t])
    runner.backend.plan(meta)
    hidden = runner.model(torch.tensor(ids), torch.arange(t), runner.kv_cache, runner.backend, meta)
    return runner.model.compute_logits(hidden)  # type: ignore[operator,no-any-return]


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of the whole prompt-logit matrices [T, V], flattened."""
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def _min_pos_cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("family", FAMILIES)
def test_accuracy_vs_unquantized(family: str) -> None:
    """Prompt-logit cosine and greedy (argmax) agreement per format (printed with -s)."""
    d = trained_model_dir(family)
    base = prompt_logits(_runner(d))
    report = []
    for what, kw in (("fp8", {"quantization": "fp8"}), ("awq", {"quantization": "awq"}),
                     ("kv-fp8", {"kv_cache_dtype": "fp8"}),
                     ("fp8+kv-fp8", {"quantization": "fp8", "kv_cache_dtype": "fp8"})):
        q = prompt_logits(_runner(d, **kw))
        cos, agree = _cos(base, q), float((base.argmax(-1) == q.argmax(-1)).float().mean())
        report.append(f"{what}: cos {cos:.4f} (worst position {_min_pos_cos(base, q):.4f}) "
                      f"greedy {agree:.2f}")
        assert cos >= COS_MIN[what], f"{family} {what}: cosine {cos:.4f} < {COS_MIN[what]}"
    print(f"\n{family}: " + "; ".join(report))


# --------------------------------------------------------------------------- bit orders


def test_awq_and_compressed_tensors_bit_orders() -> None:
    """Codes 0..7 of one row: AutoAWQ interleaves columns (nibble i = column AWQ_ORDER[i] =
    0,2,4,6,1,3,5,7), compressed-tensors packs them in order, low nibble first."""
    codes = torch.arange(8, dtype=torch.uint8)[None]
    assert awq_pack(codes).item() == 0x75316420
    assert pack_nibbles(codes).item() == 0x76543210
    rnd = torch.randint(0, 16, (5, 32), dtype=torch.uint8)
    assert torch.equal(awq_unpack(awq_pack(rnd)), rnd)


# --------------------------------------------------------------------------- round trips


def _dequantized(layer: torch.nn.Module) -> torch.Tensor:
    if hasattr(layer, "qweight") and layer.qweight.dtype == torch.float8_e4m3fn:
        return layer.qweight.float() * layer.weight_scale[:, None]
    return dequantize_int4(layer.qweight, layer.scales.float(), layer.qzeros, layer.quant.group)


@pytest.fixture(scope="module")
def llama_dir() -> str:
    return trained_model_dir("llama")


@pytest.mark.parametrize("fmt,onload", [("fp8", "fp8"), ("int4-awq", "awq"), ("fp8-static", None),
                                        ("modelopt-fp8", None), ("int4-ct", None)])
def test_checkpoint_round_trip(fmt: str, onload: str | None, llama_dir: str, tmp_path: Path) -> None:
    # round to nearest, as on load (the AWQ scale search has its own tests: test_awq_search.py)
    out = quantize_checkpoint(llama_dir, str(tmp_path / fmt), fmt, awq_search=False)
    spec = detect(out)
    assert spec is not None and spec.source == "checkpoint"
    loaded = _runner(out)
    assert loaded.quant is not None and loaded.quant.checkpoint_format != "float"
    logits = prompt_logits(loaded)
    base = prompt_logits(_runner(llama_dir))
    assert _cos(base, logits) >= (0.99 if "fp8" in fmt else 0.97)
    if onload is not None:  # the same numbers as quantizing while loading the float model
        assert torch.equal(logits, prompt_logits(_runner(llama_dir, quantization=onload)))
    # the fused qkv of layer 0 holds exactly the dequantized parts the writer quantized
    w = load_file(str(Path(llama_dir) / "model.safetensors"))
    layer = loaded.model.model.layers[0].self_attn.qkv_proj
    want = torch.cat([_writer_dequant(fmt, w[f"model.layers.0.self_attn.{p}_proj.weight"], layer)
                      for p in "qkv"])
    torch.testing.assert_close(_dequantized(layer), want, rtol=0, atol=0)
    assert layer.weight is None and loaded.model.lm_head.weight.dtype == torch.float32


def _writer_dequant(fmt: str, w: torch.Tensor, layer: torch.nn.Module) -> torch.Tensor:
    from inflight.tools.quantize import _quantize_one

    t = _quantize_one(fmt, "x", w, getattr(layer.quant, "group", 128), {"x": 1.0})
    if "qweight" in t:
        codes, zeros = awq_unpack(t["qweight"]).t(), awq_unpack(t["qzeros"]).t()
        return dequantize_int4(pack_nibbles(codes), t["scales"].t().float(), zeros, layer.quant.group)
    if "weight_packed" in t:
        zeros = torch.full_like(t["weight_scale"], 8, dtype=torch.uint8)
        return dequantize_int4(t["weight_packed"], t["weight_scale"].float(), zeros, layer.quant.group)
    return t["weight"].float() * t["weight_scale"].float().reshape(-1, 1)


def test_modelopt_kv_scales_and_cli(tmp_path: Path) -> None:
    """`inflight quantize --format modelopt-fp8 --kv-cache-fp8`: the FP8 KV cache turns on
    from hf_quant_config.json and every layer gets its checkpoint K/V scales."""
    from inflight.tools.cli import main

    out = tmp_path / "mo"
    assert main(["quantize", "--model", trained_model_dir("llama"), "--out", str(out),
                 "--format", "modelopt-fp8", "--kv-cache-fp8"]) == 0
    cfg = json.loads((out / "hf_quant_config.json").read_text())
    assert cfg["quantization"]["kv_cache_quant_algo"] == "FP8"
    r = _runner(str(out))
    assert r.kv_dtype == torch.float8_e4m3fn and r.kv_cache.dtype == torch.float8_e4m3fn
    scales = [(a.self_attn.k_scale, a.self_attn.v_scale) for a in r.model.model.layers]
    assert all(k != 1.0 and v != 1.0 for k, v in scales)
    assert _cos(prompt_logits(_runner(trained_model_dir("llama"))), prompt_logits(r)) >= 0.99


# --------------------------------------------------------------------------- KV pool


def test_fp8_kv_cache_halves_bytes_per_token() -> None:
    d = tiny_model_dir("llama2")
    bf16 = _runner(d, dtype="bfloat16")
    fp8 = _runner(d, dtype="bfloat16", kv_cache_dtype="FP8")  # TensorRT-LLM's spelling
    assert bf16.kv_bytes_per_token() == 2 * fp8.kv_bytes_per_token()
    assert fp8.kv_cache.dtype == torch.float8_e4m3fn and bf16.kv_cache.dtype == torch.bfloat16


def test_int4_keeps_room_for_one_dense_layer_out_of_the_kv_pool() -> None:
    """INT4 GEMMs above 4 rows dequantize the layer to the activation dtype first: the
    workspace kept out of the KV pool grows by the largest such layer, gate_up."""
    d = tiny_model_dir("llama2")
    bf16, awq = _runner(d, dtype="bfloat16"), _runner(d, dtype="bfloat16", quantization="awq")
    c = ModelConfig.from_hf(d)
    assert awq.workspace_bytes() - bf16.workspace_bytes() == 2 * c.intermediate_size * c.hidden_size * 2
    assert _runner(d, dtype="bfloat16", quantization="fp8").workspace_bytes() == bf16.workspace_bytes()



# --------------------------------------------------------------------------- bad input


def _copy(tmp_path: Path, src: str) -> Path:
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


def _edit_config(d: Path, **quant: object) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"] = quant
    (d / "config.json").write_text(json.dumps(cfg))


def test_unknown_quant_method_is_named(tmp_path: Path) -> None:
    d = _copy(tmp_path, tiny_model_dir("llama2"))
    _edit_config(d, quant_method="gptq", bits=4)
    with pytest.raises(ConfigError, match="quant_method 'gptq' is not supported; supported: .*awq"):
        _runner(str(d))


def test_missing_scale_tensor_is_named(tmp_path: Path) -> None:
    d = Path(quantize_checkpoint(tiny_model_dir("llama2"), str(tmp_path / "q"), "fp8"))
    t = load_file(str(d / "model.safetensors"))
    del t["model.layers.1.self_attn.k_proj.weight_scale"]
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"lacks model\.layers\.1\.self_attn\.k_proj\.weight_scale"):
        _runner(str(d))


def test_shape_that_does_not_fit_its_format_is_named(tmp_path: Path) -> None:
    d = Path(quantize_checkpoint(tiny_model_dir("llama2"), str(tmp_path / "q"), "int4-awq"))
    t = load_file(str(d / "model.safetensors"))
    name = "model.layers.0.mlp.up_proj.qweight"
    t[name] = t[name][:, :-1].contiguous()
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"up_proj\.qweight' has shape \(64, 15\); the AutoAWQ INT4"):
        _runner(str(d))


def test_float_weight_in_a_fp8_checkpoint_is_named(tmp_path: Path) -> None:
    d = Path(quantize_checkpoint(tiny_model_dir("llama2"), str(tmp_path / "q"), "fp8"))
    t = load_file(str(d / "model.safetensors"))
    t["model.layers.0.mlp.down_proj.weight"] = t["model.layers.0.mlp.down_proj.weight"].float()
    save_file(t, str(d / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"down_proj\.weight' has dtype torch.float32"):
        _runner(str(d))


def test_option_conflicts_and_values() -> None:
    d = tiny_model_dir("llama2")
    with pytest.raises(ConfigError, match="needs a modelopt checkpoint"):
        _runner(d, quantization="modelopt")
    with pytest.raises(ConfigError, match="quantization must be auto, none, fp8, awq"):
        EngineConfig(model=d, quantization="int3")
    with pytest.raises(ConfigError, match="kv_cache_dtype must be auto or fp8"):
        EngineConfig(model=d, kv_cache_dtype="int8")
    assert EngineConfig(model=d, quantization="FP8").quantization == "fp8"


def test_fp8_needs_fp8_tensor_cores() -> None:
    from inflight.model.quant.config import QuantSpec

    spec = QuantSpec(option="fp8", kind="fp8", source="on load", checkpoint_format="float")
    with pytest.raises(ConfigError, match=r"quantization=fp8 needs a GPU with FP8 tensor cores.*sm_80"):
        check_device(spec, False, "cuda", (8, 0))
    with pytest.raises(ConfigError, match=r"kv_cache_dtype=fp8 needs"):
        check_device(None, True, "cuda", (8, 6))
    check_device(spec, True, "cuda", (9, 0))  # Hopper
    check_device(spec, True, "cpu", None)  # emulated
