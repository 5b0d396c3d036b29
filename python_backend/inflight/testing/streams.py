"""Stream recording and server-state checks for the reliability suite and `inflight soak`.

`run_stream` sends one request on its own gRPC stream and records every event (responses
and errors) until the terminal one, then keeps listening for ``quiet`` seconds so that
anything arriving after the terminal event is caught. `Outcome.check()` asserts the
invariant every accepted request must keep: exactly one terminal event, nothing after it.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Outcome:
    """What one request got: text deltas, errors, and event counts around the terminal."""

    texts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    finals: int = 0
    after_terminal: int = 0  # events that arrived after the first terminal one
    timed_out: bool = False
    cancelled_by_client: bool = False
    outputs: list[dict[str, np.ndarray]] = field(default_factory=list)
    first_event_s: float | None = None
    terminal_s: float | None = None

    @property
    def text(self) -> str:
        return "".join(self.texts)

    @property
    def terminals(self) -> int:
        return self.finals + len(self.errors)

    @property
    def error(self) -> str:
        return self.errors[0] if self.errors else ""

    def check(self) -> None:
        """Exactly one terminal event and nothing after it (client cancels excepted)."""
        assert not self.timed_out, f"no terminal event: {self}"
        if self.cancelled_by_client:
            assert self.terminals <= 1 and self.after_terminal == 0, self
            return
        assert self.terminals == 1, f"expected one terminal event, got {self}"
        assert self.after_terminal == 0, f"events after the terminal one: {self}"


def _decode(arr: np.ndarray | None) -> list[str]:
    if arr is None:
        return []
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr.reshape(-1)]


def _record(out: Outcome, result: Any, error: Any, t0: float) -> bool:
    """Add one event; True if it is terminal."""
    now = time.monotonic() - t0
    if out.first_event_s is None:
        out.first_event_s = now
    if error is not None:
        msg = error.message() if hasattr(error, "message") else str(error)
        out.errors.append(str(msg))
        return True
    response = result.get_response()
    outputs = {o.name: result.as_numpy(o.name) for o in response.outputs}
    out.outputs.append(outputs)
    out.texts.extend(_decode(outputs.get("text_output")))
    final = response.parameters.get("triton_final_response")
    is_final = bool(final.bool_param) if final is not None else True
    out.finals += is_final
    return is_final


def run_stream(url: str, model: str, inputs: Mapping[str, np.ndarray], *, request_id: str = "",
               timeout: float = 60.0, quiet: float = 0.3,
               cancel_when: Callable[[Outcome], bool] | None = None,
               cancel_after_final: bool = False) -> Outcome:
    """One request on its own gRPC stream; see the module docstring.

    ``cancel_when(outcome)`` is asked before the first and after every event; when it says
    True the client cancels (``stop_stream(cancel_requests=True)``) and stops listening.
    ``cancel_after_final``: cancel the stream right after the terminal event (a late cancel
    that must find nothing to do).
    """
    import tritonclient.grpc as grpcclient

    from inflight.client.grpc_stream import to_infer_inputs

    events: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    out = Outcome()
    t0 = time.monotonic()
    try:
        client.start_stream(callback=lambda result, error: events.put((result, error)))
        client.async_stream_infer(model, to_infer_inputs(inputs), request_id=request_id,
                                  enable_empty_final_response=True)
        deadline = t0 + timeout
        while out.terminal_s is None:
            if cancel_when is not None and cancel_when(out):
                out.cancelled_by_client = True
                client.stop_stream(cancel_requests=True)
                return out
            try:
                result, error = events.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                out.timed_out = True
                client.stop_stream(cancel_requests=True)
                return out
            if _record(out, result, error, t0):
                out.terminal_s = time.monotonic() - t0
        if cancel_after_final:
            client.stop_stream(cancel_requests=True)
        time.sleep(quiet)
        late = [events.get_nowait() for _ in range(events.qsize())]
        # tritonclient reports its own cancel as an error event: not the server's doing
        out.after_terminal = sum(1 for _, e in late if not _locally_cancelled(e))
        client.stop_stream()
        return out
    finally:
        client.close()


def _locally_cancelled(error: Any) -> bool:
    return error is not None and "locally cancelled" in str(error).lower()


def metric(metrics_url: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus metric's samples matching ``labels`` on Triton's /metrics."""
    from inflight.tools import prom_text

    return prom_text.total(prom_text.scrape(metrics_url), name, **labels)


def kv_used_and_active(metrics_url: str, model: str | None = None) -> tuple[float, float]:
    labels = {"model": model} if model else {}
    used = metric(metrics_url, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="used",
                  **labels)
    active = metric(metrics_url, "nv_trt_llm_request_metrics", request_type="active", **labels)
    return used, active


def wait_kv_idle(metrics_url: str, timeout: float = 30.0, model: str | None = None) -> None:
    """Wait until no KV block is used and no request is active; AssertionError otherwise."""
    deadline = time.monotonic() + timeout
    used, active = kv_used_and_active(metrics_url, model)
    while used or active:
        if time.monotonic() > deadline:
            raise AssertionError(f"KV blocks still used: {used}, active requests: {active}")
        time.sleep(0.2)
        used, active = kv_used_and_active(metrics_url, model)


def wait_metric_above(metrics_url: str, name: str, floor: float, timeout: float = 20.0,
                      **labels: str) -> float:
    """Poll until the metric exceeds ``floor``; returns its value (AssertionError on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        v = metric(metrics_url, name, **labels)
        if v > floor:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}{labels} stayed at {v} (wanted > {floor})")
        time.sleep(0.2)
