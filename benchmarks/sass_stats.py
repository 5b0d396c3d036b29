"""Instruction counts of the FP8 kernels compiled for the H100/H200 (sm_90) on a machine
without a GPU: Triton's compiler and the ptxas / cuobjdump shipped in its wheel.

    python benchmarks/sass_stats.py [decode-attention] [skinny-mm] [--sass-dir DIR]

decode-attention: ``_decode_split_kernel`` (BLOCK_N 64, head dim 128, 8 KV heads' GQA group
padded to 16, 4 warps, 3 stages) for a bf16 cache and for an e4m3 cache with each
``fp8_kv_dots`` choice (bf16, fp16, fp16-vt, fp16-pairs); skinny-mm: ``_fp8_skinny_kernel`` with the
launch configs of kernels/fp8_skinny_mm.py. Prints the static SASS instruction count and the
memory, conversion and tensor-core instructions that tell the variants apart (``LDS.U8``:
byte-wise shared-memory loads; ``F2F.BF16.F16``: the second conversion step of e4m3 -> bf16;
``QGMMA``: FP8 wgmma). Static counts, not a timing: a kernel's speed is measured on the GPU
(benchmarks/gpu_bench.sh); this shows what the compiler made of a change before a device call.
To compile with the GPU machine's Triton (3.6 in 2026-12) instead of this one's:
``pip download triton==3.6.0 --no-deps -d W && pip install --no-deps --target T W/triton-*.whl``,
then ``PYTHONPATH=T python benchmarks/sass_stats.py``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from typing import Any

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SM90 = GPUTarget("cuda", 90, 32)
SHOWN = r"\b(LDGSTS|LDSM|LDS|LDG|STS|F2FP|F2F|PRMT|HGMMA|QGMMA|HMMA)(\.[A-Z0-9_.]+)?"


def cuobjdump() -> str:
    import triton.backends.nvidia as nv

    return os.path.join(os.path.dirname(nv.__file__), "bin", "cuobjdump")


def compile_sm90(kernel: Any, ptrs: dict[str, str], consts: dict[str, Any], floats: tuple[str, ...],
                 aligned: tuple[str, ...], warps: int, stages: int) -> Any:
    """Compile ``kernel`` for sm_90: pointer types from ``ptrs``, ``consts`` as constexprs,
    ``floats`` fp32 scalars, other arguments i32; ``aligned`` arguments divisible by 16 (as
    the launcher's specialization would see them)."""
    sig = {n: ptrs.get(n) or ("constexpr" if n in consts else "fp32" if n in floats else "i32")
           for n in kernel.arg_names}
    attrs = {(kernel.arg_names.index(n),): [["tt.divisibility", 16]] for n in aligned}
    src = ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs)
    return triton.compile(src, target=SM90, options={"num_warps": warps, "num_stages": stages})


def sass_counts(compiled: Any, keep: str | None) -> tuple[int, Counter[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        sass = subprocess.run([cuobjdump(), "--dump-sass", path], capture_output=True, text=True,
                              check=True).stdout
    if keep:
        with open(keep, "w") as f:
            f.write(sass)
    total = len(re.findall(r"^\s+/\*[0-9a-f]{4}\*/", sass, re.M))
    return total, Counter(a + b for a, b in re.findall(SHOWN, sass))


def show(name: str, compiled: Any, sass_dir: str) -> None:
    keep = os.path.join(sass_dir, f"{name}.sass") if sass_dir else None
    total, ops = sass_counts(compiled, keep)
    top = ", ".join(f"{k} {v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1]) if v >= 4)
    print(f"{name:28} {total:5d} instructions | {top}")


def decode_attention(sass_dir: str) -> None:
    mod = importlib.import_module("kernels.paged_decode_attention")
    ptrs = {"q_ptr": "*bf16", "bt_ptr": "*i32", "seq_lens_ptr": "*i32", "out_ptr": "*bf16",
            "mid_o_ptr": "*fp32", "mid_lse_ptr": "*fp32"}
    aligned = ("q_ptr", "k_cache_ptr", "v_cache_ptr", "out_ptr", "mid_o_ptr", "mid_lse_ptr",
               "stride_qb", "stride_qh", "stride_cb", "stride_cs", "stride_ch", "stride_ob",
               "stride_oh", "num_q_heads", "head_dim")
    for cache, dots in (("bf16", "bf16"), ("fp8e4nv", "bf16"), ("fp8e4nv", "fp16"),
                        ("fp8e4nv", "fp16-vt"), ("fp8e4nv", "fp16-pairs")):
        cfg = mod.launch_config(torch.bfloat16 if cache == "bf16" else torch.float8_e4m3fn)
        consts = {"BLOCK_SIZE": 16, "SPLIT": True, "BLOCK_G": 16, "BLOCK_N": cfg["block_n"], "BLOCK_D": 128,
                  "DOT_PRECISION": "tf32", "UPCAST": False,
                  "F16": cache != "bf16" and dots != "bf16", "V_T": cache != "bf16" and dots == "fp16-vt",
                  "PAIRS": dots == "fp16-pairs", "SOFT": False}
        ptr = "*i16" if dots == "fp16-pairs" else f"*{cache}"  # pairs: the cache viewed as int16
        c = compile_sm90(mod._decode_split_kernel, ptrs | {"k_cache_ptr": ptr,
                         "v_cache_ptr": ptr}, consts, ("scale_log2", "v_scale"), aligned,
                         cfg["num_warps"], cfg["num_stages"])
        show(f"decode {'e4m3' if cache != 'bf16' else 'bf16'} cache, {dots} dots", c, sass_dir)


def skinny_mm(sass_dir: str) -> None:
    mod = importlib.import_module("kernels.fp8_skinny_mm")
    aligned = ("x_ptr", "w_ptr", "y_ptr", "K", "k_per", "stride_xm", "stride_wn", "stride_ym")
    for name, n, k in (("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096),
                       ("down", 4096, 14336)):
        for a8 in (True, False):
            cfg = mod.launch_config(n, k, a8, False)
            ptrs = {"x_ptr": "*u8" if a8 else "*bf16", "xs_ptr": "*fp32", "w_ptr": "*u8",
                    "s_ptr": "*fp32", "y_ptr": "*fp32" if cfg["SPLIT_K"] > 1 else "*bf16"}
            consts = {"BLOCK_M": mod.MAX_M, "BLOCK_N": cfg["BLOCK_N"], "BLOCK_K": cfg["BLOCK_K"],
                      "A8": a8, "SOFT": False}
            c = compile_sm90(mod._fp8_skinny_kernel, ptrs, consts, (), aligned,
                             cfg["num_warps"], cfg["num_stages"])
            show(f"skinny {name} {'W8A8' if a8 else 'W8A16'}", c, sass_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", nargs="*", help="decode-attention and/or skinny-mm (default: both)")
    ap.add_argument("--sass-dir", default="", help="also write each kernel's SASS here")
    args = ap.parse_args()
    kinds = {"decode-attention": decode_attention, "skinny-mm": skinny_mm}
    for what in args.what:
        if what not in kinds:
            ap.error(f"unknown kernel set {what!r}: choose from {', '.join(kinds)}")
    if args.sass_dir:
        os.makedirs(args.sass_dir, exist_ok=True)
    print(f"# triton {triton.__version__}, target sm_90 (compiled here, no GPU needed)")
    for what in args.what or list(kinds):
        kinds[what](args.sass_dir)


if __name__ == "__main__":
    main()
