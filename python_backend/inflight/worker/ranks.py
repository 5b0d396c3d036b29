"""Tensor-parallel ranks: start, rendezvous, per-step broadcast, supervision (docs/parallelism.md).

Rank 0 is the engine's own ModelRunner and drives; ranks 1..N-1 are worker processes that run
the same forward pass on their slice of the weights. Rendezvous is torch.distributed's: a
``TCPStore`` hosted by rank 0 at MASTER_ADDR:MASTER_PORT (torchrun's variables; on one machine
loopback and a free port), a gloo (CPU) or NCCL (GPU) process group for the model's
collectives. Each step rank 0 sends the ``StepPlan`` bytes to every worker over a ZeroMQ
PUSH/PULL pair (idle workers wait there without a collective that could time out) and, when
overlapped scheduling patched input tokens on the device, broadcasts ``input_ids`` through
the process group. Sampling happens on rank 0 only: every rank all-gathers the logits.

Start-up runs through the store with liveness checks at every wait, so a rank that fails to
start (or dies) is a ConfigError naming it, not a hang: hello/r (connected) -> process group ->
blocks/r (each rank's KV block count; rank 0 sets the minimum) -> ready/r. A worker writes its
exception to error/r before it exits.

Local ranks are spawned with the parent's interpreter, environment (inherited, never rebuilt:
NCCL_NVLS_ENABLE=0 and friends stay set) and ``sys.path``, each by its own thread that then
waits on it: ``PR_SET_PDEATHSIG`` is tied to that thread, which lives as long as the child, and
the child also checks ``getppid()`` whenever it is idle. A dead rank is seen before the next
step (its waiter thread records the exit) and the engine fails its requests.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import struct
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from typing import Any

import torch

from inflight import env
from inflight.child_boot import boot_script
from inflight.config import EngineConfig, ModelConfig
from inflight.errors import ConfigError
from inflight.model.parallel import TensorParallel, check_tensor_parallel

log = logging.getLogger(__name__)

_STEP, _STOP = 1, 2
_HEAD = struct.Struct("<BB")  # command, input_ids patched on the device

BOOT = boot_script("'inflight-tp%d' % spec['rank']", "inflight.worker.ranks:worker_main")


class RankError(RuntimeError):
    """A tensor-parallel rank died or stopped answering; the engine fails its requests."""


def rank_device(device: str, local_rank: int) -> torch.device:
    """The device of a rank: ``cuda:LOCAL_RANK`` on GPU (choose GPUs with CUDA_VISIBLE_DEVICES)."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    return torch.device("cuda", local_rank)


def check_start(cfg: EngineConfig, mc: ModelConfig) -> None:
    """Every check that can fail before a process starts: the model splits evenly, there are
    enough GPUs, no quantized format (TP=1 only for now)."""
    n = cfg.tensor_parallel_size
    check_tensor_parallel(n, mc)
    if cfg.device.startswith("cuda:"):
        raise ConfigError(f"device {cfg.device!r} with tensor_parallel_size {n}: rank r uses "
                          "cuda:r; choose the GPUs with CUDA_VISIBLE_DEVICES and set device=cuda")
    if rank_device(cfg.device, 0).type == "cuda":
        local = env.tp_local_ranks(n)
        visible = torch.cuda.device_count()
        if local > visible:
            raise ConfigError(f"tensor_parallel_size {n} needs {local} GPUs on this machine but "
                              f"{visible} are visible (CUDA_VISIBLE_DEVICES)")
    from inflight.model.quant import resolve

    if resolve(cfg.quantization, cfg.model, cfg.load_format) is not None:
        raise ConfigError(f"quantized weights (quantization={cfg.quantization}) run with "
                          f"tensor_parallel_size 1 only; got {n}")


