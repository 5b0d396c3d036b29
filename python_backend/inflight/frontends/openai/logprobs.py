"""The `llm` model's logprobs -> OpenAI's chat and completions logprobs objects.

The model sends, per generated token, ``{"<token id>": {"logprob": float}, ...}``: the
sampled token first, then the top-k alternatives (the sampled one again only when it is
among them, so it is never listed twice). Token text comes from the tokenizer; without one
a token is written ``token_id:N``.
"""

from __future__ import annotations

from typing import Any


class TokenTexts:
    """id -> (text, utf-8 bytes), cached (the vocabulary is small next to request counts)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def get(self, token_id: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token_id)
        if hit is None:
            if self.tokenizer is None:
                text = f"token_id:{token_id}"
            else:
                text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            hit = self._cache[token_id] = (text, list(text.encode("utf-8")))
        return hit


def _entries(step: dict[str, Any]) -> list[tuple[int, float]]:
    return [(int(k), float(v["logprob"] if isinstance(v, dict) else v)) for k, v in step.items()]


def _top(entries: list[tuple[int, float]], k: int) -> list[tuple[int, float]]:
    return sorted(entries, key=lambda e: -e[1])[:k]


def chat_logprobs(steps: list[dict[str, Any]], k: int, texts: TokenTexts) -> list[dict[str, Any]]:
    """-> ``choice.logprobs.content`` items."""
    out = []
    for step in steps:
        entries = _entries(step)
        if not entries:
            continue
        tid, lp = entries[0]
        text, raw = texts.get(tid)
        out.append({"token": text, "logprob": lp, "bytes": raw, "top_logprobs": [
            {"token": t, "logprob": v, "bytes": b}
            for t, b, v in ((*texts.get(i), v) for i, v in _top(entries, k))]})
    return out


class CompletionLogprobs:
    """Accumulates ``choice.logprobs`` of a completion (tokens, token_logprobs,
    top_logprobs, text_offset) across streamed pieces; ``offset`` counts characters."""

    def __init__(self, k: int, texts: TokenTexts, offset: int = 0) -> None:
        self.k = k
        self.texts = texts
        self.offset = offset

    def piece(self, steps: list[dict[str, Any]]) -> dict[str, Any]:
        tokens: list[str] = []
        lps: list[float] = []
        tops: list[dict[str, float]] = []
        offsets: list[int] = []
        for step in steps:
            entries = _entries(step)
            if not entries:
                continue
            tid, lp = entries[0]
            text = self.texts.get(tid)[0]
            tokens.append(text)
            lps.append(lp)
            top: dict[str, float] = {}
            for i, v in _top(entries, self.k):  # best first; tokens with equal text keep it
                top.setdefault(self.texts.get(i)[0], v)
            tops.append(top)
            offsets.append(self.offset)
            self.offset += len(text)
        return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops,
                "text_offset": offsets}


def merge_completion_logprobs(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [],
                                 "text_offset": []}
    for p in parts:
        for key in out:
            out[key].extend(p[key])
    return out
