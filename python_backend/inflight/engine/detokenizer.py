"""Incremental, exact detokenization with stop-string handling.

Each new token decodes a short window (a few tokens of left context, so SentencePiece's
leading-space rule and byte-level merges see their neighbours); text is emitted only once
it no longer ends in U+FFFD, so a multi-byte character is never split across deltas.
While stop strings are set, the last ``len(longest stop) - 1`` characters are held back
until they can no longer start a stop string, so a stop string is removed exactly.
"""

from __future__ import annotations

from typing import Any

_CONTEXT = 5  # left-context tokens (as vLLM / TGI do)


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_ids: list[int], skip_special_tokens: bool = True,
                 stop: list[str] | None = None, include_stop: bool = False) -> None:
        self.tok = tokenizer
        self.skip = skip_special_tokens
        # a fast tokenizer's Rust decode, without transformers' per-call conversions
        # (`to_py_obj`: 24% of the engine thread's GIL samples on the H200, issue 13); the
        # same text as tok.decode(..., clean_up_tokenization_spaces=False)
        backend = getattr(tokenizer, "_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
        self._fast = getattr(backend, "decode", None)
        self.ids: list[int] = list(prompt_ids[-2 * _CONTEXT:])
        # if the prompt ends inside a multi-byte character, start reading before it so the
        # output token that completes it emits the whole character
        self.read_offset = len(self.ids)
        while (self.read_offset > 0 and len(self.ids) - self.read_offset < 4
               and self._decode(self.ids[: self.read_offset]).endswith("\ufffd")):
            self.read_offset -= 1
        self.prefix_offset = max(self.read_offset - _CONTEXT, 0)
        self.text = ""  # all decoded output text (stop string cut once found)
        self.sent = 0  # characters of self.text already emitted
        self.stop = stop or []
        self.include_stop = include_stop
        self.holdback = max((len(s) for s in self.stop), default=1) - 1
        self.stopped_by: str | None = None

    def _decode(self, ids: list[int]) -> str:
        if self._fast is not None:
            return self._fast(ids, skip_special_tokens=self.skip)
        return self.tok.decode(ids, skip_special_tokens=self.skip,
                               clean_up_tokenization_spaces=False)

    def _step(self) -> str:
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return full[len(prefix):]
        return ""

    def add(self, token_ids: list[int]) -> None:
        """Decode new tokens into self.text; find stop strings in what is new."""
        for t in token_ids:
            self.ids.append(t)
            new = self._step()
            if new and self.stopped_by is None:
                self._append_checked(new)

    def flush(self) -> None:
        """At finish: emit a trailing incomplete character as U+FFFD rather than drop it."""
        if self.read_offset < len(self.ids) and self.stopped_by is None:
            prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
            full = self._decode(self.ids[self.prefix_offset:])
            self.read_offset = len(self.ids)
            if len(full) > len(prefix):
                self._append_checked(full[len(prefix):])

    def _append_checked(self, new: str) -> None:
        start = max(len(self.text) - self.holdback, 0)
        self.text += new
        if not self.stop:
            return
        best: tuple[int, str] | None = None
        for s in self.stop:
            i = self.text.find(s, start)
            if i >= 0 and (best is None or i < best[0]):
                best = (i, s)
        if best is not None:
            i, s = best
            self.text = self.text[: i + len(s) if self.include_stop else i]
            self.stopped_by = s

    def take_delta(self, final: bool) -> str:
        """Text not yet emitted; all of it when final, else minus the hold-back window."""
        end = len(self.text) if final or self.stopped_by else max(len(self.text) - self.holdback, self.sent)
        delta = self.text[self.sent:end]
        self.sent = end
        return delta
