"""Where generation ends and what is banned: stop strings, stop token sequences, stop token
ids, eos / end_id, min_tokens, ignore_eos and bad words. Stop strings and tokens are picked
from a known greedy output so that they really trigger."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from typing import Any

import pytest
from inflight.sampling_params import SamplingParams

PROMPTS = ["The scheduler frees 42 blocks", "Hello world", "def add(a, b):"]
N = 40
EOS = 1534  # the tiny tokenizer's <|end_of_text|>


def _params(n: int = N, **kw: Any) -> SamplingParams:
    kw.setdefault("ignore_eos", True)
    return SamplingParams(temperature=0.0, max_tokens=n, **kw)


@pytest.fixture(scope="module")
def greedy(llm: Any) -> dict[str, Any]:
    """prompt -> its greedy CompletionOutput (N tokens)."""
    return {p: llm.generate(p, _params())[0].outputs[0] for p in PROMPTS}


def _cum_texts(tok: Any, ids: list[int]) -> list[str]:
    """Text after each output token, as a client would see it."""
    return [tok.decode(ids[:i + 1], skip_special_tokens=True) for i in range(len(ids))]


def _clean(s: str) -> bool:
    return "\ufffd" not in s and s.strip() == s and len(s) > 0


def _token_boundaries(tok: Any, ids: list[int], full: str) -> list[tuple[int, int]]:
    """(token index j, char offset where token j's text starts) for every boundary where the
    text before token j is final (a prefix of the full text, no pending partial character)."""
    cum = _cum_texts(tok, ids)
    out = []
    for j in range(1, len(ids)):
        prev = cum[j - 1]
        if full.startswith(prev) and not prev.endswith("\ufffd") and len(cum[j]) > len(prev):
            out.append((j, len(prev)))
    return out


def _first_clean_stop(full: str, candidates: list[tuple[int, int]], lo: int, hi: int
                      ) -> tuple[str, int] | None:
    """A substring full[a:b] (lo <= a) without U+FFFD whose first occurrence is at a."""
    for a, b in candidates:
        s = full[a:b]
        if a >= lo and b <= hi and _clean(s) and full.find(s) == a:
            return s, a
    return None


def test_stop_string_inside_one_token(llm: Any, greedy: dict[str, Any]) -> None:
    found = 0
    for prompt, g in greedy.items():
        full = g.text
        bounds = _token_boundaries(llm.tokenizer, g.token_ids, full)
        limit = bounds[-3][1]  # completes well before max_tokens
        # two characters inside one token's text
        spans = [(s + 1, s + 3) for (j, s), (j2, s2) in zip(bounds, bounds[1:], strict=False)
                 if j2 == j + 1 and s2 - s >= 4]
        pick = _first_clean_stop(full, spans, 1, limit)
        if pick is None:
            continue
        stop, at = pick
        c = llm.generate(prompt, _params(stop=[stop]))[0].outputs[0]
        assert c.finish_reason == "stop" and c.stop_reason == stop
        assert c.text == full[:at] and stop not in c.text
        assert c.token_ids == g.token_ids[:len(c.token_ids)] and len(c.token_ids) < N
        found += 1
    assert found >= 2


def test_stop_string_spanning_two_tokens(llm: Any, greedy: dict[str, Any]) -> None:
    found = 0
    for prompt, g in greedy.items():
        full = g.text
        bounds = _token_boundaries(llm.tokenizer, g.token_ids, full)
        limit = bounds[-3][1]
        spans = [(b - 2, b + 2) for _j, b in bounds]
        pick = _first_clean_stop(full, spans, 1, limit)
        if pick is None:
            continue
        stop, at = pick
        c = llm.generate(prompt, _params(stop=["never-there", stop]))[0].outputs[0]
        assert (c.finish_reason, c.stop_reason) == ("stop", stop)
        assert c.text == full[:at]
        with_stop = llm.generate(prompt, _params(stop=[stop], include_stop_str_in_output=True))
        assert with_stop[0].outputs[0].text == full[:at + len(stop)]
        found += 1
    assert found >= 2


def test_earliest_of_several_stop_strings_wins(llm: Any, greedy: dict[str, Any]) -> None:
    prompt = PROMPTS[0]
    g = greedy[prompt]
    full = g.text
    bounds = _token_boundaries(llm.tokenizer, g.token_ids, full)
    spans = [(b, b + 2) for _j, b in bounds]
    first = _first_clean_stop(full, spans, 1, bounds[-3][1])
    assert first is not None
    later = _first_clean_stop(full, spans, first[1] + 3, bounds[-3][1])
    assert later is not None
    c = llm.generate(prompt, _params(stop=[later[0], first[0]]))[0].outputs[0]
    assert (c.stop_reason, c.text) == (first[0], full[:first[1]])


def test_stop_string_completed_by_the_last_allowed_token(llm: Any, greedy: dict[str, Any]) -> None:
    prompt = PROMPTS[0]
    g = greedy[prompt]
    full = g.text
    cum = _cum_texts(llm.tokenizer, g.token_ids)
    for k in range(5, N - 1):
        end = len(cum[k])
        stop = full[end - 2:end]
        if (full.startswith(cum[k]) and len(cum[k]) > len(cum[k - 1]) + 1 and _clean(stop)
                and full.find(stop) == end - 2):
            break
    else:
        pytest.fail("no usable stop string")
    c = llm.generate(prompt, _params(n=k + 1, stop=[stop]))[0].outputs[0]
    assert c.text == full[:end - 2]  # the text is cut either way ...
    assert (c.finish_reason, c.stop_reason) == ("stop", stop)  # ... but reported as 'length'


def _first_at(ids: list[int], lo: int, ok: Callable[[int], bool]) -> int:
    for j in range(lo, len(ids) - 2):
        if ids[j] not in ids[:j] and ok(j):
            return j
    raise AssertionError("no usable position")


def test_stop_token_ids(llm: Any, greedy: dict[str, Any]) -> None:
    tok = llm.tokenizer
    for prompt, g in greedy.items():
        ids = g.token_ids
        j = _first_at(ids, 3, lambda j, ids=ids: not tok.decode(ids[:j]).endswith("\ufffd"))
        c = llm.generate(prompt, _params(stop_token_ids=[ids[j]]))[0].outputs[0]
        assert (c.finish_reason, c.stop_reason) == ("stop", ids[j])
        assert c.token_ids == ids[:j + 1]  # the stop token stays in the ids, not in the text
        assert c.text == tok.decode(ids[:j], skip_special_tokens=True)


def test_stop_token_sequences_are_cut_from_the_output(llm: Any, greedy: dict[str, Any]) -> None:
    tok = llm.tokenizer
    for prompt, g in greedy.items():
        ids = g.token_ids

        def first_pair(j: int, ids: list[int] = ids) -> bool:
            pairs = list(zip(ids, ids[1:], strict=False))
            return (pairs.index((ids[j], ids[j + 1])) == j
                    and not tok.decode(ids[:j]).endswith("\ufffd"))

        j = _first_at(ids, 3, first_pair)
        word = [ids[j], ids[j + 1]]
        c = llm.generate(prompt, _params(stop_words_ids=[[9, 9, 9], word]))[0].outputs[0]
        assert c.finish_reason == "stop" and c.stop_reason is not None
        assert c.token_ids == ids[:j]
        assert c.text == tok.decode(ids[:j], skip_special_tokens=True)
        kept = llm.generate(prompt, _params(stop_words_ids=[word], include_stop_str_in_output=True))
        assert kept[0].outputs[0].token_ids == ids[:j + 2]


def test_stop_token_sequences_streamed(llm: Any, greedy: dict[str, Any]) -> None:
    """Held-back tokens that turn out not to be a stop sequence are released in order."""
    prompt = PROMPTS[1]
    ids = greedy[prompt].token_ids
    # a 3-token word whose first two tokens occur but never followed by the third
    word = [ids[4], ids[5], (ids[6] + 1) % 1000]
    assert all(ids[i:i + 3] != word for i in range(len(ids)))
    ups = list(llm.stream(prompt, _params(stop_words_ids=[word])))
    assert [t for u in ups for t in u.token_ids] == ids
    assert "".join(u.text for u in ups) == greedy[prompt].text
    assert ups[-1].finish_reason == "length"


def test_min_tokens_defers_stop_tokens(llm: Any, greedy: dict[str, Any],
                                       hf_greedy: Callable[..., list[int]]) -> None:
    prompt = PROMPTS[0]
    ids = greedy[prompt].token_ids
    stop = ids[2]
    for min_tokens in (0, 6):
        c = llm.generate(prompt, _params(stop_token_ids=[stop], min_tokens=min_tokens,
                                         ignore_eos=False))[0].outputs[0]
        ref = hf_greedy("llama", llm.engine.tokenize(prompt), N, eos_token_id=[stop, EOS],
                        min_new_tokens=min_tokens)
        assert c.token_ids == ref
        assert len(c.token_ids) >= max(min_tokens, 3)
        assert stop not in c.token_ids[:min_tokens]
    assert len(c.token_ids) > 3  # with min_tokens the early stop did not happen


@pytest.fixture(scope="module")
def eos_case(llm: Any, greedy: dict[str, Any], tmp_path_factory: pytest.TempPathFactory,
             tiny_model_dir: Callable[[str], str]) -> tuple[str, int, int]:
    """A copy of the llama checkpoint whose generation_config also ends on a token that the
    greedy output of PROMPTS[0] produces at index j. Returns (model dir, token, j)."""
    ids = greedy[PROMPTS[0]].token_ids
    j = _first_at(ids, 4, lambda j: not llm.tokenizer.decode(ids[:j]).endswith("\ufffd"))
    src = tiny_model_dir("llama")
    dst = tmp_path_factory.mktemp("eos_model")
    for name in os.listdir(src):
        shutil.copy(os.path.join(src, name), dst / name)
    cfg = json.loads((dst / "generation_config.json").read_text())
    cfg["eos_token_id"] = [EOS, ids[j]]
    (dst / "generation_config.json").write_text(json.dumps(cfg))
    return str(dst), ids[j], j


def test_generation_config_eos_ends_and_ignore_eos_and_min_tokens(
        eos_case: tuple[str, int, int], make_llm: Callable[..., Any], greedy: dict[str, Any],
        hf_greedy: Callable[..., list[int]]) -> None:
    model_dir, eos, j = eos_case
    llm = make_llm(model_dir=model_dir)
    assert eos in llm.engine.eos_token_ids
    prompt = PROMPTS[0]
    ids = greedy[prompt].token_ids
    c = llm.generate(prompt, _params(ignore_eos=False))[0].outputs[0]
    assert (c.finish_reason, c.stop_reason) == ("stop", eos)
    assert c.token_ids == ids[:j + 1]
    assert c.text == llm.tokenizer.decode(ids[:j], skip_special_tokens=True)
    prompt_ids = llm.engine.tokenize(prompt)
    assert c.token_ids == hf_greedy("llama", prompt_ids, N, eos_token_id=[EOS, eos], min_new_tokens=0)
    # ignore_eos: the whole greedy output
    c = llm.generate(prompt, _params(ignore_eos=True))[0].outputs[0]
    assert c.token_ids == ids and c.finish_reason == "length"
    # min_tokens: eos is banned until then (as HF's min_new_tokens)
    c = llm.generate(prompt, _params(ignore_eos=False, min_tokens=j + 3))[0].outputs[0]
    assert len(c.token_ids) >= j + 3 and eos not in c.token_ids[:j + 3]
    assert c.token_ids == hf_greedy("llama", prompt_ids, N, eos_token_id=[EOS, eos],
                                    min_new_tokens=j + 3)


def test_end_id_ends_generation(llm: Any, eos_case: tuple[str, int, int],
                                greedy: dict[str, Any]) -> None:
    _dir, eos, j = eos_case
    ids = greedy[PROMPTS[0]].token_ids
    c = llm.generate(PROMPTS[0], _params(end_id=eos, ignore_eos=False))[0].outputs[0]
    assert (c.finish_reason, c.stop_reason) == ("stop", eos)
    assert c.token_ids == ids[:j + 1]


def test_bad_words_ids_never_appear(llm: Any, greedy: dict[str, Any],
                                    hf_greedy: Callable[..., list[int]]) -> None:
    for prompt, g in greedy.items():
        ids = g.token_ids
        prompt_ids = llm.engine.tokenize(prompt)
        single = [[ids[1]], [ids[5]]]
        c = llm.generate(prompt, _params(bad_words_ids=single))[0].outputs[0]
        assert ids[1] not in c.token_ids and ids[5] not in c.token_ids
        assert c.token_ids[:1] == ids[:1] and c.token_ids != ids
        assert c.token_ids == hf_greedy("llama", prompt_ids, N, bad_words_ids=single)
        # a two-token word: only its last token is banned, right after its first
        pair = [[ids[3], ids[4]]]
        c = llm.generate(prompt, _params(bad_words_ids=pair))[0].outputs[0]
        assert all(c.token_ids[i:i + 2] != pair[0] for i in range(len(c.token_ids)))
        assert c.token_ids[:4] == ids[:4] and c.token_ids[4] != ids[4]
        assert c.token_ids == hf_greedy("llama", prompt_ids, N, bad_words_ids=pair)


def test_bad_words_strings(llm: Any, greedy: dict[str, Any]) -> None:
    tok = llm.tokenizer
    prompt = PROMPTS[0]
    ids = greedy[prompt].token_ids

    def usable(j: int) -> bool:
        word = tok.decode([ids[j]])
        return _clean(word) and tok.encode(word, add_special_tokens=False) == [ids[j]]

    j = _first_at(ids, 1, usable)
    word = tok.decode([ids[j]])
    params = _params(bad_words=[word])
    c = llm.generate(prompt, params)[0].outputs[0]
    assert ids[j] not in c.token_ids
    assert c.token_ids[:j] == ids[:j] and c.token_ids[j] != ids[j]
    assert params.bad_words_ids == [[ids[j]]]  # the string was tokenized once, at admission
