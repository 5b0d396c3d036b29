"""inflight.testing.procs: what the lifecycle tests and benchmarks read from /proc."""

from __future__ import annotations

import os
import subprocess
import sys

from inflight.testing.procs import children, descendants, gone, proc, tree_cpu_s, wait_for


def test_tree_of_this_process_and_an_exit() -> None:
    # a child that starts a grandchild and waits for it
    busy = "import time; sum(range(10**7)); time.sleep(60)"  # some CPU time, then idle
    code = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {busy!r}])"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        wait_for(lambda: len(descendants(child.pid)) == 1, "the grandchild to start")
        (grandchild,) = descendants(child.pid).values()
        assert grandchild.ppid == child.pid and grandchild.comm.startswith("python")
        assert child.pid in children(os.getpid()) and child.pid in descendants(os.getpid())
        assert grandchild.pid not in children(os.getpid())
        assert not gone(child.pid) and proc(child.pid) is not None
        wait_for(lambda: proc(grandchild.pid).cpu_s >= 0.1, "the grandchild's CPU work")  # type: ignore[union-attr]
        assert tree_cpu_s(child.pid) >= proc(child.pid).cpu_s + 0.1  # type: ignore[union-attr]
        os.kill(grandchild.pid, 9)
        wait_for(lambda: gone(grandchild.pid), "the grandchild to exit")
        child.wait(30)
        assert gone(child.pid) and proc(2**22 + 7) is None  # reaped; a pid that cannot exist
    finally:
        child.kill()
        child.wait()
