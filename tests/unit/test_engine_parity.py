"""Greedy decoding, prompt logits and logprobs equal Hugging Face transformers (float32)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from inflight.sampling_params import SamplingParams

FAMILIES = ("llama", "llama2", "mistral", "qwen2", "qwen3")
PROMPTS = [
    "Hi",
    "你好，世界。今天天气很好。",
    "def add(a, b):\n    return a + b\n",
    "The scheduler frees 42 blocks, then allocates more of them for the next request "
    "in the queue 😀🚀 and so on.",
]
NEW_TOKENS = 40


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_matches_hf_generate(family: str, llm_for: Callable[[str], Any],
                                    hf_greedy: Callable[..., list[int]],
                                    generate_together: Callable[..., Any]) -> None:
    llm = llm_for(family)
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    outs = generate_together(llm, PROMPTS, params)
    lengths = {len(o.prompt_token_ids) for o in outs}
    assert len(lengths) == len(PROMPTS), "prompts must have different lengths"
    for prompt, out in zip(PROMPTS, outs, strict=True):
        assert out.prompt_token_ids == llm.tokenizer(prompt)["input_ids"]
        c = out.outputs[0]
        ref = hf_greedy(family, out.prompt_token_ids, NEW_TOKENS)
        assert c.token_ids == ref, f"{family}: {prompt!r}"
        assert c.finish_reason == "length"
        assert c.text == llm.tokenizer.decode(ref, skip_special_tokens=True)
        assert c.metrics.num_prompt_tokens == len(out.prompt_token_ids)
        assert c.metrics.num_output_tokens == NEW_TOKENS


@pytest.mark.parametrize("family", FAMILIES)
def test_context_and_generation_logits_match_hf(
        family: str, llm_for: Callable[[str], Any],
        hf_logits: Callable[[str, Any], torch.Tensor],
        generate_together: Callable[..., Any]) -> None:
    llm = llm_for(family)
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True,
                            return_context_logits=True, return_generation_logits=True)
    for out in generate_together(llm, PROMPTS, params):
        c = out.outputs[0]
        n = len(out.prompt_token_ids)
        ref = hf_logits(family, out.prompt_token_ids + c.token_ids)  # [n + 6, V]
        assert c.context_logits.shape == (n, llm.engine.vocab_size)
        torch.testing.assert_close(c.context_logits, ref[:n], atol=1e-4, rtol=0)
        # row i predicts output token i: positions n-1 .. n+4
        assert c.generation_logits.shape == (6, llm.engine.vocab_size)
        torch.testing.assert_close(c.generation_logits, ref[n - 1:n + 5], atol=1e-4, rtol=0)
        assert c.token_ids == c.generation_logits.argmax(-1).tolist()


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_greedy_logprobs_match_hf_output_logits(family: str, llm_for: Callable[[str], Any],
                                                hf_model: Callable[[str], Any],
                                                generate_together: Callable[..., Any]) -> None:
    llm = llm_for(family)
    k = 3
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, logprobs=k)
    for out in generate_together(llm, PROMPTS, params):
        c = out.outputs[0]
        with torch.no_grad():
            g = hf_model(family).generate(
                torch.tensor([out.prompt_token_ids]), max_new_tokens=24, min_new_tokens=24,
                do_sample=False, output_logits=True, return_dict_in_generate=True)
        ref_tokens = g.sequences[0, len(out.prompt_token_ids):].tolist()
        ref_logp = torch.stack(g.logits)[:, 0].float().log_softmax(-1)  # [24, V]
        assert c.token_ids == ref_tokens
        assert c.logprobs is not None and len(c.logprobs) == 24
        for step, (tok, lp) in enumerate(zip(c.token_ids, c.logprobs, strict=True)):
            assert lp[tok] == pytest.approx(ref_logp[step, tok].item(), abs=1e-4)
            # greedy: the chosen token is the top-1, so the dict holds exactly k entries
            assert len(lp) == k
            values = list(lp.values())
            assert values == sorted(values, reverse=True)
            assert next(iter(lp)) == tok
            top = ref_logp[step].topk(k)
            assert set(lp) == set(top.indices.tolist())
            torch.testing.assert_close(torch.tensor(values), top.values, atol=1e-4, rtol=0)
        chosen = [lp[t] for t, lp in zip(c.token_ids, c.logprobs, strict=True)]
        assert c.cumulative_logprob == pytest.approx(sum(chosen), abs=1e-6)
