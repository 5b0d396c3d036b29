"""Reading Triton's ``/metrics`` (the Prometheus text exposition): one scraper for the tools,
the benchmarks and the tests.

A sample line is ``name{label="value",...} number``; a histogram ``h`` exposes ``h_sum``,
``h_count`` and cumulative ``h_bucket{le="..."}`` lines. Matching is by metric name and by
the labels given (any other labels are summed over), which is all Triton's families need.
"""

from __future__ import annotations

import re
import urllib.request
from dataclasses import dataclass

_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(url: str, timeout: float = 10.0) -> str:
    """The exposition text at ``url`` (e.g. http://localhost:8002/metrics)."""
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def samples(body: str, name: str, **labels: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of metric ``name`` whose labels include ``labels``."""
    out = []
    for line in body.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        rest = line[len(name):]
        if rest.startswith("{"):
            close = rest.rfind("}")
            have = dict(_LABEL.findall(rest[1:close]))
            value = rest[close + 1:]
        elif rest.startswith(" "):
            have, value = {}, rest
        else:  # another metric whose name starts with this one
            continue
        if all(have.get(k) == v for k, v in labels.items()):
            out.append((have, float(value.split()[0])))
    return out


def total(body: str, name: str, **labels: str) -> float:
    """The sum of the matching samples (0 when there are none)."""
    return sum(v for _, v in samples(body, name, **labels))


@dataclass(frozen=True)
class HistogramSnapshot:
    """A histogram's ``_sum`` and ``_count`` at one scrape (summed over matching series)."""

    sum: float
    count: float

    def since(self, earlier: HistogramSnapshot) -> HistogramSnapshot:
        """What was observed between ``earlier`` and this scrape."""
        return HistogramSnapshot(self.sum - earlier.sum, self.count - earlier.count)

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count > 0 else None


def histogram(body: str, name: str, **labels: str) -> HistogramSnapshot:
    return HistogramSnapshot(total(body, f"{name}_sum", **labels), total(body, f"{name}_count", **labels))
