"""Sampling: seeded reproducibility, n sequences, top-k/top-p/min-p bounds, penalties and
logprobs, each checked against a reference (transformers or a few lines of torch)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from inflight.sampling_params import SamplingParams

PROMPT = "The scheduler frees 42 blocks"
OTHERS = ["Hi", "你好，世界。", "def add(a, b):\n    return a + b\n", "emoji 😀🚀 here"]
SAMPLED: dict[str, Any] = {"temperature": 0.8, "top_k": 50, "top_p": 0.9, "max_tokens": 32,
                           "ignore_eos": True}
N_GREEDY = 32


def _greedy(llm: Any, prompt: str | list[int], n: int = N_GREEDY, **kw: Any) -> Any:
    params = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, **kw)
    return llm.generate(prompt, params)[0].outputs[0]


# ----------------------------------------------------------------------------- seeds


def test_seeded_sampling_is_reproducible_across_batch_compositions(
        llm: Any, make_llm: Callable[..., Any], generate_together: Callable[..., Any]) -> None:
    target = SamplingParams(seed=1234, **SAMPLED)
    alone = llm.generate(PROMPT, target)[0].outputs[0].token_ids
    assert len(alone) == 32
    assert llm.generate(PROMPT, target)[0].outputs[0].token_ids == alone
    others = [SamplingParams(temperature=0.0, max_tokens=20),
              SamplingParams(temperature=1.0, max_tokens=40, ignore_eos=True),  # unseeded
              SamplingParams(seed=99, **SAMPLED),
              SamplingParams(seed=1234, temperature=0.5, top_k=5, max_tokens=32)]
    outs = generate_together(llm, [PROMPT] + OTHERS + [PROMPT], [target] + others + [target])
    assert outs[0].outputs[0].token_ids == alone
    assert outs[-1].outputs[0].token_ids == alone  # same seed, same prompt: same draw
    # a different order, the target in the middle
    outs = generate_together(llm, OTHERS[::-1][:2] + [PROMPT] + OTHERS[::-1][2:],
                             others[::-1][:2] + [target] + others[::-1][2:])
    assert outs[2].outputs[0].token_ids == alone
    # another engine splitting the prompt into chunks
    chunked = make_llm(max_num_tokens=4, enable_chunked_context=True)
    outs = generate_together(chunked, [PROMPT] + OTHERS, [target] + others)
    assert outs[0].outputs[0].token_ids == alone


def test_different_seeds_give_different_samples(llm: Any) -> None:
    outs = [llm.generate(PROMPT, SamplingParams(seed=s, **SAMPLED))[0].outputs[0].token_ids
            for s in (1, 2, 3)]
    assert len({tuple(o) for o in outs}) == 3
    assert all(o != _greedy(llm, PROMPT).token_ids for o in outs)


def test_top_k_1_and_tiny_top_p_are_greedy(llm: Any) -> None:
    greedy = _greedy(llm, PROMPT).token_ids
    for extra in ({"top_k": 1}, {"top_p": 1e-6}, {"min_p": 1.0}):
        params = SamplingParams(temperature=1.5, max_tokens=N_GREEDY, ignore_eos=True, **extra)
        assert llm.generate(PROMPT, params)[0].outputs[0].token_ids == greedy, extra


def test_n_sequences_seeded_are_distinct_and_reproducible(llm: Any) -> None:
    params = SamplingParams(n=3, seed=5, **SAMPLED)
    out = llm.generate(PROMPT, params)[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    seqs = [tuple(c.token_ids) for c in out.outputs]
    assert all(len(s) == 32 for s in seqs)
    assert len(set(seqs)) == 3
    assert all(c.finish_reason == "length" for c in out.outputs)
    assert [tuple(c.token_ids) for c in llm.generate(PROMPT, params)[0].outputs] == seqs
    for c in out.outputs:
        assert c.text == llm.tokenizer.decode(c.token_ids, skip_special_tokens=True)


def test_n_sequences_unseeded_and_greedy(llm: Any) -> None:
    out = llm.generate(PROMPT, SamplingParams(n=4, **SAMPLED))[0]
    assert len(out.outputs) == 4 and all(len(c.token_ids) == 32 for c in out.outputs)
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    greedy = _greedy(llm, PROMPT).token_ids
    out = llm.generate(PROMPT, SamplingParams(n=2, temperature=0.0, max_tokens=N_GREEDY,
                                              ignore_eos=True))[0]
    assert [c.token_ids for c in out.outputs] == [greedy, greedy]


# ----------------------------------------------------------------------------- filters


def _sampled_with_ref(llm: Any, hf_logits: Callable[..., torch.Tensor], params: SamplingParams
                      ) -> tuple[Any, torch.Tensor]:
    """Run one request; returns its output and HF's raw logits [num_output, V] at each step."""
    out = llm.generate(PROMPT, params)[0]
    c = out.outputs[0]
    n = len(out.prompt_token_ids)
    logits = hf_logits("llama", out.prompt_token_ids + c.token_ids)[n - 1:n - 1 + len(c.token_ids)]
    return c, logits


