"""Helpers for the engine tests, as fixtures: Hugging Face greedy references and a batch
submitter that guarantees its requests reach the engine in one step."""

from __future__ import annotations

import itertools
import queue
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from inflight.outputs import CompletionOutput, RequestOutput
from inflight.sampling_params import SamplingParams

_ids = itertools.count()


@pytest.fixture(scope="session")
def hf_greedy(hf_model: Callable[[str], Any]) -> Callable[..., list[int]]:
    """(family, prompt_ids, n, **generate_kwargs) -> exactly n new greedy token ids from
    transformers ``generate`` (min_new_tokens = max_new_tokens = n unless overridden)."""

    def run(family: str, prompt_ids: Sequence[int], n: int, **kw: Any) -> list[int]:
        kw.setdefault("min_new_tokens", n)
        ids = torch.tensor([list(prompt_ids)])
        with torch.no_grad():
            out = hf_model(family).generate(ids, max_new_tokens=n, do_sample=False, **kw)
        return out[0, ids.shape[1]:].tolist()

    return run


@pytest.fixture(scope="session")
def hf_logits(hf_model: Callable[[str], Any]) -> Callable[[str, Sequence[int]], torch.Tensor]:
    """(family, token_ids) -> float32 logits [len(token_ids), V] of one forward pass."""

    def run(family: str, token_ids: Sequence[int]) -> torch.Tensor:
        with torch.no_grad():
            return hf_model(family)(torch.tensor([list(token_ids)])).logits[0].float()

    return run


def _generate_together(llm: Any, prompts: Sequence[str | list[int]],
                       params: SamplingParams | Sequence[SamplingParams]) -> list[RequestOutput]:
    plist = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
    sink: queue.SimpleQueue[Any] = queue.SimpleQueue()
    outs: list[RequestOutput] = []
    # Holding the loop's (re-entrant) lock keeps the engine thread from draining its inbox
    # until every request is in it: the first step sees all of them.
    with llm.loop._cv:
        for prompt, sp in zip(prompts, plist, strict=True):
            rid = f"together-{next(_ids)}"
            ids = llm.loop.submit(rid, prompt, sp, sink.put)
            outs.append(RequestOutput(rid, prompt if isinstance(prompt, str) else None, ids,
                                      [CompletionOutput(i) for i in range(sp.n)]))
    by_id = {o.request_id: o for o in outs}
    remaining = sum(len(o.outputs) for o in outs)
    while remaining:
        u = sink.get(timeout=120)
        by_id[u.request_id].outputs[u.index].apply(u)
        remaining -= u.finished
    return outs


@pytest.fixture(scope="session")
def generate_together() -> Callable[..., list[RequestOutput]]:
    """(llm, prompts, params) -> RequestOutputs, all requests admitted to the same inbox."""
    return _generate_together
