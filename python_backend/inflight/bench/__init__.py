"""Benchmarks behind `inflight bench`."""
