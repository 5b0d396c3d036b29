"""EngineClient: the EngineLoop API (submit / abort / alive / dead_reason / stats /
fresh_stats / wait_idle / wait_stopped / shutdown) over an engine in its own process
(engine/process.py), for the Triton models: the stub converts and validates requests and
sends responses; the step loop never shares its GIL (issue 13).

Requests are validated and tokenized here, on the caller's thread, with the engine's limits
(the Hello message), so a bad request fails at once with the field named; admission (a
duplicate live id, ``max_queue_size``) is checked here too, against the engine's last stats
plus what was sent since. One receiver thread starts the process (so ``PR_SET_PDEATHSIG`` ties
the child to a thread that lives as long as the client), reads its Step messages and calls
each request's callback. If the process dies or a step raises, every live request gets a final
error update and ``alive`` turns False (the health watcher then takes the model out of service).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from inflight.config import EngineConfig
from inflight.engine import wire
from inflight.engine.core import load_tokenizer
from inflight.engine.input_processor import EngineLimits, InputProcessor, check_admission
from inflight.engine.kv_cache import KVStats
from inflight.engine.loop import EngineStats
from inflight.engine.output_processor import UpdateCallback
from inflight.engine.process import BOOT, spec_for
from inflight.errors import EngineDeadError
from inflight.outputs import SequenceUpdate
from inflight.sampling_params import SamplingParams

log = logging.getLogger(__name__)
POLL_MS = 200  # how often the receiver checks that the process still runs


class EngineStartError(RuntimeError):
    """The engine process could not load the model (the message says why)."""


def python_executable() -> str:
    """This interpreter as a program. Inside the Triton stub ``sys.executable`` may be the stub
    binary, so look for ``pythonX.Y`` in the prefix (a venv's own, when one is active)."""
    v = sys.version_info
    cands = [sys.executable, getattr(sys, "_base_executable", ""),
             os.path.join(sys.exec_prefix, "bin", f"python{v.major}.{v.minor}"),
             os.path.join(sys.exec_prefix, "bin", "python3"),
             os.path.join(sys.base_exec_prefix, "bin", f"python{v.major}.{v.minor}")]
    for c in cands:
        if c and os.path.basename(c).startswith("python") and os.access(c, os.X_OK):
            return c
    raise EngineStartError(f"no python{v.major}.{v.minor} executable found near {sys.exec_prefix}")


def channel_addresses() -> tuple[str, str, str | None]:
    """(to-engine, from-engine, directory to remove). Linux: abstract UNIX sockets (no file
    to clean up whatever way the processes end); elsewhere a private temp directory."""
    tag = f"inflight-engine-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    if sys.platform.startswith("linux"):
        return f"ipc://@{tag}-in", f"ipc://@{tag}-out", None
    d = tempfile.mkdtemp(prefix=tag)
    return f"ipc://{d}/in", f"ipc://{d}/out", d


@dataclass
class EngineView:
    """What the Triton models read of ``loop.engine`` (config, tokenizer, counters)."""

    cfg: EngineConfig
    tokenizer: Any
    vocab_size: int
    max_seq_len: int
    num_steps: int = 0


@dataclass
class _Live:
    callback: UpdateCallback
    n: int
    done: set[int] = field(default_factory=set)


class EngineClient:
    def __init__(self, cfg: EngineConfig, *, warmup: str = "auto", fault_step: int = 0,
                 fault_delay_ms: int = 0, start_timeout: float | None = None,
                 watch: list[int] | None = None, parent_grace_s: float | None = None) -> None:
        """``watch``: processes besides this one whose end ends the engine process (the Triton
        models pass tritonserver's pid: engine/process.py); ``parent_grace_s``: then SIGKILL
        this process if it is still alive that much later (the Triton models: a stub stuck in
        a call to its dead server; never for a process that should outlive them)."""
        import zmq

        self.cfg = cfg
        self.tokenizer = load_tokenizer(cfg.tokenizer or cfg.model, cfg.trust_remote_code)
        self.dead_reason: str | None = None
        self._zmq = zmq
        self._lock = threading.Lock()  # _live, _unacked, _seq and the send socket
        self._live: dict[str, _Live] = {}
        self._unacked: deque[tuple[int, int]] = deque()  # (Add.seq, sequences) not yet in stats
        self._seq = 0
        self._closing = False
        self.proc: subprocess.Popen[bytes] | None = None
        self._ctx = zmq.Context()
        self._to, self._from = self._ctx.socket(zmq.PAIR), self._ctx.socket(zmq.PAIR)
        for sock in (self._to, self._from):
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.setsockopt(zmq.LINGER, 0)
        to_addr, from_addr, self._dir = channel_addresses()
        self._to.bind(to_addr)
        self._from.bind(from_addr)
        self._spec = spec_for(cfg, to_addr, from_addr, warmup=warmup, fault_step=fault_step,
                              fault_delay_ms=fault_delay_ms, watch=watch,
                              parent_grace_s=parent_grace_s)
        self._hello: wire.Hello | None = None
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inflight-engine-client", daemon=True)
        self._thread.start()
        self._started.wait(start_timeout)
        if self._hello is None:
            reason = self.dead_reason or "engine process did not start in time"
            self.shutdown(timeout=5)
            raise EngineStartError(reason)
        h = self._hello
        self.inputs = InputProcessor(cfg, self.tokenizer, EngineLimits(
            h.vocab_size, h.max_seq_len, h.num_blocks, h.block_size))
        self.engine = EngineView(cfg, self.tokenizer, h.vocab_size, h.max_seq_len)
        self.stats = EngineStats(0, 0, 0, KVStats(h.num_blocks, h.num_blocks, 0, 0, 0, 0), 0,
                                 time.monotonic())

    # ---- any thread ------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.dead_reason is None and not self._closing and self._thread.is_alive()

    def submit(self, request_id: str, prompt: str | list[int], params: SamplingParams,
               callback: UpdateCallback, priority: int = 0) -> list[int]:
        """Validate (raising InvalidRequestError / QueueFullError at once) and send."""
        if not self.alive:
            raise EngineDeadError(f"engine is not running: {self.dead_reason or 'stopped'}")
        ids, _ = self.inputs.prepare(prompt, params)
        n = params.n
        with self._lock:  # the engine's last stats plus what was sent since
            check_admission(self.cfg, request_id, n, live=request_id in self._live,
                            queued=self.stats.num_waiting + sum(k for _, k in self._unacked))
            if not self.alive:  # died meanwhile: its live requests were already failed
                raise EngineDeadError(f"engine is not running: {self.dead_reason or 'stopped'}")
            self._seq += 1
            self._live[request_id] = _Live(callback, n)
            self._unacked.append((self._seq, n))
            self._to.send(wire.encode(wire.Add(self._seq, request_id, ids, params, priority)))
        return ids

    def abort(self, request_id: str) -> None:
        """Cancel; a no-op for unknown or finished ids. The request gets a final 'abort'."""
        with self._lock:
            if request_id in self._live and self.alive:
                self._to.send(wire.encode(wire.Abort(request_id)))

    def fresh_stats(self) -> EngineStats:
        """The engine's stats after the last message received: they travel with the updates,
        so right after a request's final update they already show its blocks freed."""
        return self.stats

    def wait_idle(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._live:
                    return True
            time.sleep(0.005)
        return False

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Block until the engine ended (shutdown, crash or fault); True if it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Abort what runs (each gets its final), stop the process, remove the channel."""
        with self._lock:
            first = not self._closing
            self._closing = True
            if first and self.proc is not None and self.proc.poll() is None:
                try:
                    self._to.send(wire.encode(wire.Shutdown()), self._zmq.NOBLOCK)
                except self._zmq.ZMQError:
                    pass
        self._thread.join(timeout)
        if self.proc is not None and self.proc.poll() is None:
            log.warning("engine process %d did not stop in %.0f s; killing it", self.proc.pid, timeout)
            self.proc.kill()
            self._thread.join(5)

    # ---- receiver thread -------------------------------------------------------------------
    def _spawn(self) -> None:
        import json

        self.proc = subprocess.Popen([python_executable(), "-c", BOOT, json.dumps(self._spec)],
                                     stdin=subprocess.DEVNULL, close_fds=True)

    def _run(self) -> None:
        try:
            self._spawn()  # from this thread: PR_SET_PDEATHSIG follows the thread that forked
            self._serve()
        except Exception as e:  # noqa: BLE001 - a client fault ends the engine like a crash
            log.exception("engine client failed")
            self._die(f"engine channel failed: {type(e).__name__}: {e}")
        finally:
            self._started.set()
            self._cleanup()

    def _serve(self) -> None:
        assert self.proc is not None
        while True:
            if not self._from.poll(POLL_MS):
                rc = self.proc.poll()
                if rc is None:
                    continue
                if self._closing and self.dead_reason is None:
                    self._die("engine stopped")  # nothing should be live: belt and braces
                    return
                self._die(self.dead_reason or f"engine process exited unexpectedly (code {rc})")
                return
            msg = wire.decode_from_engine(self._from.recv())
            if isinstance(msg, wire.Step):
                self._on_step(msg)
            elif isinstance(msg, wire.Hello):
                self._hello = msg
                self._started.set()
            else:  # Dead: the finals of fail_all came in the Step before it
                self._die(msg.reason)
                self._started.set()
                self.proc.wait()
                return

    def _on_step(self, msg: wire.Step) -> None:
        s = msg.stats
        self.stats = EngineStats(s.num_waiting, s.num_running, s.num_steps,
                                 KVStats(*s.kv), s.step_tokens, time.monotonic())
        self.engine.num_steps = s.num_steps
        with self._lock:
            while self._unacked and self._unacked[0][0] <= msg.acked:
                self._unacked.popleft()
        for w in msg.updates:
            self._deliver(wire.sequence_update(w))

    def _deliver(self, u: SequenceUpdate) -> None:
        with self._lock:
            live = self._live.get(u.request_id)
            if live is None or u.index in live.done:
                return
            if u.finished:
                live.done.add(u.index)
                if len(live.done) >= live.n:
                    del self._live[u.request_id]
        try:
            live.callback(u)
        except Exception:  # noqa: BLE001 - a consumer's fault must not kill the engine
            log.exception("output callback of %s failed; dropping its update", u.request_id)

    def _die(self, reason: str) -> None:
        """Every live request gets a final error; new submits get EngineDeadError."""
        if self.dead_reason is None and not (self._closing and reason == "engine stopped"):
            log.error("engine: %s", reason)
            self.dead_reason = reason
        with self._lock:
            live, self._live = self._live, {}
            self._unacked.clear()
        for rid, lv in live.items():
            for i in range(lv.n):
                if i not in lv.done:
                    u = SequenceUpdate(rid, i, [], "", finished=True, finish_reason="error",
                                       error=reason)
                    try:
                        lv.callback(u)
                    except Exception:  # noqa: BLE001
                        log.exception("output callback of %s failed", rid)

    def _cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None and (self._closing or self.dead_reason):
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with self._lock:  # submit/abort send under this lock after checking `alive`
            self._to.close()
        self._from.close()
        self._ctx.term()
        if self._dir is not None:
            import shutil

            shutil.rmtree(self._dir, ignore_errors=True)
