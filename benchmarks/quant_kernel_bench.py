"""Per-layer GPU times of the quantized linear paths on Llama-3.1-8B shapes (issue 14).

    python benchmarks/quant_kernel_bench.py [--m 1,16,128,1024,4096] [--sweep] [--json OUT.json]

For each decoder linear (qkv 4096->6144, o 4096->4096, gate_up 4096->28672, down
14336->4096; lm_head excluded) and each M: the median GPU time (a CUDA graph of the call,
``triton.testing.do_bench_cudagraph``: what a decode step replays) of
  bf16    torch.matmul(x, w.T)
  fp8     the model's dispatch (``fp8_linear_cuda``; the path it took in brackets)
  gemv    the W8A16 Triton GEMV alone (M <= 16)
  q+mm    fused per-token quantization + torch._scaled_mm (W8A8)
  tc16    the tensor-core kernel fp8_skinny_mm, W8A16 (M <= 16)
  tc8     fused per-token quantization + fp8_skinny_mm W8A8 (M <= 16)
  quant   the quantization kernel alone
  norm+q / normq  (qkv, gate_up: their input comes out of add_rms_norm) add_rms_norm then the
          quantization kernel, against add_rms_norm_fp8 (one launch: INFLIGHT_FP8_FUSED_QUANT)
  silu+q / siluq  (down: its input is silu_and_mul's [M, 2K] -> [M, K]) silu_and_mul then the
          quantization kernel, against silu_and_mul_fp8
  int4    w4a16_matmul (group 128)
with achieved GB/s (weights + x + y bytes, each once) for M <= 16 and TFLOP/s (2MNK) above,
and the relative error of fp8 / int4 against the bf16 product (random weights with 1% outlier
input channels). A path that fails (e.g. a kernel that does not compile with this Triton)
prints FAILED and its error; the others still run.

--dry-run runs every path once on tiny shapes on the CPU (kernels in Triton's interpreter) to
check the script itself; its times mean nothing.

--sweep times the M=1 GEMV kernels (FP8 and INT4) over a few launch configs per shape and
prints the fastest next to the default (kernels/fp8_gemv.py ``launch_config``,
kernels/w4a16.py ``gemv_config``); --sweep-skinny does the same for the tensor-core kernel
(kernels/fp8_skinny_mm.py) at M = 1 and 16, W8A16 and W8A8.
"""

from __future__ import annotations

import os
import sys

if "--dry-run" in sys.argv:  # before triton is imported: it reads TRITON_INTERPRET once
    os.environ["TRITON_INTERPRET"] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from functools import partial  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import triton.testing  # noqa: E402

SHAPES = [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336)]
PRODUCER_NORM, PRODUCER_SILU = ("qkv", "gate_up"), ("down",)  # o_proj's input is attention's
NO_RATE = ("quant", "deq", "norm+q", "normq", "silu+q", "siluq")  # no weights: times only
GROUP = 128
# (BLOCK_N, BLOCK_K, num_warps); the first H200 sweep (2026-12-01) found 4 rows x 1024 x 4
# warps fastest on every layer, at the small-tile end: smaller tiles and more warps are here
FP8_SWEEP = [(1, 2048, 4), (2, 1024, 2), (2, 2048, 4), (2, 4096, 8), (4, 512, 2),
             (4, 1024, 4), (4, 2048, 8), (8, 1024, 8), (16, 512, 8)]
# (BLOCK_N, BLOCK_K, num_warps, SPLIT_K): split-K, so wider row blocks (x read fewer times)
# still give every SM several programs with their loads in flight
FP8_SPLIT_SWEEP = [(8, 1024, 4, 2), (16, 1024, 4, 4), (16, 512, 4, 4), (32, 512, 8, 4),
                   (16, 1024, 8, 2)]
# (BLOCK_N, BLOCK_K, num_warps, SPLIT_K) with ACC_K: per-lane partial sums over K, one
# reduction after the loop instead of a cross-warp one per K step (not yet measured)
FP8_ACC_SWEEP = [(4, 1024, 4, 1), (2, 2048, 4, 1), (4, 2048, 8, 1), (8, 1024, 8, 1),
                 (8, 512, 4, 1), (8, 1024, 8, 2), (16, 512, 8, 4), (8, 1024, 8, 4)]
# tensor-core kernel (kernels/fp8_skinny_mm.py), M = 1 and 16, W8A16 and W8A8 (x quantized
# beforehand: the kernel's own time): (BLOCK_N, BLOCK_K, num_warps, num_stages, SPLIT_K)
SKINNY_SWEEP = [(16, 256, 4, 4, 1), (16, 512, 4, 3, 1), (16, 1024, 4, 2, 1), (16, 256, 2, 4, 1),
                (32, 256, 4, 4, 1), (32, 512, 4, 3, 1), (64, 128, 4, 4, 1), (64, 256, 4, 4, 1),
                (64, 256, 4, 3, 1), (64, 512, 4, 3, 1), (128, 128, 4, 4, 1), (128, 256, 8, 3, 1),
                (16, 256, 4, 4, 2), (32, 256, 4, 4, 2), (64, 256, 4, 4, 2), (64, 256, 4, 4, 4)]
