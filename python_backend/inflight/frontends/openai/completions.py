"""``POST /v1/completions``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from inflight.frontends.openai.config import OpenAIConfig
from inflight.frontends.openai.generation import Usage, collect, new_id, open_streams, primed_sse
from inflight.frontends.openai.logprobs import CompletionLogprobs, merge_completion_logprobs
from inflight.frontends.openai.protocol import CompletionRequest
from inflight.frontends.openai.registry import ServedModel
from inflight.frontends.openai.sampling import check_completion, sampling_parameters
from inflight.frontends.openai.triton_client import Piece, TritonBridge


async def create_completion(req: CompletionRequest, model: ServedModel, bridge: TritonBridge,
                            cfg: OpenAIConfig) -> dict[str, Any] | AsyncIterator[bytes]:
    prompts = check_completion(req, cfg.max_n, cfg.max_prompts)
    rid, created = new_id("cmpl"), int(time.time())
    jobs = [(p, sampling_parameters(req, req.max_tokens, logprobs=req.logprobs, seed_offset=j))
            for p in prompts for j in range(req.n)]
    pieces = open_streams(bridge, model.triton_name, jobs, stream=req.stream,
                          logprobs=req.logprobs is not None, request_id=rid)
    count = len(jobs)
    usage = Usage(count, req.n)
    k = req.logprobs or 0
    lps = [CompletionLogprobs(k, model.tokens, len(prompts[i // req.n]) if req.echo else 0)
           for i in range(count)]
    head = {"id": rid, "object": "text_completion", "created": created, "model": model.name}

    if not req.stream:
        texts = [prompts[i // req.n] if req.echo else "" for i in range(count)]
        reasons: list[str | None] = [None] * count
        parts: list[list[dict[str, Any]]] = [[] for _ in range(count)]

        def add(i: int, piece: Piece) -> None:
            texts[i] += piece.text
            reasons[i] = piece.finish_reason or reasons[i]
            usage.add(i, piece)
            if piece.logprobs is not None:
                parts[i].append(lps[i].piece(piece.logprobs))

        await collect(pieces, add)
        choices = [{"index": i, "text": texts[i], "finish_reason": reasons[i],
                    "logprobs": merge_completion_logprobs(parts[i])
                    if req.logprobs is not None else None} for i in range(count)]
        return {**head, "choices": choices, "usage": usage.to_openai()}

    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    started = [False] * count

    def chunks(i: int, piece: Piece) -> list[dict[str, Any]]:
        usage.add(i, piece)
        text = piece.text
        if not started[i]:
            started[i] = True
            if req.echo:
                text = prompts[i // req.n] + text
        if not text and piece.finish_reason is None:
            return []
        chunk: dict[str, Any] = {**head, "choices": [{
            "index": i, "text": text, "finish_reason": piece.finish_reason,
            "logprobs": lps[i].piece(piece.logprobs or []) if req.logprobs is not None else None}]}
        if include_usage:
            chunk["usage"] = None
        return [chunk]

    def tail() -> list[dict[str, Any]]:
        return [{**head, "choices": [], "usage": usage.to_openai()}] if include_usage else []

    return await primed_sse(pieces, chunks, tail)
