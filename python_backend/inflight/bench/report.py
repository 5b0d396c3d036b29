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
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=5).stdout.strip()
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