INT4_SWEEP = [(4, 4096, 8), (4, 2048, 4), (8, 2048, 8), (8, 1024, 4), (16, 1024, 8),
              (32, 512, 8)]  # each with X_VEC False and True, and with ACC_K (x as vectors)


DEV = "cuda"


def gpu_us(fn: Callable[[], Any]) -> float:
    """Median microseconds of fn replayed from a CUDA graph (eager do_bench if it cannot be
    captured). fn runs once first: compiles and fallbacks happen outside the capture."""
    fn()
    if DEV == "cpu":  # --dry-run: one timed call
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e6
    torch.cuda.synchronize()
    try:
        return float(triton.testing.do_bench_cudagraph(fn, rep=20, return_mode="median")) * 1e3
    except Exception:
        torch.cuda.synchronize()
        return float(triton.testing.do_bench(fn, rep=20, return_mode="median")) * 1e3


def try_us(fn: Callable[[], Any]) -> tuple[float | None, str]:
    try:
        return gpu_us(fn), ""
    except Exception as e:  # a failing kernel must not stop the table
        if DEV == "cuda":
            torch.cuda.synchronize()
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def rate(us: float | None, m: int, n: int, k: int, wbytes: float) -> str:
    if us is None:
        return "FAILED"
    if m <= 16:
        return f"{(wbytes + 2 * m * k + 2 * m * n) / us / 1e3:6.0f} GB/s"
    return f"{2 * m * n * k / us / 1e6:6.0f} TF/s"


def then_quant(producer: Callable[..., Any], *args: Any) -> Any:
    """The unfused pair: the producer's 16-bit output, then the quantization kernel."""
    from inflight.kernels import per_token_quant_fp8

    out = producer(*args)
    return per_token_quant_fp8(out[0] if isinstance(out, tuple) else out)


