"""How inflight starts its own Python child processes (the engine process, tensor-parallel
ranks): ``python -c boot_script(...) SPEC_JSON``. Before anything slow is imported the child
asks for SIGKILL when the thread that spawned it ends (``PR_SET_PDEATHSIG``), names itself
(``PR_SET_NAME``: ``pgrep -x``, /proc/PID/comm), exits if its parent is already gone, takes
the parent's ``sys.path`` and calls ``entry(spec)``. The spec is JSON: no pickle."""

from __future__ import annotations


def boot_script(name_expr: str, entry: str) -> str:
    """``name_expr``: a Python expression over ``spec`` giving the process name;
    ``entry``: ``"package.module:function"``. The spec must carry ``parent`` and ``sys_path``."""
    module, func = entry.split(":")
    return (
        "import ctypes, json, os, sys\n"
        "spec = json.loads(sys.argv[1])\n"
        "try:\n"
        "    libc = ctypes.CDLL(None, use_errno=True)\n"
        "    libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL\n"
        f"    libc.prctl(15, ({name_expr}).encode())  # PR_SET_NAME\n"
        "except Exception:\n"
        "    pass\n"
        "if os.getppid() != spec['parent']:\n"
        "    os._exit(3)\n"
        "sys.path[:0] = [p for p in spec['sys_path'] if p not in sys.path]\n"
        f"from {module} import {func}\n"
        f"{func}(spec)\n"
    )
