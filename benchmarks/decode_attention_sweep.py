"""Launch-config sweep of the paged decode attention kernel on a GPU (Llama-3.1-8B heads).

    python benchmarks/decode_attention_sweep.py [--shapes 1x32768,64x2048,384x1536]
        [--variants bf16,fp8,fp8-fp16,fp8-fp16-vt,fp8-fp16-pairs] [--json OUT.json] [--dry-run]

For each cache variant (``bf16``: a bf16 cache; ``fp8``: an e4m3 cache read with bf16 dots;
``fp8-fp16`` / ``fp8-fp16-vt`` / ``fp8-fp16-pairs``: the ``fp8_kv_dots`` choices) and each batch x
context shape, the GPU time of ``paged_decode_attention`` (a CUDA graph of the call,
``triton.testing.do_bench_cudagraph``: what a decode step replays) over BLOCK_N x num_warps
x num_stages, with the KV bytes read per second. Prints, per variant, every shape's best
config beside the default (``launch_config`` in kernels/paged_decode_attention.py), then
the one config with the best geometric-mean time over all shapes: the candidate default.
A config whose output differs from the default's by more than 2 % of its largest value is
reported and skipped.

32 query heads, 8 KV heads, head dim 128, 16-token cache blocks in a random block table;
every request of a shape has the same context.

--dry-run runs each variant once with two configs on tiny shapes on the CPU (the kernels
in Triton's interpreter) to check the script itself; its times mean nothing.
"""

from __future__ import annotations

import os
import sys

if "--dry-run" in sys.argv:  # before triton is imported: it reads TRITON_INTERPRET once
    os.environ["TRITON_INTERPRET"] = "1"

import argparse  # noqa: E402
import functools  # noqa: E402
import importlib  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import triton.testing  # noqa: E402

HQ, HKV, D, BLOCK = 32, 8, 128, 16
VARIANTS = {  # name: (cache dtype, fp8_kv_dots)
    "bf16": (torch.bfloat16, "bf16"), "fp8": (torch.float8_e4m3fn, "bf16"),
    "fp8-fp16": (torch.float8_e4m3fn, "fp16"), "fp8-fp16-vt": (torch.float8_e4m3fn, "fp16-vt"),
    "fp8-fp16-pairs": (torch.float8_e4m3fn, "fp16-pairs"),
}
DEFAULT_SHAPES = "1x32768,8x8192,64x2048,256x160,256x1024,384x1536"
CONFIGS = [{"block_n": n, "num_warps": w, "num_stages": s}
           for n, w, s in itertools.product((32, 64, 128), (4, 8), (2, 3))]


def paged_case(batch: int, ctx: int, cache_dtype: torch.dtype, device: str) -> dict[str, object]:
    """Random queries and a random paged cache of ``batch`` requests of ``ctx`` tokens."""
    g = torch.Generator(device="cpu").manual_seed(batch * 100003 + ctx)
    nblk = -(-ctx // BLOCK)
    table = torch.randperm(batch * nblk, generator=g).int().reshape(batch, nblk).to(device)
    cache = torch.randn(2, batch * nblk, BLOCK, HKV, D, generator=g).to(device)
    if cache_dtype == torch.float8_e4m3fn:
        cache = (cache * 64).to(cache_dtype)  # a spread of e4m3 exponents
    else:
        cache = cache.to(cache_dtype)
    return {"q": torch.randn(batch, HQ, D, generator=g).to(device, torch.bfloat16),
            "k_cache": cache[0], "v_cache": cache[1], "block_tables": table,
            "seq_lens": torch.full((batch,), ctx, dtype=torch.int32, device=device)}


def time_us(fn, dry: bool) -> float:
    if dry:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e6
    return triton.testing.do_bench_cudagraph(fn, rep=50) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default=DEFAULT_SHAPES, help="BATCHxCONTEXT,... (default: %(default)s)")
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help=f"comma-separated, from {', '.join(VARIANTS)} (default: all)")
    ap.add_argument("--json", default="", help="write every timing here")
    ap.add_argument("--dry-run", action="store_true", help="tiny CPU run of the script itself")
    args = ap.parse_args()
    from inflight import kernels as K
    pda = importlib.import_module("inflight.kernels.paged_decode_attention")  # the module

    dry = args.dry_run
    device = "cpu" if dry else "cuda"
    try:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        assert all(len(s) == 2 and min(s) > 0 for s in shapes)
    except (ValueError, AssertionError):
        ap.error(f"--shapes must be BATCHxCONTEXT,... with positive numbers, got {args.shapes!r}")
    variants = args.variants.split(",")
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown --variants {bad}: choose from {', '.join(VARIANTS)}")
    configs = CONFIGS[:2] if dry else CONFIGS
    if dry:
        shapes = [(2, 40), (1, 70)]
    results: list[dict[str, object]] = []
    for name in variants:
        cache_dtype, dots = VARIANTS[name]
        default = pda.launch_config(cache_dtype)
        print(f"== {name} (cache {str(cache_dtype).split('.')[-1]}, dots {dots}); "
              f"default {default}")
        times: dict[tuple[int, int], dict[int, float]] = {}
        for shape in shapes:
            case = paged_case(*shape, cache_dtype, device)
            nbytes = 2 * shape[0] * shape[1] * HKV * D * case["k_cache"].element_size()
            row = times.setdefault(shape, {})
            attend = functools.partial(
                K.paged_decode_attention, case["q"], case["k_cache"], case["v_cache"],
                case["block_tables"], case["seq_lens"], D**-0.5, max_seq_len=shape[1],
                fp8_kv_dots=dots)
            ref = attend().float()
            for i, cfg in enumerate(configs):
                call = functools.partial(attend, launch=cfg)
                try:
                    err = ((call().float() - ref).abs().max() / ref.abs().max()).item()
                    if not err <= 0.02:  # NaN included
                        print(f"  {shape} {cfg}: WRONG, max error {err:.3g} of the default's "
                              "largest output")
                        continue
                    row[i] = time_us(call, dry)
                except Exception as e:  # noqa: BLE001 - a config that fails is reported, not fatal
                    print(f"  {shape} {cfg}: FAILED {type(e).__name__}: {str(e)[:120]}")
                    continue
                results.append({"variant": name, "batch": shape[0], "context": shape[1], **cfg,
                                "us": row[i], "tb_s": nbytes / row[i] / 1e6})
            dflt = time_us(attend, dry)
            if row:
                best = min(row, key=row.get)
                print(f"  B={shape[0]:<4} ctx={shape[1]:<6} default {dflt:8.1f} us "
                      f"({nbytes / dflt / 1e6:5.2f} TB/s) | best {row[best]:8.1f} us "
                      f"({nbytes / row[best] / 1e6:5.2f} TB/s) {configs[best]}")
        complete = [i for i in range(len(configs)) if all(i in r for r in times.values())]
        if complete:
            geo = {i: math.exp(sum(math.log(r[i]) for r in times.values()) / len(times))
                   for i in complete}
            best = min(geo, key=geo.get)
            print(f"  one config for all shapes: {configs[best]} (geomean {geo[best]:.1f} us)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": "cpu (dry run)" if dry else torch.cuda.get_device_name(),
                       "results": results}, f, indent=1)
        print(f"JSON {args.json}")


if __name__ == "__main__":
    main()