def layer_rows(name: str, n: int, k: int, ms: list[int], out: list[dict[str, Any]]) -> None:
    from inflight.kernels import (
        add_rms_norm,
        add_rms_norm_fp8,
        fp8_gemv,
        per_token_quant_fp8,
        silu_and_mul,
        silu_and_mul_fp8,
        w4a16_dense,
        w4a16_matmul,
    )
    from inflight.model.quant.fp8 import (
        fp8_linear_cuda,
        fp8_linear_path,
        fp8_linear_scaled_mm,
        per_channel_fp8,
    )
    from inflight.model.quant.int4 import int4_linear_cuda, int4_linear_path, pack_nibbles, rtn_int4

    w = torch.randn(n, k, device=DEV) * 0.02
    w[:, torch.randperm(k, device=DEV)[: max(k // 100, 1)]] *= 20
    wb = w.bfloat16()
    del w
    q8, s8 = per_channel_fp8(wb)
    codes, sc, z = rtn_int4(wb, GROUP)
    q4, sc4, z4 = pack_nibbles(codes), sc.bfloat16(), z
    del codes, sc
    nbytes = {"bf16": 2 * n * k, "fp8": n * k + 4 * n, "int4": n * k / 2 + 3 * n * k / GROUP}
    for m in ms:
        x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
        ref = (x.float() @ wb.float().t())
        path = fp8_linear_path(m, True, n=n, k=k)
        fns: dict[str, tuple[Callable[[], Any], str]] = {
            "bf16": (partial(torch.matmul, x, wb.t()), "bf16"),
            "fp8": (partial(fp8_linear_cuda, x, q8, s8, None), "fp8"),
            "gemv": (partial(fp8_gemv, x, q8, s8), "fp8"),
            "q+mm": (partial(fp8_linear_scaled_mm, x, q8, s8, None), "fp8"),
            "tc16": (partial(fp8_linear_cuda, x, q8, s8, None, "tc16"), "fp8"),  # tensor cores, W8A16
            "tc8": (partial(fp8_linear_cuda, x, q8, s8, None, "tc8"), "fp8"),  # quant + W8A8
            "quant": (partial(per_token_quant_fp8, x), "fp8"),
            "int4": (partial(int4_linear_cuda, x, q4, sc4, z4, GROUP), "int4"),  # the dispatch
            "int4dot": (partial(w4a16_matmul, x, q4, sc4, z4, GROUP), "int4"),  # tl.dot kernel
            "deq": (partial(w4a16_dense, q4, sc4, z4, GROUP), "int4"),  # dequantization alone
        }
        if name in PRODUCER_NORM:  # the kernel that makes this layer's input, then quantization
            res, nw = torch.randn_like(x), torch.rand(k, device=DEV, dtype=torch.bfloat16) + 0.5
            fns["norm+q"] = (partial(then_quant, add_rms_norm, x, res, nw, 1e-5), "fp8")
            fns["normq"] = (partial(add_rms_norm_fp8, x, res, nw, 1e-5), "fp8")  # fused
        elif name in PRODUCER_SILU:
            g = torch.randn(m, 2 * k, device=DEV, dtype=torch.bfloat16)
            fns["silu+q"] = (partial(then_quant, silu_and_mul, g), "fp8")
            fns["siluq"] = (partial(silu_and_mul_fp8, g), "fp8")  # fused
        if m > 16:
            del fns["gemv"], fns["tc16"], fns["tc8"]
        if m <= 4:  # the dispatch is the GEMV itself there
            del fns["int4dot"], fns["deq"]
        row: dict[str, Any] = {"layer": name, "n": n, "k": k, "m": m, "fp8_path": path,
                               "int4_path": int4_linear_path(m)}
        cells = []
        for key, (fn, fmt) in fns.items():
            us, err = try_us(fn)
            row[f"{key}_us"] = us
            if err:
                row[f"{key}_error"] = err
            wbytes = 0.0 if key in NO_RATE else nbytes[fmt]
            shown = "FAILED" if us is None else f"{us:7.1f}"
            extra = "" if key in NO_RATE else f" {rate(us, m, n, k, wbytes)}"
            chosen = {"fp8": f"[{path}]", "int4": f"[{row['int4_path']}]"}.get(key, "")
            cells.append(f"{key}{chosen} {shown}{extra}")
        for key, fn_out in (("fp8", fns["fp8"][0]), ("int4", fns["int4"][0])):
            try:
                row[f"{key}_rel_err"] = float(((fn_out().float() - ref).norm() / ref.norm()).item())
            except Exception:
                row[f"{key}_rel_err"] = None
        out.append(row)
        errs = "  ".join(f"{k}: {v}" for k, v in row.items() if k.endswith("_error"))
        print(f"{name:8} M={m:<5d} " + " | ".join(cells)
              + f" | rel err fp8 {row['fp8_rel_err'] or float('nan'):.3f} int4 "
              f"{row['int4_rel_err'] or float('nan'):.3f}" + (f"\n    {errs}" if errs else ""),
              flush=True)
        del x, ref


def sweep_skinny(out: list[dict[str, Any]], ms: tuple[int, ...] = (1, 16)) -> None:
    """The tensor-core kernel over SKINNY_SWEEP per shape, M and mode (W8A16, W8A8)."""
    from inflight.kernels import fp8_skinny_mm, per_token_quant_fp8
    from inflight.kernels.fp8_skinny_mm import launch_config
    from inflight.model.quant.fp8 import per_channel_fp8

    for name, n, k in shapes():
        q8, s8 = per_channel_fp8((torch.randn(n, k, device=DEV) * 0.02).bfloat16())
        for m in ms:
            x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
            xq, sx = per_token_quant_fp8(x)
            for mode, call in (("w8a16", partial(fp8_skinny_mm, x, q8, s8)),
                               ("w8a8", partial(fp8_skinny_mm, xq, q8, s8, sx))):
                times = []
                for c in SKINNY_SWEEP:
                    cfg = {"BLOCK_N": c[0], "BLOCK_K": c[1], "num_warps": c[2],
                           "num_stages": c[3], "SPLIT_K": c[4]}
                    us, _ = try_us(partial(call, config=cfg))
                    if us is not None:
                        times.append((us, c))
                d_us, d_err = try_us(call)
                best = min(times) if times else None
                out.append({"sweep": f"skinny_{mode}", "layer": name, "m": m,
                            "default": launch_config(n, k, mode == "w8a8", False),
                            "default_us": d_us, "best": best[1] if best else None,
                            "best_us": best[0] if best else None, "all": times,
                            "error": d_err})
                d = "FAILED " + d_err if d_us is None else f"{d_us:6.1f} us {n * k / d_us / 1e3:5.0f} GB/s"
                b = ("none compiled" if best is None else
                     f"{best[0]:6.1f} us {n * k / best[0] / 1e3:5.0f} GB/s with (BLOCK_N, BLOCK_K, "
                     f"warps, stages, SPLIT_K) = {best[1]}")
                print(f"sweep skinny_{mode:5} {name:8} M={m:<2d} default {d} | best {b}", flush=True)


def sweep(out: list[dict[str, Any]]) -> None:
    """M = 1: each GEMV over a few (BLOCK_N, BLOCK_K, num_warps), per shape."""
    from inflight.kernels import fp8_gemv, w4a16_matmul
    from inflight.kernels._common import num_sms
    from inflight.kernels.fp8_gemv import launch_config
    from inflight.kernels.w4a16 import gemv_config
    from inflight.model.quant.fp8 import per_channel_fp8
    from inflight.model.quant.int4 import pack_nibbles, rtn_int4

    sms = num_sms(torch.device(DEV))
    for name, n, k in shapes():
        wb = (torch.randn(n, k, device=DEV) * 0.02).bfloat16()
        q8, s8 = per_channel_fp8(wb)
        codes, sc, z = rtn_int4(wb, GROUP)
        q4, sc4, z4 = pack_nibbles(codes), sc.bfloat16(), z
        x = torch.randn(1, k, device=DEV, dtype=torch.bfloat16)
        kernels = (
            ("fp8_gemv", [c + (1, False) for c in FP8_SWEEP] + [c + (False,) for c in FP8_SPLIT_SWEEP]
             + [c + (True,) for c in FP8_ACC_SWEEP], launch_config(1, n, k, sms, False, False),
             n * k, partial(fp8_gemv, x, q8, s8)),
            ("w4a16_gemv", [c + (v, False) for c in INT4_SWEEP for v in (False, True)]
             + [c + (True, True) for c in INT4_SWEEP],
             gemv_config(1, n, k, GROUP, sms, False), n * k / 2,
             partial(w4a16_matmul, x, q4, sc4, z4, GROUP)),
        )
        for kernel, configs, default, nbytes, call in kernels:
            times = []
            for c in configs:
                cfg = {"BLOCK_N": c[0], "BLOCK_K": c[1], "num_warps": c[2]}
                if kernel == "w4a16_gemv":
                    cfg["X_VEC"], cfg["ACC_K"] = c[3], c[4]
                else:
                    cfg["SPLIT_K"], cfg["ACC_K"] = c[3], c[4]
                us, _ = try_us(partial(call, config=cfg))
                if us is not None:
                    times.append((us, c))
            d_us, d_err = try_us(call)
            best = min(times) if times else None
            out.append({"sweep": kernel, "layer": name, "default": default, "default_us": d_us,
                        "best": best[1] if best else None, "best_us": best[0] if best else None,
                        "all": times})
            d = "FAILED " + d_err if d_us is None else f"{d_us:6.1f} us {nbytes / d_us / 1e3:5.0f} GB/s"
            b = ("none compiled" if best is None else
                 f"{best[0]:6.1f} us {nbytes / best[0] / 1e3:5.0f} GB/s with (BLOCK_N, BLOCK_K, warps"
                 f"{', X_VEC, ACC_K' if kernel == 'w4a16_gemv' else ', SPLIT_K, ACC_K'}) = {best[1]}")
            dflt = (default["BLOCK_N"], default["BLOCK_K"], default["num_warps"]) + (
                (default["X_VEC"], default.get("ACC_K", False)) if "X_VEC" in default
                else (default.get("SPLIT_K", 1), default.get("ACC_K", False)))
            print(f"sweep {kernel:10} {name:8} M=1 default {dflt} {d} | best {b}", flush=True)


def shapes() -> list[tuple[str, int, int]]:
    if DEV == "cpu":  # --dry-run: same names, tiny sizes (odd N)
        return [("qkv", 48, 256), ("o", 40, 128), ("gate_up", 72, 128), ("down", 24, 384)]
    return SHAPES


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--m", default="1,16,128,1024,4096", help="comma-separated batch rows")
    ap.add_argument("--layers", default=",".join(s[0] for s in SHAPES))
    ap.add_argument("--sweep", action="store_true", help="also sweep the M=1 GEMV configs")
    ap.add_argument("--sweep-skinny", action="store_true",
                    help="also sweep the tensor-core kernel's configs (M = 1 and 16)")
    ap.add_argument("--json", default="", help="write the rows here")
    ap.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU (interpreter)")
    args = ap.parse_args()
    global DEV
    if args.dry_run:
        DEV = "cpu"
        args.m = "1,3,20"
    torch.manual_seed(0)
    dev_name = torch.cuda.get_device_name() if DEV == "cuda" else "cpu (dry run)"
    print(f"# {dev_name}  torch {torch.__version__}  triton {triton.__version__}")
    rows: list[dict[str, Any]] = []
    ms = [int(v) for v in args.m.split(",") if v]

    def save() -> None:  # after each layer: a step cut by its timeout keeps what it measured
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1, default=str)

    for name, n, k in shapes():
        if ms and name in args.layers.split(","):
            layer_rows(name, n, k, ms, rows)
            save()
    if args.sweep_skinny:
        sweep_skinny(rows)
        save()
    if args.sweep:
        sweep(rows)
        save()
    from inflight.model.quant.base import KernelGuard

    if KernelGuard.failed:
        print(f"# kernels that fell back to torch: {KernelGuard.failed}")


if __name__ == "__main__":
    main()