def _process_group(store: Any, rank: int, size: int, device: torch.device, timeout: float) -> Any:
    """A c10d ``ProcessGroup`` over the store with one backend (NCCL on GPU, gloo on CPU), made
    the way torch.distributed makes its own, but outside its global registry (several engines
    may live in one process). A ``ProcessGroup``, not the bare backend, so that it can be
    registered by name for the symmetric-memory ops (model/parallel.py)."""
    import torch.distributed as dist
    from torch._C._distributed_c10d import ProcessGroup

    td = datetime.timedelta(seconds=timeout)
    pstore = dist.PrefixStore("pg", store)
    if device.type == "cuda":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = td
        backend, kind = dist.ProcessGroupNCCL(pstore, rank, size, opts), ProcessGroup.BackendType.NCCL
    else:
        backend, kind = dist.ProcessGroupGloo(pstore, rank, size, td), ProcessGroup.BackendType.GLOO
    pg = ProcessGroup(pstore, rank, size)
    pg._set_default_backend(kind)
    pg._register_backend(torch.device(device.type), kind, backend)
    return pg


class _Link:
    """What both sides share: the store, the process group, the rank's view."""

    store: Any
    tp: TensorParallel
    device: torch.device
    timeout: float
    all_reduce: str  # "nccl" | "symm" (env.tp_all_reduce, decided by rank 0)

    def _key(self, key: str, deadline: float, alive: Any) -> bytes:
        """store[key], polled (every 1..50 ms) while ``alive()`` stays True (raises otherwise).
        Polled, not store.wait(timeout): c10d logs a warning for every wait that times out."""
        pause = 0.001
        while True:
            if self.store.check([key]):
                return self.store.get(key)  # type: ignore[no-any-return]
            alive()
            if time.monotonic() > deadline:
                raise ConfigError(f"tensor parallel start-up: no {key!r} after {self.timeout:.0f} s "
                                  "(INFLIGHT_TP_TIMEOUT_S)")
            time.sleep(pause)
            pause = min(pause * 2, 0.05)


