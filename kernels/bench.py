"""Time each Triton kernel against its torch reference on a GPU (Llama-3.1-8B shapes).

    python -m inflight.kernels.bench [--dtype bf16|fp16] [--only NAME]

32 query heads, 8 kv heads, head dim 128, hidden 4096, intermediate 14336, block size 16.
Times are medians in microseconds. "graph" is the kernel's GPU time (launches replayed
from a CUDA graph, ``do_bench_cudagraph``); "eager" times a plain call (``do_bench``), which
includes the Python launcher's host overhead when that exceeds the GPU time, and is what
the torch reference is timed with (its loops sync with the host, so it cannot be graphed);
speedup = torch eager / triton eager, except for gemv, whose cuBLAS reference is graphed
too ("torch us" is then its graph time and speedup compares graph times). GB/s and TFLOP/s
use the graph time; GB/s counts each input read once and each output written once, TFLOP/s
the causal attention matmuls.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial as P

import torch

HQ, HKV, D, HIDDEN, INTER, BLOCK = 32, 8, 128, 4096, 14336, 16


@dataclass
class Row:
    name: str
    shape: str
    kernel: Callable[[], object]
    ref: Callable[[], object]
    nbytes: float = 0.0  # bytes moved at least once
    flops: float = 0.0
    graph_ref: bool = False  # the reference can be graphed too: time both from graphs


def _paged(lq: list[int], lens: list[int], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A random paged cache and metadata tensors for requests (new tokens, context)."""
    dev = "cuda"
    nblk = [-(-n // BLOCK) for n in lens]
    perm = torch.randperm(sum(nblk) + 8, device=dev).int()
    table = torch.zeros(len(lens), max(nblk), dtype=torch.int32, device=dev)
    start = 0
    for b, n in enumerate(nblk):
        table[b, :n] = perm[start : start + n]
        start += n
    cache = torch.randn(2, sum(nblk) + 8, BLOCK, HKV, D, device=dev, dtype=dtype)
    qsl = torch.tensor([0] + torch.tensor(lq).cumsum(0).tolist(), dtype=torch.int32, device=dev)
    return {
        "q": torch.randn(sum(lq), HQ, D, device=dev, dtype=dtype), "k_cache": cache[0],
        "v_cache": cache[1], "block_tables": table, "query_start_loc": qsl,
        "seq_lens": torch.tensor(lens, dtype=torch.int32, device=dev),
    }


def attention_rows(dtype: torch.dtype) -> list[Row]:
    from inflight import kernels as K

    rows, scale, esize = [], D**-0.5, torch.finfo(dtype).bits // 8
    for b, ctx in [(1, 32768), (8, 8192), (64, 2048), (256, 1024)]:
        p = _paged([1] * b, [ctx] * b, dtype)
        args = (p["q"], p["k_cache"], p["v_cache"], p["block_tables"], p["seq_lens"], scale)
        rows.append(Row(
            "paged_decode_attention", f"B={b} ctx={ctx}",
            P(K.paged_decode_attention, *args, max_seq_len=ctx),
            P(K.paged_decode_attention_ref, *args),
            nbytes=2 * b * ctx * HKV * D * esize, flops=4 * b * ctx * HQ * D))
    for lq, lens in [([2048], [2048]), ([512] * 4, [512] * 4), ([512], [16384]),
                     ([8192], [8192])]:
        p = _paged(lq, lens, dtype)
        pargs = (p["q"], p["k_cache"], p["v_cache"], p["query_start_loc"], p["seq_lens"],
                 p["block_tables"], scale)
        pairs = sum(q * (n - q) + q * (q + 1) // 2 for q, n in zip(lq, lens, strict=True))
        rows.append(Row(
            "paged_prefill_attention", f"Lq={lq[0]}x{len(lq)} ctx={lens[0]}",
            P(K.paged_prefill_attention, *pargs, max_query_len=max(lq)),
            P(K.attention_ref, *pargs), flops=4 * pairs * HQ * D))
    return rows


def elementwise_rows(dtype: torch.dtype) -> list[Row]:
    from inflight import kernels as K

    dev, esize, rows = "cuda", torch.finfo(dtype).bits // 8, []
    for t in [1, 256, 4096]:
        x = torch.randn(t, HIDDEN, device=dev, dtype=dtype)
        res, w = torch.randn_like(x), torch.randn(HIDDEN, device=dev, dtype=dtype)
        n = x.numel() * esize
        rows.append(Row("rms_norm", f"T={t} H={HIDDEN}", P(K.rms_norm, x, w, 1e-5),
                        P(K.rms_norm_ref, x, w, 1e-5), nbytes=2 * n))
        rows.append(Row("add_rms_norm", f"T={t} H={HIDDEN}", P(K.add_rms_norm, x, res, w, 1e-5),
                        P(K.add_rms_norm_ref, x, res, w, 1e-5), nbytes=4 * n))
        g = torch.randn(t, 2 * INTER, device=dev, dtype=dtype)
        rows.append(Row("silu_and_mul", f"T={t} I={INTER}", P(K.silu_and_mul, g),
                        P(K.silu_and_mul_ref, g), nbytes=1.5 * g.numel() * esize))
        q = torch.randn(t, HQ, D, device=dev, dtype=dtype)
        k = torch.randn(t, HKV, D, device=dev, dtype=dtype)
        pos = torch.randint(0, 8192, (t,), device=dev)
        cs = torch.randn(8192, D, device=dev)
        rows.append(Row("rotary_embedding", f"T={t} Hq={HQ} Hkv={HKV}",
                        P(K.rotary_embedding, pos, q, k, cs),
                        P(K.rotary_embedding_ref, pos, q, k, cs),
                        nbytes=2 * (q.numel() + k.numel()) * esize))
        kc = torch.empty(t // BLOCK + 1, BLOCK, HKV, D, device=dev, dtype=dtype)
        vc, slots = torch.empty_like(kc), torch.randperm(kc.shape[0] * BLOCK, device=dev)[:t]
        rows.append(Row("kv_cache_write", f"T={t} Hkv={HKV}",
                        P(K.kv_cache_write, k, k, kc, vc, slots),
                        P(K.kv_cache_write_ref, k, k, kc, vc, slots), nbytes=4 * k.numel() * esize))
    return rows


def gemv_rows(dtype: torch.dtype) -> list[Row]:
    """Decode-sized linear layers of Llama-3.1-8B (qkv, o, gate_up, down, lm_head) against
    cuBLAS (F.linear), both timed from CUDA graphs."""
    from inflight import kernels as K

    dev, esize, rows = "cuda", torch.finfo(dtype).bits // 8, []
    for n, k, what in [(6144, HIDDEN, "qkv"), (HIDDEN, HIDDEN, "o"), (2 * INTER, HIDDEN, "gate_up"),
                       (HIDDEN, INTER, "down"), (128256, HIDDEN, "lm_head")]:
        w = torch.randn(n, k, device=dev, dtype=dtype)
        for m in (1, 4):
            x = torch.randn(m, k, device=dev, dtype=dtype)
            rows.append(Row("gemv", f"{what} M={m} N={n} K={k}", P(K.gemv, x, w), P(K.gemv_ref, x, w),
                            nbytes=w.numel() * esize, graph_ref=True))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    ap.add_argument("--only", default="", help="substring of the kernel names to run")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("inflight.kernels.bench needs a CUDA GPU (torch.cuda.is_available() is False); "
              "the kernels' correctness tests run on CPU: pytest tests/kernels",
              file=sys.stderr)
        return 2
    import triton.testing

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    torch.manual_seed(0)
    print(f"# {torch.cuda.get_device_name()}  torch {torch.__version__}  "
          f"triton {triton.__version__}  {args.dtype}")
    print(f"{'kernel':24} {'shape':22} {'graph us':>9} {'eager us':>9} {'torch us':>10} "
          f"{'speedup':>8} {'GB/s':>6} {'TFLOP/s':>8}")
    for row in elementwise_rows(dtype) + attention_rows(dtype) + gemv_rows(dtype):
        if args.only not in row.name:
            continue
        t_g = triton.testing.do_bench_cudagraph(row.kernel, return_mode="median") * 1e3
        t_k = triton.testing.do_bench(row.kernel, return_mode="median") * 1e3
        t_r = (triton.testing.do_bench_cudagraph(row.ref, return_mode="median") * 1e3 if row.graph_ref
               else triton.testing.do_bench(row.ref, warmup=5, rep=50, return_mode="median") * 1e3)
        gbs = f"{row.nbytes / t_g / 1e3:6.0f}" if row.nbytes else f"{'':6}"
        tfs = f"{row.flops / t_g / 1e6:8.1f}" if row.flops else f"{'':8}"
        speedup = t_r / (t_g if row.graph_ref else t_k)
        print(f"{row.name:24} {row.shape:22} {t_g:9.1f} {t_k:9.1f} {t_r:10.1f} "
              f"{speedup:7.2f}x {gbs} {tfs}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
