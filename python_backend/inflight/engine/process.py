"""The engine process: an LLMEngine driven by one thread that owns its GIL (issue 13).

Started by ``EngineClient`` (engine/client.py) with the parent's interpreter, environment and
``sys.path``; talks to it over two ZeroMQ PAIR sockets (wire.py messages). The loop:

    take every message that arrived (Add / Abort / Shutdown) -> apply between steps
    step (schedule -> worker -> update -> output processing: detokenize, stop strings)
    send one Step message: the step's updates + the stats after it

so an abort reaches the engine before the next step after it arrives, and the step loop never
waits for the GIL of the Triton side. Output processing stays here: on the GPU it runs while
the device executes the next step (overlapped scheduling), and the stub only turns updates into
responses (docs/performance.md has the CPU measurement).

No orphans: the process asks the kernel for SIGKILL when the thread that started it ends
(``PR_SET_PDEATHSIG``, set first thing in ``BOOT``) and checks ``getppid()`` every iteration
(a parent that died before the prctl). SIGINT and SIGTERM are ignored: a terminal's Ctrl-C or a
signal to the server's process group must not kill the engine under a draining server; the
parent ends it with Shutdown, and SIGKILL always works.

When a watched process (tritonserver) ends, the engine exits; with ``parent_grace_s`` set (the
Triton models) it first gives its parent, the server's python stub, that long to exit and then
SIGKILLs it (``end_stuck_parent``): a process outside the stub can still act when a stub
thread waits forever, GIL held, for a server that stopped answering (stubs without an engine
process have a small reaper child for this: frontends/triton/stub_reaper.py).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from dataclasses import asdict
from typing import Any

from inflight.child_boot import boot_script

log = logging.getLogger(__name__)

# run by `python -c BOOT SPEC`: tie the process to its parent before anything slow
BOOT = boot_script("'inflight-engine'", "inflight.engine.process:main")  # `pgrep -x inflight-engine`


def spec_for(cfg: Any, inbox: str, outbox: str, *, warmup: str = "auto", fault_step: int = 0,
             fault_delay_ms: int = 0, watch: list[int] | None = None,
             parent_grace_s: float | None = None) -> dict[str, Any]:
    """What the child needs, as JSON (its argv): no pickle, nothing from the network.
    ``watch``: more processes whose end ends the engine (the Triton stub passes tritonserver:
    a stub can outlive a SIGKILLed server, its engine must not). ``parent_grace_s``: once a
    watched process ended, SIGKILL the parent if it is still there after that many seconds
    (only for a parent that cannot outlive them usefully: a python-backend stub)."""
    return {"config": asdict(cfg), "inbox": inbox, "outbox": outbox, "parent": os.getpid(),
            "sys_path": list(sys.path), "warmup": warmup, "fault_step": fault_step,
            "fault_delay_ms": fault_delay_ms,
            "watch": [[pid, start_time(pid)] for pid in (watch or []) if start_time(pid) is not None],
            "parent_grace_s": parent_grace_s}


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), None if it is gone or a zombie: with
    the pid it names one process, whatever reuses the pid later."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if rest[0] in ("Z", "X") else int(rest[19])


def end_stuck_parent(parent: int, grace_s: float, who: str) -> bool:
    """tritonserver ended and ``parent``, a python stub this process was started by, may
    still live: wait ``grace_s`` for it to go, then SIGKILL it; True if it was killed.

    A stub whose server is gone exits by itself within a second (its own parent check),
    unless one of its threads is inside a Triton call made just before the server stopped
    answering: the 2.51 stub waits for the reply forever holding the GIL and the mutex its own
    exit needs (triton/health.py ServerLink; seen: a metrics gauge update in flight when
    tritonserver exited at its exit timeout). Nothing in the stub can end it then, and a plain
    tritonserver leaves it running. The engine process does this for its stub; the
    stub reaper (frontends/triton/stub_reaper.py) for every other stub."""
    if os.getppid() != parent:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if os.getppid() != parent:
            return False
        time.sleep(0.05)
    log.error("%s: the python stub %d outlived its tritonserver by %.1f s; killing it", who, parent,
              grace_s)
    try:
        os.kill(parent, signal.SIGKILL)
    except OSError:  # gone meanwhile
        return False
    return True


WATCH_S = 0.5  # how often the watched processes are checked


class _LoopView:
    """What ``health.fault_hook`` reads of a loop."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine


