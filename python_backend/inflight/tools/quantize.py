"""`inflight quantize`: write a quantized checkpoint from a bf16/fp16/fp32 one.

Formats (each loads with ``quantization=auto``, detected from the written config):
  fp8           compressed-tensors float-quantized: per-channel e4m3 weights, dynamic
                per-token activations (what quantization=fp8 does on load)
  fp8-static    compressed-tensors float-quantized: per-tensor weights, static per-tensor
                input scales from a calibration text
  modelopt-fp8  NVIDIA ModelOpt export: hf_quant_config.json, per-tensor weight and input
                scales, optional FP8 KV cache scales (--kv-cache-fp8)
  int4-awq      AutoAWQ GEMM (4-bit, group 128, zero points)
  int4-ct       compressed-tensors pack-quantized W4A16 (symmetric, group 128)
The INT4 formats run AWQ's activation-aware scale search first (model/quant/awq_search.py;
--rtn: plain round-to-nearest). lm_head and the embeddings stay in the checkpoint dtype.
Calibration (static FP8 scales, the AWQ search) runs the float model through transformers
on a small built-in text (or --calib-file).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from typing import Any

import torch
from tqdm.auto import tqdm

from inflight import env
from inflight.errors import ConfigError
from inflight.model.quant.fp8 import FP8_MAX, amax_scale, per_channel_fp8, quantize_fp8
from inflight.model.quant.int4 import awq_pack, pack_nibbles, rtn_int4
from inflight.model.quant.setup import fit_group

FORMATS = ("fp8", "fp8-static", "modelopt-fp8", "int4-awq", "int4-ct")
# decoder-layer linear weights; everything else is copied as is
_LINEAR = re.compile(r"^(.*\.layers\.\d+\.(?:self_attn|mlp)\.[a-z_]+_proj)\.weight$")
CALIB_TEXT = (
    "The quick brown fox jumps over the lazy dog. In 1969 two astronauts walked on the Moon, "
    "and the world watched. def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + "
    "fibonacci(n - 2)\nPrices rose 3.5% in March; the central bank said it would act. "
    "Water boils at 100 degrees Celsius at sea level, and freezes at zero. "
)


def calibrate(model_dir: str, text: str) -> dict[str, float]:
    """Max |input| of every decoder Linear, and max |output| of k_proj/v_proj
    ('<module>:out'), over one forward pass of the float model on ``text``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    stats: dict[str, float] = {}

    def hook(name: str):  # type: ignore[no-untyped-def]
        def fn(_mod: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            stats[name] = max(stats.get(name, 0.0), float(inputs[0].abs().max()))
            stats[name + ":out"] = max(stats.get(name + ":out", 0.0), float(output.abs().max()))
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and ".layers." in n]
    with torch.no_grad():
        model(**tok(text, return_tensors="pt"))
    for h in handles:
        h.remove()
    return stats


def _fp8_tensor(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = amax_scale(w.float().abs().max())
    return quantize_fp8(w, scale), scale.reshape(1)


def _quantize_one(fmt: str, module: str, w: torch.Tensor, group: int,
                  stats: dict[str, float], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """One float weight [N, K] -> the format's tensors, keyed by suffix (``dtype``: the
    checkpoint's, for the scales that format stores in it; default w's)."""
    if fmt == "fp8":
        q, s = per_channel_fp8(w)
        return {"weight": q, "weight_scale": s[:, None].contiguous()}
    if fmt in ("fp8-static", "modelopt-fp8"):
        q, s = _fp8_tensor(w)
        in_scale = torch.tensor([max(stats.get(module, 0.0), 1e-6) / FP8_MAX])
        if fmt == "modelopt-fp8":  # ModelOpt writes 0-d scales
            return {"weight": q, "weight_scale": s.reshape(()), "input_scale": in_scale.reshape(())}
        return {"weight": q, "weight_scale": s, "input_scale": in_scale}
    if fmt == "int4-awq":
        codes, scales, zeros = rtn_int4(w, group)
        return {"qweight": awq_pack(codes.t().contiguous()),  # [K, N/8]
                "qzeros": awq_pack(zeros.t().contiguous()),  # [K/G, N/8]
                "scales": scales.t().contiguous().half()}  # [K/G, N]
    codes, scales, _ = rtn_int4(w, group, symmetric=True)  # int4-ct: signed values + 8
    return {"weight_packed": pack_nibbles(codes), "weight_scale": scales.to(dtype or w.dtype),
            "weight_shape": torch.tensor(list(w.shape), dtype=torch.int64)}


def _quant_config(fmt: str, group: int) -> dict[str, Any]:
    if fmt == "int4-awq":
        return {"quant_method": "awq", "bits": 4, "group_size": group, "zero_point": True,
                "version": "gemm", "modules_to_not_convert": None}
    if fmt == "int4-ct":
        weights = {"num_bits": 4, "type": "int", "strategy": "group", "group_size": group,
                   "symmetric": True, "dynamic": False}
        acts = None
        form = "pack-quantized"
    else:
        static = fmt == "fp8-static"
        weights = {"num_bits": 8, "type": "float", "strategy": "tensor" if static else "channel",
                   "symmetric": True, "dynamic": False}
        acts = {"num_bits": 8, "type": "float", "strategy": "tensor" if static else "token",
                "symmetric": True, "dynamic": not static}
        form = "float-quantized"
    return {"quant_method": "compressed-tensors", "format": form, "quantization_status": "compressed",
            "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights,
                                          "input_activations": acts}},
            "ignore": ["lm_head"], "kv_cache_scheme": None}


