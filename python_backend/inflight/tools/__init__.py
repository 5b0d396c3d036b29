"""What users run: the ``inflight`` CLI, the demo, the soak and cancellation-storm tools, the
repository builder, the ``inflight serve`` launcher and the benchmarks."""