class RankGroup(_Link):
    """Rank 0's side: owns the store, the worker processes and the control sockets."""

    driver = True

    def __init__(self, cfg: EngineConfig, max_seq_len: int) -> None:
        import torch.distributed as dist
        import zmq

        n = self.n = cfg.tensor_parallel_size
        self.timeout = env.tp_timeout_s()
        self.device = rank_device(cfg.device, 0)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        addr, port = env.tp_master()
        self.store = dist.TCPStore(addr, port, n, is_master=True, wait_for_workers=False,
                                   timeout=datetime.timedelta(seconds=self.timeout))
        self.all_reduce = env.tp_all_reduce()
        self.store.set("config", json.dumps({"config": asdict(cfg), "max_seq_len": max_seq_len,
                                             "all_reduce": self.all_reduce}))
        self.ctx = zmq.Context()
        self.socks = []
        for r in range(1, n):
            s = self.ctx.socket(zmq.PUSH)
            s.setsockopt(zmq.SNDHWM, 0)
            s.setsockopt(zmq.LINGER, 0)
            bind = "127.0.0.1" if addr in ("127.0.0.1", "localhost") else "*"
            p = s.bind_to_random_port(f"tcp://{bind}")
            self.store.set(f"ctl/{r}", f"tcp://{addr}:{p}")
            self.socks.append(s)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.died = threading.Event()  # set when a local rank exits
        self._lock = threading.Lock()
        self._stopped = False
        local = env.tp_local_ranks(n)
        for r in range(1, local):
            self._spawn({"rank": r, "local_rank": r, "world": n, "addr": addr,
                         "port": self.store.port, "parent": os.getpid(), "sys_path": list(sys.path)})
        try:
            deadline = time.monotonic() + self.timeout
            for r in range(1, n):
                self._key(f"hello/{r}", deadline, self._starting)
            pg = _process_group(self.store, 0, n, self.device, self.timeout)
            self.tp = TensorParallel(0, n, 0, pg, self.store, f"{addr}:{self.store.port}")
        except BaseException:
            self.stop()
            raise
        log.info("tensor parallel: %d ranks (%d on this machine), %s", n, local,
                 "NCCL" if self.device.type == "cuda" else "gloo")

    def _spawn(self, spec: dict[str, Any]) -> None:
        started = threading.Event()
        error: list[BaseException] = []

        def run() -> None:  # spawns and waits: PDEATHSIG is tied to this thread
            try:
                p = subprocess.Popen([sys.executable, "-c", BOOT, json.dumps(spec)])
            except BaseException as e:  # noqa: BLE001
                error.append(e)
                started.set()
                return
            with self._lock:
                self.procs[spec["rank"]] = p
            started.set()
            p.wait()
            self.died.set()

        threading.Thread(target=run, name=f"inflight-tp{spec['rank']}-waiter", daemon=True).start()
        started.wait()
        if error:
            raise ConfigError(f"cannot start tensor parallel rank {spec['rank']}: {error[0]}")

    def check_alive(self) -> None:
        """RankError (ConfigError during start-up) naming a local rank that exited."""
        for r, p in sorted(self.procs.items()):
            if p.returncode is not None:
                why = self.store.get(f"error/{r}").decode() if self.store.check([f"error/{r}"]) else ""
                msg = (f"tensor parallel rank {r} exited with code {p.returncode}"
                       + (f": {why}" if why else " (its log is on stderr)"))
                raise RankError(msg)
        for r in range(1, self.n):
            if self.store.check([f"error/{r}"]):
                raise RankError(f"tensor parallel rank {r} failed: {self.store.get(f'error/{r}').decode()}")

    def _starting(self) -> None:
        try:
            self.check_alive()
        except RankError as e:
            raise ConfigError(f"{e}") from None

    def agree_blocks(self, blocks: int) -> int:
        """The KV block count every rank can hold: the minimum of the ranks' counts."""
        deadline = time.monotonic() + self.timeout
        counts = [blocks] + [int(self._key(f"blocks/{r}", deadline, self._starting))
                             for r in range(1, self.tp.size)]
        agreed = min(counts)
        self.store.set("blocks", str(agreed))
        log.info("tensor parallel: KV blocks per rank %s -> %d", counts, agreed)
        return agreed

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        for r in range(1, self.tp.size):
            self._key(f"ready/{r}", deadline, self._starting)

    def send_step(self, plan_bytes: bytes, input_ids: torch.Tensor | None) -> None:
        """Before rank 0's forward: the plan to every worker; ``input_ids`` (patched on the
        device by overlapped scheduling) through the process group."""
        if self.died.is_set():
            self.check_alive()
        head = _HEAD.pack(_STEP, input_ids is not None)
        for s in self.socks:
            s.send_multipart([head, plan_bytes], copy=False)
        if input_ids is not None:
            self.tp.broadcast(input_ids)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask every worker to exit, wait, kill what is left. Idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        import zmq

        for s in self.socks:
            try:
                s.send_multipart([_HEAD.pack(_STOP, 0), b""], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        tp = getattr(self, "tp", None)
        aborted = True
        if tp is not None and self.device.type == "cuda":
            aborted = tp.abort(timeout)  # with the workers, which abort on _STOP
        for p in list(self.procs.values()):
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
        for s in self.socks:
            s.close(0)
        self.ctx.term()
        if not aborted:
            log.warning("tensor parallel: the NCCL communicators did not abort within %.0f s "
                        "(a rank exited without aborting its own?)", timeout)


def start_ranks(cfg: EngineConfig, mc: ModelConfig, max_seq_len: int) -> RankGroup | None:
    """None for tensor_parallel_size 1; else checks everything, then starts the ranks."""
    if cfg.tensor_parallel_size == 1:
        return None
    check_start(cfg, mc)
    return RankGroup(cfg, max_seq_len)


# ---- the worker side -------------------------------------------------------------------------
class RankWorker(_Link):
    driver = False

    def __init__(self, rank: int, local_rank: int, world: int, addr: str, port: int,
                 parent: int | None) -> None:
        import torch.distributed as dist
        import zmq

        self.rank, self.parent = rank, parent
        self.timeout = env.tp_timeout_s()
        self.store = dist.TCPStore(addr, port, world, is_master=False,
                                   timeout=datetime.timedelta(seconds=self.timeout))
        spec = json.loads(self.store.get("config"))
        self.cfg = EngineConfig(**spec["config"])
        self.max_seq_len = int(spec["max_seq_len"])
        self.all_reduce = spec.get("all_reduce", "nccl")
        self.device = rank_device(self.cfg.device, local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.store.get(f"ctl/{rank}").decode())
        self.store.set(f"hello/{rank}", "1")
        self.tp = TensorParallel(rank, world, local_rank,
                                 _process_group(self.store, rank, world, self.device, self.timeout),
                                 self.store, f"{addr}:{port}")

    def _parent_alive(self) -> None:
        if self.parent is not None and os.getppid() != self.parent:
            os._exit(2)  # the engine is gone (PDEATHSIG normally got here first)
        try:
            self.store.check(["config"])
        except Exception:  # noqa: BLE001 - rank 0's store is gone: so is the engine
            os._exit(2)

    def agree_blocks(self, blocks: int) -> int:
        self.store.set(f"blocks/{self.rank}", str(blocks))
        return int(self._key("blocks", time.monotonic() + self.timeout, self._parent_alive))

    def wait_ready(self) -> None:
        self.store.set(f"ready/{self.rank}", "1")

    def serve(self, runner: Any) -> None:
        """Run the steps rank 0 sends until it says stop (or goes away)."""
        from inflight.engine.step_plan import StepBuffers, StepPlan

        pinned = (StepBuffers(self.cfg.max_num_tokens, self.cfg.max_batch_size, 1, pin=True)
                  if self.device.type == "cuda" else None)
        while True:
            if not self.sock.poll(1000):
                self._parent_alive()
                continue
            head, data = self.sock.recv_multipart()
            cmd, patched = _HEAD.unpack(head)
            if cmd == _STOP:
                if self.device.type == "cuda":
                    self.tp.abort(10.0)  # with rank 0 (TensorParallel.abort), as its stop waits
                return
            plan = StepPlan.from_bytes(data)
            inp = runner.prepare(plan if pinned is None else pinned.load(plan))
            if patched:
                self.tp.broadcast(inp.input_ids)
            runner.execute(inp)


def worker_main(spec: dict[str, Any] | None = None) -> None:
    """A worker rank: from the engine's spawn spec, or (another machine) from the torchrun-style
    environment: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT."""
    if spec is None:
        e = env.tp_rank_env()
        addr, port = env.tp_master()
        spec = {"rank": e["RANK"], "local_rank": e["LOCAL_RANK"], "world": e["WORLD_SIZE"],
                "addr": addr, "port": port, "parent": None}
    rank = spec["rank"]
    logging.basicConfig(level=logging.INFO,
                        format=f"[inflight tp rank {rank} %(process)d] %(levelname)s %(message)s")
    worker: RankWorker | None = None
    code = 0
    try:
        worker = RankWorker(rank, spec["local_rank"], spec["world"], spec["addr"], spec["port"],
                            spec["parent"])
        if env.tp_fail_rank() == rank:
            raise RuntimeError("INFLIGHT_TP_FAIL_RANK: injected start-up failure")
        if worker.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // spec["world"]))
        from inflight.config import ModelConfig
        from inflight.worker.model_runner import ModelRunner

        runner = ModelRunner(worker.cfg, ModelConfig.from_hf(worker.cfg.model), worker.max_seq_len,
                             worker)
        from inflight.engine import gc_pauses

        gc_pauses.settle()  # this process owns its heap (as the engine process: gc_pauses.py)
        gc_pauses.watch()
        worker.serve(runner)
    except BaseException as e:  # noqa: BLE001 - tell rank 0 why, then exit
        log.exception("tensor parallel rank %d failed", rank)
        code = 1
        if worker is not None:
            try:
                worker.store.set(f"error/{rank}", f"{type(e).__name__}: {e}")
            except Exception:  # noqa: BLE001
                pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # no interpreter teardown (process groups, CUDA)


if __name__ == "__main__":
    worker_main()
