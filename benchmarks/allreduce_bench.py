"""All-reduce latency between the GPUs of one host, as tensor parallelism uses it (issue 15).

Each decode step of a TP=N Llama runs two all-reduces per layer (after o_proj and down_proj)
on a [batch, hidden] tensor, inside the step's CUDA graph. This measures one all-reduce of
that shape inside a CUDA graph (64 back to back, like the 8B's 32 layers x 2), for NCCL (what
``model/parallel.py`` uses) and, when this torch has it, symmetric memory's one-shot and
two-shot all-reduce over NVLink peer access (no multicast: keep
TORCH_SYMM_MEM_DISABLE_MULTICAST=1 and NCCL_NVLS_ENABLE=0 set).

    python benchmarks/allreduce_bench.py            # spawns one process per visible GPU
    python benchmarks/allreduce_bench.py --hidden 8192 --batches 1,8,64,256

Prints one line per (method, batch): microseconds per all-reduce and the bus bandwidth.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

REPS = 64


def _graph_time(fn, iters: int = 20) -> float:
    """Microseconds per call of fn, captured REPS times in one CUDA graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(REPS):
            fn()
    g.replay()
    torch.cuda.synchronize()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        g.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / (iters * REPS) * 1e6


def _worker(rank: int, world: int, port: int, args: argparse.Namespace) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world, device_id=torch.device("cuda", rank))
    group = dist.group.WORLD
    if rank == 0:
        print(f"process group up: {world} ranks", flush=True)
    symm = None
    try:
        import torch.distributed._symmetric_memory as symm_mem

        symm = symm_mem
        symm_mem.enable_symm_mem_for_group(group.group_name)
    except Exception as e:  # noqa: BLE001 - older torch: NCCL only
        if rank == 0:
            print(f"symmetric memory unavailable: {type(e).__name__}: {e}", flush=True)
    for b in (int(x) for x in args.batches.split(",")):
        x = torch.randn(b, args.hidden, dtype=torch.bfloat16, device="cuda")
        nbytes = x.numel() * x.element_size()
        rows = {"nccl": lambda x=x: dist.all_reduce(x)}
        if symm is not None:
            buf = symm.empty(b, args.hidden, dtype=torch.bfloat16, device="cuda")
            symm.rendezvous(buf, group.group_name)
            rows["symm one-shot"] = lambda buf=buf: torch.ops.symm_mem.one_shot_all_reduce(buf, "sum", group.group_name)
            rows["symm one-shot copy"] = (lambda buf=buf, x=x: torch.ops.symm_mem.one_shot_all_reduce_copy(
                buf, x, "sum", group.group_name))
            rows["symm two-shot"] = lambda buf=buf: torch.ops.symm_mem.two_shot_all_reduce_(buf, "sum", group.group_name)
        for name, fn in rows.items():
            try:
                us = _graph_time(fn)
            except Exception as e:  # noqa: BLE001
                if rank == 0:
                    print(f"{name:14s} batch {b:4d}: failed: {type(e).__name__}: {str(e)[:200]}")
                continue
            if rank == 0:
                busbw = 2 * (world - 1) / world * nbytes / us / 1e3
                print(f"{name:14s} batch {b:4d} ({nbytes / 1024:8.1f} KiB): {us:8.2f} us per all-reduce, "
                      f"bus {busbw:7.1f} GB/s", flush=True)
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=4096, help="hidden size (8B: 4096, 70B: 8192)")
    p.add_argument("--batches", default="1,8,64,256,1024", help="rows per all-reduce")
    args = p.parse_args()
    world = torch.cuda.device_count()
    if world < 2:
        sys.exit("needs at least 2 visible GPUs")
    # never NVLink multicast (shared machines): forced, whatever the caller's environment says
    os.environ.update(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1")
    port = 29000 + os.getpid() % 1000
    mp.spawn(_worker, args=(world, port, args), nprocs=world)


if __name__ == "__main__":
    main()
