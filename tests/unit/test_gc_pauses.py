"""engine/gc_pauses.py: after ``settle()`` a full collection no longer walks the objects
that were alive before it (they are frozen), new garbage is still collected, and
``watch()`` counts every collection and logs the long ones."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator

import pytest
from inflight.engine import gc_pauses


@pytest.fixture
def clean_gc() -> Iterator[None]:
    """Leave the test process's collector as it was: nothing frozen, no hook."""
    gc.unfreeze()
    yield
    gc_pauses.unwatch()
    gc.unfreeze()


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_settle_freezes_what_is_alive_and_still_collects_new_garbage(clean_gc: None) -> None:
    keep = [_Cycle() for _ in range(1000)]  # alive at settle(): must survive, frozen
    tracked = len(gc.get_objects())
    frozen = gc_pauses.settle()
    assert frozen >= 1000 and gc.get_freeze_count() == frozen
    assert len(gc.get_objects()) < tracked - 900  # the collector no longer walks them
    garbage = [_Cycle() for _ in range(500)]
    ids = {id(c) for c in garbage}
    del garbage
    assert gc.collect() >= 500  # cycles made after settle() are still collected
    assert not ids & {id(o) for o in gc.get_objects()}
    assert all(c.me is c for c in keep)


def test_watch_counts_collections_and_logs_long_pauses(clean_gc: None,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    w = gc_pauses.watch(threshold_ms=0.0)  # every collection counts as long
    assert gc_pauses.watch() is w  # one hook per process
    assert gc.callbacks.count(w) == 1
    with caplog.at_level(logging.WARNING, logger="inflight.engine.gc_pauses"):
        gc.collect()
    assert w.collections[2] >= 1 and w.long_pauses >= 1
    assert w.total_ms >= w.longest_ms > 0
    assert any("garbage collection (generation 2) paused the engine" in r.getMessage()
               for r in caplog.records)
    w.threshold_ms = 1e9  # now nothing is long: counted, not logged
    caplog.clear()
    before, longs = w.collections[2], w.long_pauses
    gc.collect()
    assert w.collections[2] == before + 1 and w.long_pauses == longs
    assert not caplog.records
    gc_pauses.unwatch()
    assert w not in gc.callbacks