class EngineProcess:
    def __init__(self, engine: Any, inbox: Any, outbox: Any, parent: int,
                 hook: Any = None, watch: list[list[int]] | None = None,
                 parent_grace_s: float | None = None) -> None:
        from inflight.engine import wire

        self.wire = wire
        self.engine = engine
        self.inbox, self.outbox = inbox, outbox
        self.parent = parent
        self.hook = hook
        self.updates: list[Any] = []
        self.acked = 0
        self.watch = watch or []
        self._next_watch = 0.0
        self.parent_grace_s = parent_grace_s

    def _orphaned(self) -> bool:
        """The parent is gone (PDEATHSIG normally got here first), or a watched process is."""
        if os.getppid() != self.parent:
            return True
        if self.watch and time.monotonic() >= self._next_watch:
            self._next_watch = time.monotonic() + WATCH_S
            return any(start_time(pid) != start for pid, start in self.watch)
        return False

    def _end_stuck_parent(self) -> None:
        """A watched process (tritonserver) ended while the parent (its python stub) lives:
        :func:`end_stuck_parent` (when the parent exits, PDEATHSIG ends this process first)."""
        if self.parent_grace_s is not None:
            end_stuck_parent(self.parent, self.parent_grace_s, "engine process")

    def _cb(self, u: Any) -> None:
        self.updates.append(self.wire.wire_update(u))

    def _take(self, block_ms: int) -> list[Any]:
        import zmq

        msgs = []
        if block_ms and not self.inbox.poll(block_ms):
            return msgs
        while True:
            try:
                data = self.inbox.recv(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                return msgs
            try:
                msgs.append(self.wire.decode_to_engine(data))
            except self.wire.WireError as e:  # never from our client: refuse, keep serving
                log.error("engine process: dropped a malformed message: %s", e)

    def _add(self, m: Any) -> None:
        eng = self.engine
        try:
            _, seqs = eng.make_request(m.request_id, m.prompt_ids, m.params, self._cb, m.priority)
            eng.enqueue(m.request_id, seqs)
        except Exception as e:  # noqa: BLE001 - validated by the client already: report, go on
            log.exception("engine process: request %s refused", m.request_id)
            for i in range(m.params.n):
                self.updates.append(self.wire.Update(m.request_id, i, [], "", finished=True,
                                                     finish_reason="error", error=str(e)))
        self.acked = m.seq

    def _flush(self) -> None:
        eng = self.engine
        s = eng.scheduler
        kv = eng.kv.stats()
        stats = self.wire.Stats(s.num_waiting, s.num_running, eng.num_steps, eng.last_step_tokens,
                                [int(v) for v in asdict(kv).values()])
        self.outbox.send(self.wire.encode(self.wire.Step(self.updates, stats, self.acked)))
        self.updates = []

    def run(self) -> int:
        """Serve until Shutdown (0), parent death (2) or a step fault (1)."""
        wire, eng = self.wire, self.engine
        while True:
            msgs = self._take(0 if eng.has_unfinished() else 200)
            stop = False
            for m in msgs:
                if isinstance(m, wire.Add):
                    self._add(m)
                elif isinstance(m, wire.Abort):
                    eng.abort(m.request_id)
                else:
                    stop = True
            if self._orphaned():
                log.error("engine process: its parent or server is gone; exiting")
                self._end_stuck_parent()
                return 2
            try:
                if stop:
                    for rid in list(eng.children):
                        eng.abort(rid)
                    self._flush()
                    return 0
                if msgs:
                    self._flush()  # admissions' stats and aborts' finals, before the step
                eng.check_health()  # a dead tensor-parallel rank ends the engine even when idle
                if not eng.has_unfinished():
                    continue
                if self.hook is not None:
                    self.hook()
                eng.step()
                self._flush()
            except Exception as e:  # noqa: BLE001 - any fault ends the engine
                log.exception("engine step failed")
                e = eng.explain_fault(e)
                reason = f"engine step failed: {type(e).__name__}: {e}"
                eng.fail_all(reason)
                try:
                    self._flush()
                finally:
                    self.outbox.send(wire.encode(wire.Dead(reason)))
                return 1


def _cpu_threads(engine: Any) -> None:
    """On a CPU engine, leave one core to the front end (the stub, tritonserver): with every core
    in torch's thread pool, each op's threads wait for a core the stub holds, and the stub's
    receiver waits for the engine's spinning threads (measured on 2 cores, Poisson 50 req/s:
    TTFT p50 230 ms against 2.3 ms with one thread fewer). OMP_NUM_THREADS, when set, wins."""
    if engine.runner.device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores - 1))


def main(spec: dict[str, Any]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="[inflight engine %(process)d] %(levelname)s %(message)s")
    import zmq

    from inflight.engine import wire

    ctx = zmq.Context()
    inbox, outbox = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    for sock in (inbox, outbox):
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.LINGER, 2000)
    inbox.connect(spec["inbox"])
    outbox.connect(spec["outbox"])
    code = 1
    try:
        from inflight.config import EngineConfig
        from inflight.engine import gc_pauses
        from inflight.engine.core import LLMEngine
        from inflight.engine.warmup import should_warm_up, warm_up

        engine = LLMEngine(EngineConfig(**spec["config"]))
        _cpu_threads(engine)
        took = warm_up(engine) if should_warm_up(spec["warmup"], engine.runner.device.type) else 0.0
        # this process owns its heap: what start-up left is never garbage, so later full
        # collections need not walk it; long pauses are logged (engine/gc_pauses.py)
        log.info("garbage collector: %d start-up objects frozen", gc_pauses.settle())
        gc_pauses.watch()
        hook = None
        if spec["fault_step"] or spec["fault_delay_ms"]:
            from inflight.frontends.triton.health import fault_hook

            hook = fault_hook(_LoopView(engine), spec["fault_step"], spec["fault_delay_ms"])  # type: ignore[arg-type]
    except Exception as e:  # noqa: BLE001 - the parent raises this as the start error
        log.exception("engine process failed to start")
        outbox.send(wire.encode(wire.Dead(f"engine failed to start: {type(e).__name__}: {e}")))
    else:
        outbox.send(wire.encode(wire.Hello(
            os.getpid(), engine.vocab_size, engine.max_seq_len, engine.kv.num_blocks,
            engine.kv.block_size, sorted(engine.eos_token_ids), took)))
        code = EngineProcess(engine, inbox, outbox, spec["parent"], hook, spec.get("watch"),
                             spec.get("parent_grace_s")).run()
    t0 = time.monotonic()
    inbox.close()
    outbox.close()  # LINGER: what is queued still goes out
    ctx.term()
    log.debug("engine process exits (%d) after %.3f s of socket drain", code, time.monotonic() - t0)
    sys.stdout.flush()
    os._exit(code)  # no interpreter teardown (CUDA, threads): the parent waits on this exit
