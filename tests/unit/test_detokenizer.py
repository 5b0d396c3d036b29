"""IncrementalDetokenizer: deltas concatenate to tokenizer.decode (multi-byte characters
split across tokens included), stop strings are cut exactly, hold-back never leaks a
partial stop string."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from inflight.engine.detokenizer import IncrementalDetokenizer
from transformers import AutoTokenizer

MULTIBYTE_TEXTS = [
    "你好，世界。今天天气很好。こんにちは、東京。안녕하세요.",
    "emoji 😀🚀 👩\u200d💻 🦀🧬🪐 🇯🇵 and ñandú ☃",
    "rare: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ☃ ∑ Ωµ ﷽",
]


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Callable[[str], str]) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model_dir("llama"))


def _run(tok: Any, prompt: list[int], ids: list[int], chunks: list[int] | None = None,
         **kw: Any) -> tuple[IncrementalDetokenizer, list[str]]:
    """Feed ids in chunks (default one by one), taking a delta after each; returns the
    detokenizer and every delta (the last one final)."""
    d = IncrementalDetokenizer(tok, prompt, **kw)
    deltas = []
    i = 0
    for k in chunks or [1] * len(ids):
        d.add(ids[i:i + k])
        i += k
        deltas.append(d.take_delta(False))
    d.add(ids[i:])
    d.flush()
    deltas.append(d.take_delta(True))
    return d, deltas


def _chunks(rng: random.Random, n: int) -> list[int]:
    out = []
    while sum(out) < n:
        out.append(rng.randint(1, 4))
    return out


@settings(max_examples=150, deadline=None, database=None)
@given(ids=st.lists(st.integers(0, 1535), min_size=1, max_size=40),
       seed=st.integers(0, 2**16), skip=st.booleans())
def test_random_token_sequences_match_decode(tok: Any, ids: list[int], seed: int,
                                             skip: bool) -> None:
    prompt = tok.encode("Hello world")
    _d, deltas = _run(tok, prompt, ids, _chunks(random.Random(seed), len(ids)),
                      skip_special_tokens=skip)
    assert "".join(deltas) == tok.decode(ids, skip_special_tokens=skip)


@pytest.mark.parametrize("text", MULTIBYTE_TEXTS)
def test_multibyte_characters_are_never_split(tok: Any, text: str) -> None:
    ids = tok.encode(text, add_special_tokens=False)
    # the tokenization really splits characters: some tokens decode to partial bytes
    assert any("\ufffd" in tok.decode([t]) for t in ids)
    _d, deltas = _run(tok, tok.encode("Hi"), ids)
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)
    assert sum(1 for d in deltas if d) > 3  # text flows as characters complete


def test_a_trailing_partial_character_is_flushed_as_replacement(tok: Any) -> None:
    ids = tok.encode("☃", add_special_tokens=False)
    assert len(ids) > 1
    d = IncrementalDetokenizer(tok, tok.encode("Hi"))
    d.add(ids[:1])
    assert d.take_delta(False) == ""  # held: could still become a character
    d.flush()
    assert d.take_delta(True) == tok.decode(ids[:1]) == "\ufffd"


def test_special_tokens_skipped_or_kept(tok: Any) -> None:
    ids = tok.encode("Hi there", add_special_tokens=False) + [tok.eos_token_id]
    _d, deltas = _run(tok, [tok.bos_token_id], ids)
    assert "".join(deltas) == "Hi there"
    _d, deltas = _run(tok, [tok.bos_token_id], ids, skip_special_tokens=False)
    assert "".join(deltas) == "Hi there" + tok.eos_token


def _stop_case(tok: Any, text: str, stop: str) -> tuple[list[int], int]:
    """Token ids of text, asserting that stop spans a token boundary."""
    ids = tok.encode(text, add_special_tokens=False)
    at = text.find(stop)
    cum = [len(tok.decode(ids[:i + 1])) for i in range(len(ids))]
    assert any(at < c < at + len(stop) for c in cum), "stop must span two tokens"
    return ids, at


@pytest.mark.parametrize("text,stop", [
    ("Hello world, the scheduler frees blocks", "ld, the"),
    ("Hello world, the scheduler frees blocks", "o w"),
    ("你好，世界。今天天气很好。", "世界。今"),
])
def test_stop_string_spanning_deltas_is_cut_exactly(tok: Any, text: str, stop: str) -> None:
    ids, at = _stop_case(tok, text, stop)
    d, deltas = _run(tok, tok.encode("Hi"), ids, stop=["never", stop])
    assert d.stopped_by == stop
    emitted = ""
    for delta in deltas:
        emitted += delta
        assert text[:at].startswith(emitted)  # nothing past the cut is ever emitted
    assert emitted == text[:at] and d.text == text[:at]
    d, deltas = _run(tok, tok.encode("Hi"), ids, stop=[stop], include_stop=True)
    assert "".join(deltas) == text[:at + len(stop)]


def test_text_after_the_stop_is_ignored(tok: Any) -> None:
    text = "stop here and then more text"
    ids = tok.encode(text, add_special_tokens=False)
    d, deltas = _run(tok, [], ids, stop=["here"])
    assert "".join(deltas) == "stop " and d.stopped_by == "here"


class _CharTokenizer:
    """One token per character (id = code point): hold-back can be checked char by char."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True,
               clean_up_tokenization_spaces: bool = False) -> str:
        return "".join(map(chr, ids))


