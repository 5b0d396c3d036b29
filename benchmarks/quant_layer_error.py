"""Per-layer relative error and speed of the quantized linear paths on Llama-3.1-8B shapes (GPU).

    python benchmarks/quant_layer_error.py

For each decoder linear shape (qkv, o, gate_up, down) and batch M in (1, 16, 256): relative
Frobenius error of FP8 W8A8 (torch._scaled_mm, per-channel weights, per-token activations)
and INT4 w4a16 (AWQ-style RTN, group 128, Triton kernel) against the bf16 product, and the
median time of each (triton.testing.do_bench) next to bf16 F.linear. Weights N(0, 0.02) with
1% of input channels scaled x20 (outliers as in trained LLMs), activations N(0, 1).
"""

from __future__ import annotations

import argparse
import sys
from functools import partial

import torch
import triton.testing
from inflight.kernels import w4a16_matmul
from inflight.model.quant.fp8 import fp8_linear_cuda, per_channel_fp8
from inflight.model.quant.int4 import pack_nibbles, rtn_int4

SHAPES = [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336)]


def main() -> None:
    torch.manual_seed(0)
    dev = "cuda"
    print(f"# {torch.cuda.get_device_name()}")
    print(f"{'layer':8} {'M':>4} {'fp8 rel err':>12} {'int4 rel err':>13} {'bf16 us':>8} {'fp8 us':>8} {'int4 us':>8}")
    for name, n, k in SHAPES:
        w = torch.randn(n, k, device=dev) * 0.02
        w[:, torch.randperm(k, device=dev)[: k // 100]] *= 20
        wb = w.bfloat16()
        q8, s8 = per_channel_fp8(wb)
        codes, sc, z = rtn_int4(wb, 128)
        q4, sc4, z4 = pack_nibbles(codes), sc.bfloat16(), z
        for m in (1, 16, 256):
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            ref = x.float() @ wb.float().t()
            e8 = ((fp8_linear_cuda(x, q8, s8, None).float() - ref).norm() / ref.norm()).item()
            e4 = ((w4a16_matmul(x, q4, sc4, z4, 128).float() - ref).norm() / ref.norm()).item()
            t = [triton.testing.do_bench(f, return_mode="median") * 1e3 for f in (
                partial(torch.nn.functional.linear, x, wb), partial(fp8_linear_cuda, x, q8, s8, None),
                partial(w4a16_matmul, x, q4, sc4, z4, 128))]
            print(f"{name:8} {m:4d} {e8:12.4f} {e4:13.4f} {t[0]:8.1f} {t[1]:8.1f} {t[2]:8.1f}", flush=True)


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    if not torch.cuda.is_available():
        sys.exit("quant_layer_error.py needs a CUDA GPU (the FP8 and INT4 kernels run there)")
    main()