def test_sampled_logprobs_match_reference_and_respect_top_k(
        llm: Any, hf_logits: Callable[..., torch.Tensor]) -> None:
    k = 5
    params = SamplingParams(temperature=1.0, top_k=k, seed=11, max_tokens=32, ignore_eos=True,
                            logprobs=k)
    c, logits = _sampled_with_ref(llm, hf_logits, params)
    logp = logits.log_softmax(-1)
    assert len(c.logprobs) == 32
    for step, (tok, lp) in enumerate(zip(c.token_ids, c.logprobs, strict=True)):
        top = logp[step].topk(k)
        assert tok in top.indices.tolist(), f"step {step}: sampled outside the top-{k}"
        assert lp[tok] == pytest.approx(logp[step, tok].item(), abs=1e-4)
        assert set(lp) == set(top.indices.tolist())  # chosen is among the top-k: k entries
        torch.testing.assert_close(torch.tensor(sorted(lp.values(), reverse=True)), top.values,
                                   atol=1e-4, rtol=0)
    assert c.cumulative_logprob == pytest.approx(sum(lp[t] for t, lp in zip(c.token_ids, c.logprobs, strict=True)))


def test_logprobs_zero_gives_only_the_chosen_token(llm: Any) -> None:
    c = llm.generate(PROMPT, SamplingParams(seed=3, logprobs=0, **SAMPLED))[0].outputs[0]
    assert [list(lp) for lp in c.logprobs] == [[t] for t in c.token_ids]
    assert all(lp[t] <= 0 for t, lp in zip(c.token_ids, c.logprobs, strict=True))


def test_top_p_keeps_the_nucleus(llm: Any, hf_logits: Callable[..., torch.Tensor]) -> None:
    temp, top_p = 0.7, 0.5
    params = SamplingParams(temperature=temp, top_p=top_p, seed=21, max_tokens=32, ignore_eos=True)
    c, logits = _sampled_with_ref(llm, hf_logits, params)
    probs = (logits / temp).softmax(-1)
    for step, tok in enumerate(c.token_ids):
        p = probs[step]
        mass_before = p[p > p[tok]].sum().item()
        assert mass_before < top_p + 1e-5, f"step {step}: outside the nucleus"


def test_min_p_threshold(llm: Any, hf_logits: Callable[..., torch.Tensor]) -> None:
    temp, min_p = 1.0, 0.3
    params = SamplingParams(temperature=temp, min_p=min_p, seed=5, max_tokens=32, ignore_eos=True)
    c, logits = _sampled_with_ref(llm, hf_logits, params)
    probs = (logits / temp).softmax(-1)
    for step, tok in enumerate(c.token_ids):
        assert probs[step, tok] >= min_p * probs[step].max() - 1e-6


# ----------------------------------------------------------------------------- penalties


PENALTY_PROMPTS = ["Hi", "the the the the the the", "你好，世界。你好，世界。"]


def test_repetition_penalty_matches_hf(llm: Any, hf_greedy: Callable[..., list[int]]) -> None:
    changed = 0
    for prompt in PENALTY_PROMPTS:
        c = _greedy(llm, prompt, repetition_penalty=1.8)
        ids = llm.engine.tokenize(prompt)
        assert c.token_ids == hf_greedy("llama", ids, N_GREEDY, repetition_penalty=1.8)
        changed += c.token_ids != _greedy(llm, prompt).token_ids
    assert changed, "repetition_penalty changed nothing"


def _penalized_greedy_ref(hf_logits: Callable[..., torch.Tensor], prompt_ids: list[int], n: int,
                          presence: float, frequency: float) -> list[int]:
    """OpenAI semantics: logits - frequency * count - presence * [count > 0] over the output."""
    ids = list(prompt_ids)
    out: list[int] = []
    for _ in range(n):
        logits = hf_logits("llama", ids)[-1]
        counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=logits.numel()).float()
        t = int((logits - frequency * counts - presence * (counts > 0).float()).argmax())
        ids.append(t)
        out.append(t)
    return out


@pytest.mark.parametrize("presence,frequency", [(2.0, 0.0), (0.0, 1.5), (-2.0, 0.0)])
def test_presence_frequency_penalties_match_reference(
        llm: Any, hf_logits: Callable[..., torch.Tensor], presence: float,
        frequency: float) -> None:
    changed = 0
    for prompt in PENALTY_PROMPTS:
        c = _greedy(llm, prompt, n=24, presence_penalty=presence, frequency_penalty=frequency)
        ref = _penalized_greedy_ref(hf_logits, llm.engine.tokenize(prompt), 24, presence, frequency)
        assert c.token_ids == ref, prompt
        changed += c.token_ids != _greedy(llm, prompt, n=24).token_ids
    assert changed, "the penalty changed nothing"


def test_penalties_apply_per_request_in_a_batch(llm: Any,
                                                generate_together: Callable[..., Any]) -> None:
    plain = SamplingParams(temperature=0.0, max_tokens=N_GREEDY, ignore_eos=True)
    pen = SamplingParams(temperature=0.0, max_tokens=N_GREEDY, ignore_eos=True,
                         presence_penalty=2.0, repetition_penalty=1.5)
    ref_plain = [_greedy(llm, p).token_ids for p in PENALTY_PROMPTS]
    ref_pen = [llm.generate(p, pen)[0].outputs[0].token_ids for p in PENALTY_PROMPTS]
    outs = generate_together(llm, PENALTY_PROMPTS * 2, [plain] * 3 + [pen] * 3)
    assert [o.outputs[0].token_ids for o in outs] == ref_plain + ref_pen
