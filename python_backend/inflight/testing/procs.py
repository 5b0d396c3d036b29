"""Process-tree inspection from /proc (Linux) for the tests and benchmarks that check which
processes a server started, that they all end with it, and what CPU each one used."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

DEADLINE_S = 60.0  # a bound for a loaded CI box, never a synchronisation
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    state: str  # "Z": exited, not reaped yet
    comm: str  # the name (PR_SET_NAME: inflight-engine, inflight-tp1, ...)
    cmdline: str  # arguments joined by spaces
    cpu_s: float  # utime + stime


def proc(pid: int) -> Proc | None:
    """``pid`` as /proc shows it now, or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except (OSError, ValueError, IndexError):
        return None  # gone meanwhile
    return Proc(pid, int(fields[1]), fields[0], comm, cmdline,
                (int(fields[11]) + int(fields[12])) / _TICK)


def snapshot() -> dict[int, Proc]:
    """Every process that has not exited (zombies left out)."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit() and (p := proc(int(d))) is not None and p.state != "Z":
            out[p.pid] = p
    return out


def descendants(root: int, procs: dict[int, Proc] | None = None) -> dict[int, Proc]:
    """The live processes below ``root`` (children, theirs, ...)."""
    procs = snapshot() if procs is None else procs
    out: dict[int, Proc] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for p in procs.values():
            if p.ppid == parent and p.pid not in out:
                out[p.pid] = p
                frontier.append(p.pid)
    return out


def children(pid: int) -> dict[int, Proc]:
    return {p.pid: p for p in snapshot().values() if p.ppid == pid}


def gone(pid: int) -> bool:
    """The process exited (a zombie not reaped yet counts as gone)."""
    p = proc(pid)
    return p is None or p.state == "Z"


def tree_cpu_s(root: int) -> float:
    """CPU seconds of ``root`` and every live descendant."""
    procs = snapshot()
    own = procs[root].cpu_s if root in procs else 0.0
    return own + sum(p.cpu_s for p in descendants(root, procs).values())


def wait_for(pred: Callable[[], bool], what: str, timeout: float = DEADLINE_S,
             poll: float = 0.05) -> None:
    """Poll ``pred`` until true; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)
