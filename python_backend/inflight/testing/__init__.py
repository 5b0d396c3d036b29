"""Test and demo helpers: tiny offline checkpoints (:mod:`inflight.testing.tiny`)."""
