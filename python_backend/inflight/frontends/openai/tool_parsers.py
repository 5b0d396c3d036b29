"""Tool calls in generated text -> OpenAI ``tool_calls``.

Two formats, chosen with ``--tool-call-parser``:

- ``hermes`` (Hermes, Qwen2.5/Qwen3): ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``,
  any number of them, text around them is content.
- ``llama3`` (Llama 3.1+ JSON tool calling): the whole output is
  ``{"name": ..., "parameters": {...}}`` (optionally after ``<|python_tag|>``), several
  separated by ``;``; anything else is content.

One state machine per choice serves both modes: ``feed(delta)`` while streaming returns
events (content text, or a complete tool call once its text is complete), ``finish()``
flushes what was held back, and ``parse(text)`` is ``feed(text) + finish()``, so streamed
and non-streamed answers agree. Text that may start a tool call is held back, never sent
as content. A block that is not valid JSON with a ``name`` stays content.
"""

from __future__ import annotations

import json
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ToolCallOut:
    id: str
    name: str
    arguments: str  # a JSON object as text, as OpenAI sends it

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


Event = str | ToolCallOut  # content text, or one complete tool call


def tool_call_from_json(obj: Any) -> ToolCallOut | None:
    """``{"name": str, "arguments"|"parameters": {...} | str}`` -> a tool call, else None."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCallOut(f"call_{uuid.uuid4().hex[:24]}", obj["name"],
                       json.dumps(args, ensure_ascii=False))


class ToolParser(ABC):
    name = ""

    @abstractmethod
    def feed(self, delta: str) -> list[Event]: ...

    @abstractmethod
    def finish(self) -> list[Event]: ...

    def parse(self, text: str) -> tuple[str | None, list[ToolCallOut]]:
        """The whole output -> (content or None, tool calls)."""
        events = self.feed(text) + self.finish()
        content = "".join(e for e in events if isinstance(e, str))
        calls = [e for e in events if isinstance(e, ToolCallOut)]
        if calls and not content.strip():
            return None, calls
        return content, calls


def _held_prefix(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-k:]):
            return k
    return 0


class HermesParser(ToolParser):
    name = "hermes"
    OPEN, CLOSE = "<tool_call>", "</tool_call>"

    def __init__(self) -> None:
        self.buf = ""
        self.inside = False

    def feed(self, delta: str) -> list[Event]:
        self.buf += delta
        out: list[Event] = []
        while True:
            if not self.inside:
                i = self.buf.find(self.OPEN)
                if i < 0:
                    keep = _held_prefix(self.buf, self.OPEN)
                    text, self.buf = self.buf[: len(self.buf) - keep], self.buf[len(self.buf) - keep:]
                    if text:
                        out.append(text)
                    return out
                if i:
                    out.append(self.buf[:i])
                self.buf, self.inside = self.buf[i + len(self.OPEN):], True
            j = self.buf.find(self.CLOSE)
            if j < 0:
                return out
            out.append(self._call(self.buf[:j], closed=True))
            self.buf, self.inside = self.buf[j + len(self.CLOSE):], False

    def finish(self) -> list[Event]:
        rest, self.buf = self.buf, ""
        if not self.inside:
            return [rest] if rest else []
        self.inside = False
        return [self._call(rest, closed=False)]

    def _call(self, body: str, closed: bool) -> Event:
        try:
            call = tool_call_from_json(json.loads(body))
        except ValueError:
            call = None
        if call is not None:
            return call
        return self.OPEN + body + (self.CLOSE if closed else "")


class Llama3JsonParser(ToolParser):
    name = "llama3"
    TAG = "<|python_tag|>"

    def __init__(self) -> None:
        self.buf = ""
        self.mode: str | None = None  # None: undecided, "content", "tool"

    def feed(self, delta: str) -> list[Event]:
        if self.mode == "content":
            return [delta] if delta else []
        self.buf += delta
        head = self.buf.lstrip()
        if not head:
            return []
        if head.startswith("{") or head.startswith(self.TAG):
            self.mode = "tool"
            return []
        if self.TAG.startswith(head):
            return []  # may still become the tag
        self.mode = "content"
        text, self.buf = self.buf, ""
        return [text]

    def finish(self) -> list[Event]:
        text, self.buf = self.buf, ""
        if self.mode != "tool":
            return [text] if text else []
        calls = self._calls(text.lstrip().removeprefix(self.TAG))
        return list(calls) if calls else [text]

    @staticmethod
    def _calls(text: str) -> list[ToolCallOut] | None:
        dec = json.JSONDecoder()
        calls: list[ToolCallOut] = []
        i = 0
        while True:
            while i < len(text) and (text[i].isspace() or text[i] == ";"):
                i += 1
            if i >= len(text):
                return calls or None
            try:
                obj, i = dec.raw_decode(text, i)
            except ValueError:
                return None
            call = tool_call_from_json(obj)
            if call is None:
                return None
            calls.append(call)


PARSERS: dict[str, type[ToolParser]] = {"hermes": HermesParser, "llama3": Llama3JsonParser}


def make_parser(name: str | None) -> type[ToolParser] | None:
    return None if name is None else PARSERS[name]
