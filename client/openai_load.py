"""Load generator for the OpenAI front end: streamed ``/v1/completions`` with the official
``openai`` client (``AsyncOpenAI``), one asyncio loop, fixed concurrency or Poisson arrivals.

Every request asks for exactly ``max_tokens`` tokens (``ignore_eos``, ``min_tokens``:
vLLM's extensions, which the front end passes to the engine), greedy, with
``stream_options.include_usage`` so the output token count is the engine's. What it records
per request matches ``inflight bench serve``'s gRPC traces: send time, arrival time of each
chunk (the front end skips tokens that add no text, so with real weights a chunk is a token
or a few; with dummy weights and a small tokenizer many tokens decode to nothing), output
tokens, error.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class StreamTrace:
    sent: float = 0.0
    times: list[float] = field(default_factory=list)
    output_tokens: int = 0
    error: str | None = None
    done: bool = False


def base_url(url: str) -> str:
    """``host:port`` / ``http://host:port`` / ``.../v1`` -> ``http://host:port/v1``."""
    u = url if "://" in url else f"http://{url}"
    return u.rstrip("/") if u.rstrip("/").endswith("/v1") else u.rstrip("/") + "/v1"


async def run_openai(url: str, model: str, prompts: list[str], max_tokens: list[int], *,
                     rate: float = float("inf"), concurrency: int = 256, seed: int = 0,
                     api_key: str = "none") -> tuple[list[StreamTrace], float]:
    from openai import AsyncOpenAI

    # the client's default pool holds 1000 connections: a larger concurrency would queue in
    # the client, so it is capped there (the benchmark sends 1000 at once)
    concurrency = min(concurrency, 1000)
    client = AsyncOpenAI(base_url=base_url(url), api_key=api_key, max_retries=0, timeout=3600)
    traces = [StreamTrace() for _ in prompts]
    sem = asyncio.Semaphore(concurrency)
    rng = np.random.default_rng(seed)

    async def one(i: int) -> None:
        tr = traces[i]
        async with sem:
            tr.sent = time.perf_counter()
            try:
                stream = await client.completions.create(
                    model=model, prompt=prompts[i], max_tokens=max_tokens[i], temperature=0,
                    stream=True, stream_options={"include_usage": True},
                    extra_body={"ignore_eos": True, "min_tokens": max_tokens[i]})
                async for chunk in stream:
                    # every chunk with a choice counts, its text empty or not: the front end
                    # only sends empty text with a finish reason, and a request whose tokens
                    # all decode to nothing (dummy weights, a small tokenizer) still completed
                    if chunk.choices:
                        tr.times.append(time.perf_counter())
                    if chunk.usage is not None:
                        tr.output_tokens = chunk.usage.completion_tokens
                tr.done = True
            except Exception as e:  # noqa: BLE001 - counted, the run goes on
                tr.error = f"{type(e).__name__}: {e}"

    async def paced() -> None:
        tasks = []
        for i in range(len(prompts)):
            if rate != float("inf"):
                await asyncio.sleep(rng.exponential(1.0 / rate))
            tasks.append(asyncio.create_task(one(i)))
        await asyncio.gather(*tasks)

    t0 = time.perf_counter()
    try:
        await paced()
    finally:
        await client.close()
    return traces, time.perf_counter() - t0


def summarize_errors(traces: list[StreamTrace]) -> tuple[int, str | None]:
    errs = [t.error for t in traces if t.error]
    return len(errs), (errs[0] if errs else None)
