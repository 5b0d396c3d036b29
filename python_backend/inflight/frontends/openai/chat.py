"""``POST /v1/chat/completions``: template, generate, parse tool calls."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from inflight.frontends.openai.config import OpenAIConfig
from inflight.frontends.openai.errors import bad_request
from inflight.frontends.openai.generation import Usage, collect, new_id, open_streams, primed_sse
from inflight.frontends.openai.logprobs import chat_logprobs
from inflight.frontends.openai.protocol import ChatCompletionRequest
from inflight.frontends.openai.registry import ServedModel
from inflight.frontends.openai.sampling import check_chat, sampling_parameters
from inflight.frontends.openai.tool_parsers import ToolCallOut, ToolParser
from inflight.frontends.openai.triton_client import Piece, TritonBridge


def render_prompt(req: ChatCompletionRequest, model: ServedModel) -> str:
    try:
        messages = [m.for_template() for m in req.messages]
    except ValueError as e:
        raise bad_request(str(e), param="messages") from None
    tools = [t.model_dump(exclude_none=True) for t in req.tools] if req.tools and \
        req.tool_choice != "none" else None
    return model.template.render(messages, tools=tools,
                                 add_generation_prompt=req.add_generation_prompt,
                                 continue_final_message=req.continue_final_message,
                                 extra=req.chat_template_kwargs)


def _reason(engine_reason: str | None, called: bool) -> str | None:
    return "tool_calls" if called and engine_reason == "stop" else engine_reason


class _Choice:
    """One choice's text, tool-call parser and logprobs."""

    def __init__(self, parser: ToolParser | None) -> None:
        self.parser = parser
        self.text = ""
        self.steps: list[dict[str, Any]] = []
        self.reason: str | None = None
        self.calls = 0  # tool calls sent so far (their stream index)
        self.started = False
        self.blank = ""  # whitespace-only content held back while parsing tool calls

    def content(self, text: str, final: bool) -> str:
        """Streamed content with tool parsing: whitespace alone waits for real text (the
        non-streamed answer drops whitespace-only content next to tool calls)."""
        if self.parser is None:
            return text
        if text and not text.strip():
            self.blank += text
            text = ""
        elif text:
            text, self.blank = self.blank + text, ""
        if final and self.calls == 0:
            text, self.blank = text + self.blank, ""
        return text


async def create_chat(req: ChatCompletionRequest, model: ServedModel, bridge: TritonBridge,
                      cfg: OpenAIConfig) -> dict[str, Any] | AsyncIterator[bytes]:
    parse_tools = check_chat(req, cfg.max_n, model.tool_parser is not None)
    prompt = render_prompt(req, model)
    k = (req.top_logprobs or 0) if req.logprobs else None
    rid, created = new_id("chatcmpl"), int(time.time())
    jobs = [(prompt, sampling_parameters(req, req.output_limit(), logprobs=k, seed_offset=j,
                                         chat=True)) for j in range(req.n)]
    pieces = open_streams(bridge, model.triton_name, jobs, stream=req.stream,
                          logprobs=k is not None, request_id=rid)
    usage = Usage(req.n, req.n)
    new_parser = model.tool_parser if parse_tools else None
    choices = [_Choice(new_parser() if new_parser else None) for _ in range(req.n)]
    head = {"id": rid, "object": "chat.completion.chunk" if req.stream else "chat.completion",
            "created": created, "model": model.name}

    if not req.stream:
        def add(i: int, piece: Piece) -> None:
            c = choices[i]
            c.text += piece.text
            c.reason = piece.finish_reason or c.reason
            c.steps.extend(piece.logprobs or [])
            usage.add(i, piece)

        await collect(pieces, add)
        return {**head, "choices": [_message(i, c, k, model) for i, c in enumerate(choices)],
                "usage": usage.to_openai()}

    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(i: int, delta: dict[str, Any], reason: str | None = None,
              logprobs: Any = None) -> dict[str, Any]:
        out = {**head, "choices": [{"index": i, "delta": delta, "logprobs": logprobs,
                                    "finish_reason": reason}]}
        if include_usage:
            out["usage"] = None
        return out

    def chunks(i: int, piece: Piece) -> list[dict[str, Any]]:
        c = choices[i]
        usage.add(i, piece)
        out = []
        if not c.started:
            c.started = True
            out.append(chunk(i, {"role": "assistant", "content": ""}))
        events: list[str | ToolCallOut] = [piece.text] if c.parser is None else \
            c.parser.feed(piece.text) + (c.parser.finish() if piece.final else [])
        delta: dict[str, Any] = {}
        calls = []
        for e in events:
            if isinstance(e, ToolCallOut):
                calls.append({"index": c.calls, **e.to_openai()})
                c.calls += 1
        text = c.content("".join(e for e in events if isinstance(e, str)), piece.final)
        if text:
            delta["content"] = text
        if calls:
            delta["tool_calls"] = calls
        lps = {"content": chat_logprobs(piece.logprobs, k, model.tokens)} \
            if k is not None and piece.logprobs else None
        reason = _reason(piece.finish_reason, c.calls > 0) if piece.final else None
        if delta or lps or reason:
            out.append(chunk(i, delta, reason, lps))
        return out

    def tail() -> list[dict[str, Any]]:
        return [{**head, "choices": [], "usage": usage.to_openai()}] if include_usage else []

    return await primed_sse(pieces, chunks, tail)


def _message(i: int, c: _Choice, k: int | None, model: ServedModel) -> dict[str, Any]:
    content: str | None = c.text
    calls: list[ToolCallOut] = []
    if c.parser is not None:
        content, calls = c.parser.parse(c.text)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message["tool_calls"] = [t.to_openai() for t in calls]
    return {"index": i, "message": message, "finish_reason": _reason(c.reason, bool(calls)),
            "logprobs": {"content": chat_logprobs(c.steps, k, model.tokens)}
            if k is not None else None}