def quantize_checkpoint(src: str, out: str, fmt: str, group_size: int = 128,
                        calib_text: str | None = None, kv_cache_fp8: bool = False,
                        awq_search: bool = True) -> str:
    """Write ``src`` quantized as ``fmt`` to ``out``; returns ``out``. INT4 formats search
    AWQ scales first unless ``awq_search`` is False (round-to-nearest)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from inflight.worker.loader import checkpoint_files

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not supported; supported: {', '.join(FORMATS)}")
    if kv_cache_fp8 and fmt != "modelopt-fp8":
        raise ConfigError("--kv-cache-fp8 writes ModelOpt KV scales: use it with --format modelopt-fp8")
    with open(os.path.join(src, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    if config.get("quantization_config") or os.path.isfile(os.path.join(src, "hf_quant_config.json")):
        raise ConfigError(f"{src!r} is already quantized; quantize a bf16/fp16/fp32 checkpoint")
    files = checkpoint_files(src)
    handles = [safe_open(p, framework="pt") for p in files]
    names = [(h, n) for h in handles for n in h.keys()]  # noqa: SIM118 - no __iter__
    ks = [h.get_slice(n).get_shape()[1] for h, n in names if _LINEAR.match(n)]
    group = fit_group(group_size, ks) if fmt.startswith("int4") else group_size
    stats = calibrate(src, calib_text or CALIB_TEXT) if fmt in ("fp8-static", "modelopt-fp8") else {}
    source: dict[str, torch.Tensor] | None = None
    dtypes: dict[str, torch.dtype] = {}
    if awq_search and fmt.startswith("int4"):  # the whole float model, scales folded in
        from inflight.model.quant.awq_search import apply_awq_scales, capture_inputs

        source = {name: h.get_tensor(name) for h, name in names}
        dtypes.update((name, t.dtype) for name, t in source.items())  # scaled linears turn fp32
        apply_awq_scales(source, capture_inputs(src, calib_text or CALIB_TEXT), group,
                         symmetric=fmt == "int4-ct")
    tensors: dict[str, torch.Tensor] = {}
    for h, name in tqdm(names, desc=f"Quantizing ({fmt})", unit="tensor", disable=env.disable_progress()):
        t = h.get_tensor(name) if source is None else source.pop(name)
        m = _LINEAR.match(name)
        if m is None or "lm_head" in name:
            tensors[name] = t
            continue
        dtype = t.dtype if source is None else dtypes[name]
        for suffix, q in _quantize_one(fmt, m.group(1), t, group, stats, dtype).items():
            tensors[f"{m.group(1)}.{suffix}"] = q.contiguous()
        if kv_cache_fp8 and m.group(1).endswith(("k_proj", "v_proj")):
            which = "k" if m.group(1).endswith("k_proj") else "v"
            amax = max(stats.get(m.group(1) + ":out", 0.0), 1e-6)
            tensors[f"{m.group(1)}.{which}_scale"] = torch.tensor(amax / FP8_MAX)
    os.makedirs(out, exist_ok=True)
    save_file(tensors, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    for entry in os.listdir(src):  # tokenizer, generation config, ...
        path = os.path.join(src, entry)
        if os.path.isfile(path) and not entry.endswith(".safetensors") and entry not in (
                "model.safetensors.index.json", "config.json"):
            shutil.copy(path, os.path.join(out, entry))
    if fmt == "modelopt-fp8":
        with open(os.path.join(out, "hf_quant_config.json"), "w", encoding="utf-8") as f:
            json.dump({"producer": {"name": "modelopt (written by inflight quantize)"},
                       "quantization": {"quant_algo": "FP8", "kv_cache_quant_algo":
                                        "FP8" if kv_cache_fp8 else None,
                                        "exclude_modules": ["lm_head"]}}, f, indent=2)
    else:
        config["quantization_config"] = _quant_config(fmt, group)
    with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    return out


def _cmd_quantize(a: argparse.Namespace) -> int:
    from inflight.model_source import resolve_model

    calib = None
    if a.calib_file:
        with open(a.calib_file, encoding="utf-8") as f:
            calib = f.read()
    out = quantize_checkpoint(resolve_model(a.model), a.out, a.format, a.group_size, calib,
                              a.kv_cache_fp8, awq_search=not a.rtn)
    print(f"wrote {a.format} checkpoint to {out}", file=sys.stderr)
    return 0


def add_quantize_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("quantize", help="write an FP8 or INT4 (AWQ) checkpoint from a float one",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="float checkpoint directory (or tiny:FAMILY)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--format", default="fp8", choices=FORMATS)
    p.add_argument("--group-size", type=int, default=128, help="INT4 group size (default 128)")
    p.add_argument("--calib-file", default=None,
                   help="calibration text for static FP8 scales and the AWQ search (default: built in)")
    p.add_argument("--rtn", action="store_true",
                   help="INT4: plain round-to-nearest, without AWQ's activation-aware scale search")
    p.add_argument("--kv-cache-fp8", action="store_true",
                   help="modelopt-fp8: also write per-layer K/V cache scales (kv_cache_quant_algo FP8)")
    p.set_defaults(func=_cmd_quantize)
    return p