def _feed_chars(d: IncrementalDetokenizer, s: str) -> str:
    emitted = ""
    for ch in s:
        d.add([ord(ch)])
        emitted += d.take_delta(False)
    return emitted


def test_holdback_keeps_a_possible_stop_prefix() -> None:
    d = IncrementalDetokenizer(_CharTokenizer(), [], stop=["xyz"])
    assert _feed_chars(d, "ab xy") == "ab "  # "xy" may start "xyz"
    assert _feed_chars(d, "q") == "x"  # it did not; the last len("xyz") - 1 chars wait
    assert d.take_delta(True) == "yq"
    d = IncrementalDetokenizer(_CharTokenizer(), [], stop=["xyz"])
    assert _feed_chars(d, "ab xyz tail") == "ab "
    assert d.take_delta(True) == "" and d.stopped_by == "xyz"


def _reference_cut(s: str, stops: list[str]) -> str:
    """Scan char by char; at the first point any stop string has appeared, cut at the
    earliest occurrence."""
    for end in range(1, len(s) + 1):
        hits = [s.find(x, 0, end) for x in stops if s.find(x, 0, end) >= 0]
        if hits:
            return s[:min(hits)]
    return s


@settings(max_examples=300, deadline=None, database=None)
@given(s=st.text(alphabet="abxyz", max_size=30),
       stops=st.lists(st.text(alphabet="abxyz", min_size=1, max_size=4), min_size=1, max_size=3))
def test_holdback_never_emits_a_partial_stop_string(s: str, stops: list[str]) -> None:
    d = IncrementalDetokenizer(_CharTokenizer(), [], stop=stops)
    expected = _reference_cut(s, stops)
    emitted = ""
    for ch in s:
        d.add([ord(ch)])
        emitted += d.take_delta(False)
        assert expected.startswith(emitted)
        # what is held back is at most the longest stop string minus one character
        assert len(d.text) - len(emitted) <= max(map(len, stops)) - 1 or d.stopped_by
    d.flush()
    emitted += d.take_delta(True)
    assert emitted == expected
    assert (d.stopped_by is not None) == any(x in s for x in stops)


def test_output_completing_a_prompt_partial_character(tok: Any) -> None:
    ids = tok.encode("rare 𝔘 done", add_special_tokens=False)
    cut = next(i for i in range(1, len(ids)) if tok.decode(ids[:i]).endswith("\ufffd"))
    prompt, out = ids[:cut], ids[cut:]
    _d, deltas = _run(tok, prompt, out)
    before = tok.decode(prompt).rstrip("\ufffd")
    assert "".join(deltas) == tok.decode(ids)[len(before):]  # "𝔘 done"
