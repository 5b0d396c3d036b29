"""Benchmark results: percentiles, a JSON record and PNG plots."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
from typing import Any

import numpy as np


def percentiles(xs: list[float], ps: tuple[int, ...] = (50, 90, 99)) -> dict[str, float]:
    if not xs:
        return {}
    arr = np.asarray(xs, dtype=float)
    out = {f"p{p}": float(np.percentile(arr, p)) for p in ps}
    out["mean"] = float(arr.mean())
    return out


def device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - informational only
        pass
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def git_rev() -> str:
    """HEAD's short hash, with ``-dirty`` when tracked files differ from it (a device copy of
    a working tree carries its uncommitted changes on top of an older HEAD)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--"], capture_output=True,
                               timeout=5).returncode == 1
        return f"{rev}-dirty" if rev and dirty else rev
    except Exception:  # noqa: BLE001
        return ""


def save(result: dict[str, Any], out_dir: str, name: str) -> str:
    os.makedirs(out_dir, exist_ok=True)
    result = {"benchmark": name, "device": device_name(), "git": git_rev(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              **result}
    path = os.path.join(out_dir, f"{name}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    return path


def plot_latencies(samples: dict[str, list[float]], path: str, title: str) -> str | None:
    """CDF of each latency list (seconds) in one PNG; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(samples), figsize=(4.5 * len(samples), 3.6), squeeze=False)
    for ax, (label, xs) in zip(axes[0], samples.items()):
        if xs:
            arr = np.sort(np.asarray(xs) * 1000.0)
            ax.plot(arr, np.linspace(0, 1, len(arr)), lw=2)
            for p in (50, 90, 99):
                ax.axvline(np.percentile(arr, p), ls=":", lw=1, color="gray")
        ax.set_xlabel(f"{label} (ms)")
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_bars(values: dict[str, float], path: str, title: str, ylabel: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    bars = ax.bar(list(values), list(values.values()), color=["#3b7dd8", "#a0a0a0", "#e08a2c"][: len(values)])
    ax.bar_label(bars, fmt="%.0f")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _figure(command: str, res: dict[str, Any]) -> str:
    """The figure a person looks for first, per benchmark."""
    r = res.get("inflight", res)
    if command == "throughput":
        return f"{r['output_tok_s']:.1f} output tok/s, {r['req_s']:.2f} req/s over {r['requests']} requests"
    if command == "latency":
        return (f"{r['decode_tok_s']:.1f} decode tok/s per user ({r['ms_per_token']:.2f} ms/token, "
                f"TTFT {r['ttft_ms']:.1f} ms)")
    if command == "profile":
        return (f"{r['wall_ms_per_step']:.2f} ms per decode step at batch {r['batch']} "
                f"({r['decode_tok_s']:.1f} tok/s)")
    if command == "reuse":
        return (f"TTFT {r['ttft_first_ms']:.1f} ms first, {r['ttft_repeat_ms']:.1f} ms with the "
                f"prefix cached ({r['speedup']:.2f}x)")
    ttft = r["ttft_s"].get("p50")
    return (f"{r['output_tok_s']:.1f} output tok/s, {r['req_s']:.2f} req/s, TTFT p50 "
            f"{'-' if ttft is None else f'{1e3 * ttft:.0f} ms'}, {r['errors']} errors in "
            f"{r['requests']} requests")


def summary(command: str, res: dict[str, Any], json_path: str, plots: list[str | None],
            trace: str | None = None) -> str:
    """One line after the JSON: the key figure, the ratio to the baseline when one ran, and
    the files written. ``plots``: what each plot call returned (None: matplotlib missing)."""
    line = f"{command}: {_figure(command, res)}"
    if "ratio_vs_hf" in res:
        line += f"; {res['ratio_vs_hf']:.2f}x the transformers baseline"
    line += f"; JSON {json_path}"
    written = [p for p in plots if p]
    if written:
        line += f"; plot{'s' if len(written) > 1 else ''} {', '.join(written)}"
    if None in plots:
        line += "; no plot (matplotlib is missing: pip install matplotlib)"
    return line + (f"; trace {trace}" if trace else "")
