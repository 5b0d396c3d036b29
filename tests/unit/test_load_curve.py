"""`inflight bench serve --request-rate`: rate parsing, one row per rate, the plot."""

from __future__ import annotations

import math

import pytest
from inflight.tools.bench.serve import curve_row, parse_rates, plot_curve


def test_parse_rates() -> None:
    assert parse_rates("2, 10,20,inf") == [2.0, 10.0, 20.0, math.inf]
    for bad in ("0", "-1", "x", ""):
        with pytest.raises(ValueError):
            parse_rates(bad)


def _res(rate: float) -> dict:
    return {"rate": rate, "req_s": 1.5, "output_tok_s": 30.0, "errors": 0,
            "ttft_s": {"p50": 0.02, "p99": 0.05}, "itl_s": {"p50": 0.006, "p99": 0.01}}


def test_curve_row_is_in_ms_and_keeps_missing_values_missing() -> None:
    row = curve_row(_res(2.0))
    assert row == {"rate": 2.0, "req_s": 1.5, "output_tok_s": 30.0, "errors": 0, "ttft_p50_ms": 20.0,
                   "ttft_p99_ms": 50.0, "itl_p50_ms": 6.0, "itl_p99_ms": 10.0, "ttft_slowest": []}
    worst = [{"request": 0, "sent_at_s": 0.0, "ttft_ms": 800.0}]
    assert curve_row({**_res(2.0), "ttft_slowest": worst})["ttft_slowest"] == worst
    empty = curve_row({**_res(math.inf), "itl_s": {}})
    assert empty["itl_p50_ms"] is None and empty["rate"] == math.inf


def test_plot_curve_writes_a_png(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    rows = [curve_row(_res(r)) for r in (2.0, 10.0, math.inf)]
    path = plot_curve(rows, str(tmp_path / "curve.png"), "t")
    assert path is not None and (tmp_path / "curve.png").stat().st_size > 1000


def test_plot_curve_draws_both_latency_panels_and_the_engine_share(tmp_path, monkeypatch) -> None:
    """TTFT and ITL panels on log scales with or without the engine columns; with them the
    TTFT panel also shows the engine's mean TTFT."""
    pytest.importorskip("matplotlib")
    from matplotlib.axes import Axes

    scales: list[str] = []
    labels: list[str] = []
    set_yscale, plot = Axes.set_yscale, Axes.plot
    monkeypatch.setattr(Axes, "set_yscale", lambda self, v, **kw: (scales.append(v), set_yscale(self, v, **kw))[1])
    monkeypatch.setattr(Axes, "plot", lambda self, *a, **kw: (labels.append(kw.get("label", "")), plot(self, *a, **kw))[1])
    rows = [curve_row(_res(r)) for r in (2.0, math.inf)]
    plot_curve(rows, str(tmp_path / "a.png"), "t")
    assert scales == ["log", "log"] and "TTFT mean, in the engine" not in labels
    scales.clear()
    rows = [{**row, "engine_ttft_mean_ms": 3.0, "engine_queue_mean_ms": 0.1} for row in rows]
    plot_curve(rows, str(tmp_path / "b.png"), "t")
    assert scales == ["log", "log"] and "TTFT mean, in the engine" in labels
