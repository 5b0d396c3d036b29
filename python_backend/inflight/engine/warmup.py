"""Warm-up before ready: run a few dummy requests through real steps so the kernels a server
will need are compiled (OpenAI-Triton JIT specializations, cuBLAS heuristics, the sampler's
paths) before it reports ready. The H200 profile of issue 13 saw Triton kernels compiling
8 s into serving; the offline benchmark always warmed up first.

The requests cover a prefill alone, prefill chunks mixed with decodes, several prompt lengths
(different attention and GEMM shapes) and the default sampler paths (greedy, temperature
with top-k/top-p, logprobs, min_tokens, penalties), then single prompts alone (eager
single-request steps just past the mixed-step graphs). Afterwards the engine is idle again:
no live sequence, every KV block free, and the step counter back at 0 (fault injection and
metrics count real steps); any kernel compiled after this is logged (engine/late_compiles.py).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from inflight.engine.late_compiles import watch as watch_late_compiles
from inflight.sampling_params import SamplingParams

if TYPE_CHECKING:
    from inflight.engine.core import LLMEngine

log = logging.getLogger(__name__)
WARMUP_PREFIX = "__inflight_warmup"


def should_warm_up(mode: str, device_type: str) -> bool:
    """``warmup``: auto = on for CUDA (cheap there, and what it is for), on, off."""
    return mode == "on" or (mode == "auto" and device_type == "cuda")


def _lengths(engine: LLMEngine) -> list[int]:
    cap = min(engine.max_seq_len - 8, engine.cfg.max_num_tokens // 2)
    # odd lengths and multiples of 16: OpenAI-Triton specializes integer arguments on
    # divisibility by 16 (and == 1), so both kinds of shape compile here, not while serving
    return sorted({max(1, min(n, cap)) for n in (1, 7, 33, 64, 130, 256, 515)})


def warm_up(engine: LLMEngine, max_steps: int = 64) -> float:
    """Run the dummy requests to their end; returns the seconds it took."""
    t0 = time.monotonic()
    vocab = engine.vocab_size
    samplers = [SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True),
                SamplingParams(max_tokens=4, temperature=0.8, top_k=50, top_p=0.9, ignore_eos=True),
                SamplingParams(max_tokens=4, temperature=0.0, logprobs=1, ignore_eos=True),
                # min_tokens masks the end ids; penalties read the history (a non-overlapped step)
                SamplingParams(max_tokens=4, min_tokens=2, temperature=0.7, repetition_penalty=1.1)]
    lengths = _lengths(engine)
    # one request first: its second step is a decode mixed with the other prompts' prefill
    first, rest = lengths[0], lengths[1:]
    engine.add_request(f"{WARMUP_PREFIX}-0", [(7 * i + 3) % vocab for i in range(first)], samplers[0])
    engine.step()
    for k, n in enumerate(rest, 1):
        engine.add_request(f"{WARMUP_PREFIX}-{k}", [(11 * i + k) % vocab for i in range(n)],
                           samplers[k % len(samplers)])
    steps = 0
    while engine.has_unfinished() and steps < max_steps:
        engine.step()
        steps += 1
    # prompts alone, each with its decodes: 16 tokens (every size a multiple of 16), and just
    # past the mixed-step graphs an odd and an aligned length: the eager single-request steps
    # a quiet server meets (the graphs take the shorter prompts; cuBLAS shapes and sampler
    # paths of one request warm here)
    alone = _alone_lengths(engine)
    for n in alone:
        engine.add_request(f"{WARMUP_PREFIX}-alone-{n}", [(13 * i + 5) % vocab for i in range(n)],
                           samplers[0])
        while engine.has_unfinished() and steps < (2 + len(alone)) * max_steps:
            engine.step()
            steps += 1
    for rid in list(engine.children):  # never expected: leave nothing behind
        engine.abort(rid)
    engine.num_steps = 0
    engine.last_step_tokens = 0
    took = time.monotonic() - t0
    log.info("warm-up: prompt lengths %s together, %s alone, %d steps, %.2f s", lengths, alone,
             steps + 1, took)
    watch_late_compiles()  # from now on a compile stalls a real request: count and log it
    return took


def _alone_lengths(engine: LLMEngine) -> list[int]:
    cap = min(engine.max_seq_len - 8, engine.cfg.max_num_tokens)
    mg = engine.runner.mixed_graphs
    limit = mg.sizes[-1] if mg is not None else 0  # longer prompts run eagerly
    return sorted({max(1, min(n, cap)) for n in (16, limit + 3, limit + 16)})
