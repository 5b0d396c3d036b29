"""The Python API: ``LLM(model=DIR, **config).generate(prompts, params)``.

All calls go through the engine thread, so generate(), stream() and the asyncio interface
can be used together, from several threads, on one engine.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from tqdm.auto import tqdm

from inflight import env
from inflight.config import EngineConfig
from inflight.engine.loop import EngineLoop
from inflight.model_source import resolve_model
from inflight.outputs import CompletionOutput, RequestOutput, SequenceUpdate
from inflight.sampling_params import SamplingParams

Prompt = str | list[int]


class LLM:
    """Offline and streaming generation over one engine (its loop runs in a thread)."""

    def __init__(self, model: str, **config: Any) -> None:
        """``model``: a Hugging Face checkpoint directory or ``tiny:FAMILY``; ``config``:
        :class:`EngineConfig` fields."""
        self.config = EngineConfig.from_kwargs(resolve_model(model), **config)
        self.loop = EngineLoop(self.config)
        self.engine = self.loop.engine
        self._ids = itertools.count()

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def _next_id(self) -> str:
        return f"llm-{next(self._ids)}"

    def _submit(self, prompt: Prompt, params: SamplingParams, request_id: str | None,
                sink: Any, priority: int = 0) -> tuple[str, list[int]]:
        rid = request_id or self._next_id()
        ids = self.loop.submit(rid, prompt, params, sink, priority)
        return rid, ids

    def generate(self, prompts: Prompt | Sequence[Prompt],
                 params: SamplingParams | Sequence[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Generate for one prompt or a list (strings or token-id lists); one RequestOutput per
        prompt, in order. All prompts are queued at once and batched in flight."""
        single = isinstance(prompts, str) or (bool(prompts) and isinstance(prompts[0], int))
        plist: list[Prompt] = [prompts] if single else list(prompts)  # type: ignore[list-item]
        if params is None or isinstance(params, SamplingParams):
            params_list = [params or SamplingParams()] * len(plist)
        else:
            params_list = list(params)
            if len(params_list) != len(plist):
                raise ValueError(f"got {len(plist)} prompts but {len(params_list)} SamplingParams")
        sink: queue.SimpleQueue[SequenceUpdate] = queue.SimpleQueue()
        outputs: dict[str, RequestOutput] = {}
        order: list[str] = []
        try:
            for p, sp in zip(plist, params_list):
                rid, ids = self._submit(p, sp, None, sink.put)
                order.append(rid)
                outputs[rid] = RequestOutput(rid, p if isinstance(p, str) else None, ids,
                                             [CompletionOutput(i) for i in range(sp.n)])
        except Exception:
            for rid in order:
                self.loop.abort(rid)
            raise
        remaining = sum(len(o.outputs) for o in outputs.values())
        bar = tqdm(total=len(order), desc="Generating", unit="req",
                   disable=not use_tqdm or env.disable_progress() or len(order) < 2)
        while remaining:
            u = sink.get()
            out = outputs[u.request_id]
            out.outputs[u.index].apply(u)
            if u.finished:
                remaining -= 1
                out.error = out.error or u.error
                if all(c.finish_reason is not None for c in out.outputs):
                    out.finished = True
                    bar.update(1)
        bar.close()
        return [outputs[r] for r in order]

    def stream(self, prompt: Prompt, params: SamplingParams | None = None,
               request_id: str | None = None) -> Iterator[SequenceUpdate]:
        """Yield per-sequence deltas as they are produced; the last one per sequence has
        ``finished=True``. Closing the iterator early aborts the request."""
        params = params or SamplingParams()
        sink: queue.SimpleQueue[SequenceUpdate] = queue.SimpleQueue()
        rid, _ = self._submit(prompt, params, request_id, sink.put)
        remaining = params.n
        try:
            while remaining:
                u = sink.get()
                remaining -= u.finished
                yield u
        finally:
            if remaining:
                self.loop.abort(rid)

    async def generate_async(self, prompt: Prompt, params: SamplingParams | None = None,
                             request_id: str | None = None, priority: int = 0
                             ) -> AsyncIterator[SequenceUpdate]:
        """asyncio interface: ``async for delta in llm.generate_async(...)``. Cancelling the
        consuming task aborts the request."""
        params = params or SamplingParams()
        aq: asyncio.Queue[SequenceUpdate] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        def sink(u: SequenceUpdate) -> None:
            try:
                loop.call_soon_threadsafe(aq.put_nowait, u)
            except RuntimeError:  # the consumer's event loop is closed: nobody to tell
                pass

        rid, _ = self._submit(prompt, params, request_id, sink, priority)
        remaining = params.n
        try:
            while remaining:
                u = await aq.get()
                remaining -= u.finished
                yield u
        finally:
            if remaining:
                self.loop.abort(rid)

    def abort(self, request_id: str) -> None:
        self.loop.abort(request_id)

    def shutdown(self) -> None:
        self.loop.shutdown()
        self.engine.close()  # tensor-parallel ranks

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
