"""The same request gives the same tokens whatever else runs with it and however the
engine splits, preempts or reuses its KV: alone, batched, chunked, preempted, prefix-hit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from inflight.errors import InvalidRequestError
from inflight.sampling_params import SamplingParams

# 8 prompts of mixed lengths (1 .. 55 tokens with BOS)
PROMPTS8 = [
    "",
    "Hi",
    "你好",
    "Hello world, this is a test",
    "def add(a, b):\n    return a + b\n",
    "emoji 😀🚀 👩\u200d💻 and more emoji 🇯🇵 here",
    "The scheduler frees 42 blocks, then allocates more of them for the next request",
    "In-flight batching mixes prefill chunks and decodes under one token budget; "
    "preemption recomputes",
]
MAX_TOKENS = 24
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
SEEDED = SamplingParams(temperature=0.8, top_k=40, top_p=0.9, seed=7, max_tokens=MAX_TOKENS,
                        ignore_eos=True, logprobs=0)


def _mixed_params() -> list[SamplingParams]:
    """Even requests greedy, odd ones seeded sampling with logprobs (each its own object)."""
    return [SamplingParams(**{**vars(SEEDED), "seed": 100 + i}) if i % 2 else GREEDY
            for i in range(len(PROMPTS8))]


@pytest.fixture(scope="module")
def alone(llm: Any) -> list[list[int]]:
    """Each of PROMPTS8 (with _mixed_params) run by itself on the shared engine."""
    return [llm.generate(p, sp)[0].outputs[0].token_ids
            for p, sp in zip(PROMPTS8, _mixed_params(), strict=True)]


def _check(outs: list[Any], alone: list[list[int]]) -> None:
    for i, (out, ref) in enumerate(zip(outs, alone, strict=True)):
        c = out.outputs[0]
        assert c.token_ids == ref, f"prompt {i} diverged"
        assert len(c.token_ids) == MAX_TOKENS and c.finish_reason == "length"
        assert c.metrics.num_output_tokens == MAX_TOKENS
        if c.logprobs is not None:  # no duplicated / lost logprob entries either
            assert len(c.logprobs) == MAX_TOKENS
            assert c.cumulative_logprob == pytest.approx(
                sum(lp[t] for t, lp in zip(c.token_ids, c.logprobs, strict=True)), abs=1e-5)


def test_prompt_lengths_are_mixed(llm: Any) -> None:
    lengths = [len(llm.engine.tokenize(p)) for p in PROMPTS8]
    assert len(set(lengths)) == len(lengths) and min(lengths) == 1 and max(lengths) > 24


def test_batch_of_8_matches_alone(llm: Any, alone: list[list[int]],
                                  generate_together: Callable[..., Any]) -> None:
    _check(generate_together(llm, PROMPTS8, _mixed_params()), alone)
    # reversed submission order, too
    outs = generate_together(llm, PROMPTS8[::-1], _mixed_params()[::-1])
    _check(outs[::-1], alone)


@pytest.mark.parametrize("max_num_tokens", [8, 5])
def test_chunked_prefill_matches_alone(make_llm: Callable[..., Any], alone: list[list[int]],
                                       generate_together: Callable[..., Any],
                                       max_num_tokens: int) -> None:
    small = make_llm(max_num_tokens=max_num_tokens, enable_chunked_context=True)
    outs = generate_together(small, PROMPTS8, _mixed_params())
    _check(outs, alone)
    assert max(len(o.prompt_token_ids) for o in outs) > 3 * max_num_tokens  # really chunked


def test_chunked_context_logits_match_unchunked(llm: Any, make_llm: Callable[..., Any]) -> None:
    small = make_llm(max_num_tokens=8, enable_chunked_context=True)
    params = SamplingParams(temperature=0.0, max_tokens=2, return_context_logits=True)
    ref = llm.generate(PROMPTS8, params)
    got = small.generate(PROMPTS8, params)
    for r, g in zip(ref, got, strict=True):
        assert g.outputs[0].context_logits.shape == (len(r.prompt_token_ids), llm.engine.vocab_size)
        torch.testing.assert_close(g.outputs[0].context_logits, r.outputs[0].context_logits,
                                   atol=1e-4, rtol=0)
        assert g.outputs[0].token_ids == r.outputs[0].token_ids


# A pool of 24 blocks of 4 tokens: the longest request (55 + 24 tokens = 20 blocks) fits
# alone, but 8 requests together (~70 blocks) cannot.
TIGHT_POOL = {"max_tokens_in_paged_kv_cache": 96, "block_size": 4}


def test_preemption_under_max_utilization_keeps_outputs(
        make_llm: Callable[..., Any], alone: list[list[int]],
        generate_together: Callable[..., Any]) -> None:
    small = make_llm(batch_scheduler_policy="max_utilization", **TIGHT_POOL)
    assert small.engine.kv.num_blocks == 24
    outs = generate_together(small, PROMPTS8, _mixed_params())
    preemptions = [o.outputs[0].metrics.num_preemptions for o in outs]
    assert sum(preemptions) > 0, "the pool was meant to force preemption"
    _check(outs, alone)


def test_preemption_with_chunked_prefill_keeps_outputs(
        make_llm: Callable[..., Any], alone: list[list[int]],
        generate_together: Callable[..., Any]) -> None:
    small = make_llm(batch_scheduler_policy="max_utilization", max_num_tokens=8, **TIGHT_POOL)
    outs = generate_together(small, PROMPTS8, _mixed_params())
    assert sum(o.outputs[0].metrics.num_preemptions for o in outs) > 0
    _check(outs, alone)


def test_preemption_streams_no_duplicate_tokens(make_llm: Callable[..., Any],
                                                alone: list[list[int]]) -> None:
    """Deltas of a preempted request, as a streaming client sees them."""
    small = make_llm(batch_scheduler_policy="max_utilization", **TIGHT_POOL)
    seen: dict[str, list[Any]] = {}
    with small.loop._cv:  # all in the first step
        for i, (p, sp) in enumerate(zip(PROMPTS8, _mixed_params(), strict=True)):
            seen[f"s{i}"] = []
            small.loop.submit(f"s{i}", p, sp, seen[f"s{i}"].append)
    assert small.loop.wait_idle(60)
    finals = [ups[-1] for ups in seen.values()]
    assert sum(u.metrics.num_preemptions for u in finals) > 0
    for i, ups in enumerate(seen.values()):
        assert [u.finished for u in ups] == [False] * (len(ups) - 1) + [True]
        assert [t for u in ups for t in u.token_ids] == alone[i]
        assert "".join(u.text for u in ups) == small.tokenizer.decode(alone[i], skip_special_tokens=True)


def test_guaranteed_no_evict_small_pool_never_preempts(
        make_llm: Callable[..., Any], alone: list[list[int]],
        generate_together: Callable[..., Any]) -> None:
    small = make_llm(batch_scheduler_policy="guaranteed_no_evict", **TIGHT_POOL)
    outs = generate_together(small, PROMPTS8, _mixed_params())
    assert all(o.outputs[0].metrics.num_preemptions == 0 for o in outs)
    _check(outs, alone)


def test_prefix_reuse_keeps_outputs(make_llm: Callable[..., Any], llm: Any) -> None:
    shared = "The scheduler frees 42 blocks, then allocates more of them"
    prompts = [shared + " for the next request", shared + " and so on", shared]
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    ref = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    reuse = make_llm(enable_kv_cache_reuse=True, block_size=4)
    first = reuse.generate(prompts[0], params)[0].outputs[0]
    assert first.token_ids == ref[0] and first.metrics.num_cached_tokens == 0
    for p, r in zip(prompts, ref, strict=True):
        out = reuse.generate(p, params)[0]
        c = out.outputs[0]
        assert c.token_ids == r
        n_shared = len(reuse.engine.tokenize(shared))
        # at least the full blocks of the shared prefix (minus the last prompt token) hit
        assert c.metrics.num_cached_tokens >= min(n_shared, len(out.prompt_token_ids) - 1) // 4 * 4
        assert c.metrics.kv_reused_blocks == c.metrics.num_cached_tokens // 4
        assert c.metrics.num_cached_tokens % 4 == 0 and c.metrics.num_cached_tokens > 0


def test_context_logits_with_prefix_hit_cover_whole_prompt(make_llm: Callable[..., Any],
                                                           llm: Any) -> None:
    prompt = "The scheduler frees 42 blocks and then allocates more of them"
    params = SamplingParams(temperature=0.0, max_tokens=2, return_context_logits=True)
    ref = llm.generate(prompt, params)[0].outputs[0].context_logits
    reuse = make_llm(enable_kv_cache_reuse=True, block_size=4)
    reuse.generate(prompt, params)
    again = reuse.generate(prompt, params)[0].outputs[0]
    assert again.context_logits.shape == ref.shape
    torch.testing.assert_close(again.context_logits, ref, atol=1e-4, rtol=0)


def test_requests_never_fitting_together_all_finish(make_llm: Callable[..., Any]) -> None:
    """A pool that holds exactly one max-length request serves a queue of them one by one."""
    small = make_llm(max_tokens_in_paged_kv_cache=64, block_size=4, max_seq_len=64)
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    with pytest.raises(InvalidRequestError):  # 64 + 1 tokens cannot fit
        small.generate(list(range(10, 35)), SamplingParams(max_tokens=40))
    outs = small.generate([list(range(10, 34))] * 3, params)
    assert [len(o.outputs[0].token_ids) for o in outs] == [40] * 3
    assert outs[0].outputs[0].token_ids == outs[1].outputs[0].token_ids == outs[2].outputs[0].token_ids
