"""The synchronous engine: validate and admit requests, run steps, produce deltas.

A step is schedule -> worker (model runner + sampler) -> update -> output processing:

    plan = scheduler.schedule()            # StepPlan: flat arrays (step_plan.py)
    logits = runner.execute(runner.prepare(plan))
    scheduler.launched(plan)
    result = sampler(logits rows, plan)    # StepResult: tokens per sampling row
    events = scheduler.update(plan, result)   # the core applies token stops and limits
    outputs: events -> SequenceUpdates     # detokenize, stop strings, logprobs (output_processor)

The scheduler core owns every sequence's tokens and counters; this class holds handles.
Not thread-safe by itself; `EngineLoop` (engine_loop.py) owns one in its own thread.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from inflight.config import EngineConfig, ModelConfig
from inflight.engine.input_processor import EngineLimits, InputProcessor, check_admission
from inflight.engine.kv_cache import KVCacheManager
from inflight.engine.output_processor import SequenceOutput, UpdateCallback, new_output
from inflight.engine.request import FinishReason, RequestHandle
from inflight.engine.scheduler import Scheduler, SequenceSpec
from inflight.engine.step_plan import FINISH_NAMES, StepEvents, StepPlan, StepResult
from inflight.errors import ConfigError
from inflight.outputs import SequenceUpdate
from inflight.sampling_params import SamplingParams
from inflight.worker.model_runner import ModelRunner
from inflight.worker.ranks import RankError, start_ranks
from inflight.worker.sampler import DeviceSample, RequestExtras, Sampler, SamplerOutput

log = logging.getLogger(__name__)


def load_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # transformers raises many types here
        raise ConfigError(f"cannot load a tokenizer from {path!r}: {e}") from None


def _rows(logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """logits[rows] without a gather when the rows are all of them, in order."""
    n = len(rows)
    if n == logits.shape[0] and (n == 0 or (rows[0] == 0 and rows[-1] == n - 1)):
        return logits  # rows are distinct and increasing: 0..n-1
    return logits[rows]


def _generation_eos(model_dir: str) -> set[int]:
    path = os.path.join(model_dir, "generation_config.json")
    if not os.path.isfile(path):
        return set()
    with open(path, encoding="utf-8") as f:
        eos = json.load(f).get("eos_token_id")
    return set(eos) if isinstance(eos, list) else ({eos} if isinstance(eos, int) else set())


@dataclass
class _InFlight:
    """An overlapped step whose sampled tokens are still on their way to the host."""

    plan: StepPlan
    sample: DeviceSample


@dataclass
class PreparedSequence:
    """A validated sequence, ready for the core (built off the engine thread)."""

    spec: SequenceSpec
    params: SamplingParams
    seq_index: int
    prompt_ids: list[int]
    callback: UpdateCallback | None
    generator: torch.Generator | None


class LLMEngine:
    def __init__(self, cfg: EngineConfig) -> None:
        self.cfg = cfg
        self.model_config = ModelConfig.from_hf(cfg.model)
        self.tokenizer = load_tokenizer(cfg.tokenizer or cfg.model, cfg.trust_remote_code)
        mc = self.model_config
        max_seq_len = cfg.max_seq_len or mc.max_position_embeddings
        if mc.sliding_window and max_seq_len > mc.sliding_window:
            log.warning("max_seq_len capped at the sliding window (%d)", mc.sliding_window)
            max_seq_len = mc.sliding_window
        self.max_seq_len = max_seq_len
        # tensor parallelism: checks, then starts ranks 1..N-1 (None for one device)
        self.ranks = start_ranks(cfg, mc, max_seq_len)
        try:
            self.runner = ModelRunner(cfg, mc, max_seq_len, self.ranks)
        except BaseException:
            self.close()
            raise
        self.kv = KVCacheManager(self.runner.num_blocks, cfg.block_size, cfg.enable_kv_cache_reuse)
        self.scheduler = Scheduler(cfg, self.kv, self.runner.max_blocks_per_seq,
                                   pin=self.runner.device.type == "cuda")
        self.sampler = Sampler(self.runner.device, cfg.seed)
        self.inputs = InputProcessor(cfg, self.tokenizer, EngineLimits(
            mc.vocab_size, max_seq_len, self.kv.num_blocks, cfg.block_size))
        self.eos_token_ids = frozenset(set(mc.eos_token_ids) | _generation_eos(cfg.model)
                                       | ({self.tokenizer.eos_token_id}
                                          if self.tokenizer.eos_token_id is not None else set()))
        # the one registry of live sequences: core handle -> output-side state
        self.seqs: dict[int, SequenceOutput] = {}
        self.children: dict[str, list[int]] = {}  # client request id -> its handles
        self._gen_logits: set[int] = set()  # handles that asked for generation logits
        self._order = itertools.count()
        self.num_steps = 0
        self.last_step_tokens = 0
        mode = cfg.overlap_scheduler
        self.overlap = mode == "on" or (mode == "auto" and self.runner.device.type == "cuda")
        self._inflight: _InFlight | None = None

    @property
    def vocab_size(self) -> int:
        return self.model_config.vocab_size

    # ---- admission -------------------------------------------------------------------------
    def tokenize(self, prompt: str) -> list[int]:
        return self.inputs.tokenize(prompt)

    def check_admission(self, request_id: str, num_seqs: int, queued_elsewhere: int = 0,
                        live: bool = False) -> None:
        """input_processor.check_admission against this engine's queue and live ids."""
        check_admission(self.cfg, request_id, num_seqs,
                        queued=self.scheduler.num_waiting + queued_elsewhere,
                        live=live or request_id in self.children)

    def make_request(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                     callback: UpdateCallback | None = None, priority: int = 0
                     ) -> tuple[list[int], list[PreparedSequence]]:
        """Validate and build the request's sequences without touching engine state (safe
        from any thread). Raises InvalidRequestError."""
        prompt_ids, max_tokens = self.inputs.prepare(prompt, params)
        p = params
        eos = frozenset({p.end_id}) if p.end_id is not None else self.eos_token_ids
        ends = tuple(sorted((set() if p.ignore_eos else set(eos)) | set(p.stop_token_ids)))
        sampling = (float(p.temperature), int(p.top_k), float(p.top_p), float(p.min_p),
                    float(p.repetition_penalty), float(p.presence_penalty),
                    float(p.frequency_penalty), -1 if p.logprobs is None else int(p.logprobs))
        seqs: list[PreparedSequence] = []
        for i in range(p.n):
            sid = request_id if p.n == 1 else f"{request_id}#{i}"
            spec = SequenceSpec(sid, prompt_ids, max_tokens, priority, next(self._order),
                                p.return_context_logits, "", ends,
                                tuple(tuple(w) for w in p.stop_words_ids), p.min_tokens,
                                p.include_stop_str_in_output, sampling)
            gen = None
            if p.seed is not None:
                seed = (p.seed + i * 0x9E3779B97F4A7C15) % 2**64
                gen = torch.Generator(device=self.runner.device).manual_seed(seed)
            seqs.append(PreparedSequence(spec, p, i, prompt_ids, callback, gen))
        return prompt_ids, seqs

    def enqueue(self, request_id: str, seqs: list[PreparedSequence]) -> None:
        """Engine thread: admit prepared sequences to the waiting queue (the queue cap was
        checked when they were submitted; a duplicate id that raced in is refused here)."""
        check_admission(self.cfg, request_id, 0, queued=0, live=request_id in self.children)
        handles = []
        for ps in seqs:
            h = self.scheduler.add(ps.spec)
            p = ps.params
            req = RequestHandle(h, ps.spec.request_id, request_id, ps.seq_index, p, len(ps.prompt_ids))
            self.seqs[h] = new_output(req, self.tokenizer, ps.prompt_ids, ps.callback)
            if p.return_generation_logits:
                self._gen_logits.add(h)
            ends = ps.spec.end_ids if p.min_tokens else ()
            self.sampler.register(h, RequestExtras(len(ps.prompt_ids), ends, list(p.bad_words_ids),
                                                   ps.generator, dict(p.embedding_bias)))
            handles.append(h)
        self.children[request_id] = handles

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                    callback: UpdateCallback | None = None, priority: int = 0) -> list[int]:
        """Validate and queue (single-threaded use); returns the prompt token ids."""
        prompt_ids, seqs = self.make_request(request_id, prompt, params, callback, priority)
        self.check_admission(request_id, len(seqs))
        self.enqueue(request_id, seqs)
        return prompt_ids

    def abort(self, request_id: str) -> bool:
        """Cancel every sequence of a request; False if the id is unknown or finished."""
        hs = self.children.get(request_id)
        if not hs:
            return False
        for h in list(hs):
            if h in self.seqs:
                self._finish(h, FinishReason.ABORT)
        return True

    def fail_all(self, message: str) -> None:
        """Engine fault: every live sequence gets a final error update; the other
        tensor-parallel ranks stop (the engine does not step again)."""
        for h, out in list(self.seqs.items()):
            out.req.error = message
            self._finish(h, FinishReason.ERROR)
        self._inflight = None
        self.close()

    def close(self) -> None:
        """Stop the tensor-parallel ranks (idempotent; nothing to do on one device)."""
        ranks = getattr(self, "ranks", None)
        if ranks is not None:
            ranks.stop()

    def has_unfinished(self) -> bool:
        return bool(self.seqs) or self._inflight is not None

    def check_health(self) -> None:
        """Raises (RankError) when a tensor-parallel rank has exited: the loops call it while
        idle too, so a dead rank ends the engine (and readiness) without waiting for a request."""
        if self.ranks is not None and self.ranks.died.is_set():
            self.ranks.check_alive()

    def explain_fault(self, e: Exception, wait_s: float = 2.0) -> Exception:
        """The error to report for a failed step: a collective that failed because a rank died
        (gloo: "connection closed", NCCL: a timeout) becomes the RankError naming that rank,
        once its waiter thread has seen the exit (up to ``wait_s``); anything else as it is."""
        if self.ranks is None or isinstance(e, RankError):
            return e
        if self.ranks.died.wait(wait_s):
            try:
                self.ranks.check_alive()
            except Exception as dead:  # noqa: BLE001 - the RankError to report
                dead.__cause__ = e
                return dead
        return e

    def is_live(self, request_id: str) -> bool:
        return request_id in self.children

    # ---- one step ---------------------------------------------------------------------------
    def step(self) -> list[SequenceUpdate]:
        """Run one step; returns the updates it produced. Overlapped (``overlap_scheduler``),
        a step plans and launches step N+1 before it reads step N's tokens, so the updates it
        returns are step N's and the GPU never waits for the host in between; while fewer
        than ``overlap_min_running`` sequences run, synchronously (a new request's prefill
        is planned right after the step in flight instead of after the one launched ahead)."""
        low = self.cfg.overlap_min_running
        if self.overlap and (not low or self.scheduler.num_running >= low):
            return self._step_overlapped()
        if self._inflight is None:
            return self._step_sync()
        prev, self._inflight = self._inflight, None  # leaving the overlap: the step in flight first
        return self._complete(prev) + self._step_sync()

    def _step_sync(self) -> list[SequenceUpdate]:
        plan = self.scheduler.schedule()
        if not plan:
            return []
        logits = self._launch(plan)
        if not plan.num_samples:
            self.scheduler.update(plan, StepResult.one_per_row(plan.step, []))
            return []
        hist = self._history(plan, self.sampler.reads_history(plan))
        sample = self.sampler.sample(_rows(logits, plan.sample_rows.tolist()), plan, hist)
        return self._complete(_InFlight(plan, sample))

    def _launch(self, plan: StepPlan) -> torch.Tensor:
        self.num_steps += 1
        self.last_step_tokens = plan.num_tokens
        self._mark_admitted(plan)
        inp = self.runner.prepare(plan)
        prev = self._inflight
        if prev is not None and plan.num_samples:  # inputs still on the GPU: take them from there
            pend = plan.rows["input_pending"]
            if pend.any():
                src_of = {h: j for j, h in enumerate(prev.plan.rows["sample_handles"].tolist())}
                handles = plan.rows["sample_handles"].tolist()
                token_rows = plan.logits_indices[plan.sample_rows].tolist()
                rows, src = [], []
                for k in pend.nonzero()[0].tolist():
                    j = src_of.get(handles[k])
                    if j is not None:
                        rows.append(token_rows[k])
                        src.append(j)
                if rows:
                    self.runner.patch_input_ids(inp, rows, prev.sample.tokens, src)
        logits = self.runner.execute(inp)
        self.scheduler.launched(plan)
        self._keep_logits(plan, logits)
        return logits

    def _mark_admitted(self, plan: StepPlan) -> None:
        if plan.admitted:
            now = time.monotonic()
            for h in plan.admitted:
                out = self.seqs.get(h)
                if out is not None and out.req.times.first_scheduled is None:
                    out.req.times.first_scheduled = now

    def _history(self, plan: StepPlan, rows: list[int]) -> dict[int, np.ndarray] | None:
        if not rows:
            return None
        handles = plan.rows["sample_handles"].tolist()
        empty = np.zeros(0, dtype=np.int64)  # finished since planned: its sample is dropped
        return {k: self.scheduler.tokens(handles[k]) if handles[k] in self.scheduler else empty
                for k in rows}

    def _step_overlapped(self) -> list[SequenceUpdate]:
        prev = self._inflight
        plan = self.scheduler.schedule()
        if not plan:
            self._inflight = None
            return self._complete(prev) if prev is not None else []
        logits = self._launch(plan)
        updates: list[SequenceUpdate] = []
        hist_rows = self.sampler.reads_history(plan)
        if prev is not None and hist_rows:
            updates, prev = self._complete(prev), None  # penalties read the previous token
        sample = None
        if plan.num_samples:
            hist = self._history(plan, hist_rows)
            sample = self.sampler.sample(_rows(logits, plan.sample_rows.tolist()), plan, hist).to_host()
        if prev is not None:
            updates = self._complete(prev)  # overlaps the GPU running this step
        self._inflight = _InFlight(plan, sample) if sample is not None else None
        if sample is None:  # nothing sampled: the step's plan still needs its (empty) update
            self.scheduler.update(plan, StepResult.one_per_row(plan.step, []))
        return updates

    def _complete(self, f: _InFlight) -> list[SequenceUpdate]:
        """Hand a step's sampled tokens to the core, then turn its events into updates."""
        out = f.sample.result()
        result = StepResult.one_per_row(f.plan.step, out.token_ids, out.logprobs, out.top_logprobs)
        events = self.scheduler.update(f.plan, result)
        return self._process(events, out)

    def _keep_logits(self, plan: StepPlan, logits: torch.Tensor) -> None:
        for h, (a, b) in plan.ctx_rows.items():
            out = self.seqs.get(h)
            if out is not None and out.context_logits is not None:
                out.context_logits.append(logits[a:b].cpu())
        if plan.num_samples and self._gen_logits:  # no per-step scan of every live sequence
            for k, h in enumerate(plan.rows["sample_handles"].tolist()):
                out = self.seqs.get(h)
                if out is not None and out.generation_logits is not None:
                    out.generation_logits.append(logits[int(plan.sample_rows[k])].cpu())

    # ---- outputs ---------------------------------------------------------------------------
    def _process(self, ev: StepEvents, out: SamplerOutput) -> list[SequenceUpdate]:
        now = time.monotonic()
        updates: list[SequenceUpdate] = []
        offs = ev.offsets.tolist()
        toks = ev.tokens.tolist()
        starts, lens, rows = ev.start.tolist(), ev.output_len.tolist(), ev.rows.tolist()
        for i, h in enumerate(ev.handles.tolist()):
            seq = self.seqs.get(h)
            if seq is None:
                continue
            req = seq.req
            row = rows[i]
            lp = ((out.logprobs[row], out.top_logprobs[row] if out.top_logprobs else [])
                  if out.logprobs is not None else None)
            seq.apply(starts[i], toks[offs[i]:offs[i + 1]], lens[i], lp)
            if req.times.first_token is None:
                req.times.first_token = now
            req.times.last_token = now
            reason = FINISH_NAMES[int(ev.finish[i])]
            p = req.params
            drop_last = False
            if reason == "stop":
                if int(ev.stop_token[i]) >= 0:
                    seq.stop_reason = int(ev.stop_token[i])
                    drop_last = not p.include_stop_str_in_output
                else:
                    seq.stop_reason = str(list(p.stop_words_ids[int(ev.stop_sequence[i])]))
            seq.feed(reason is not None, drop_last)
            if seq.detok is not None and reason in (None, "length") and seq.detok.stopped_by is not None:
                reason, seq.stop_reason = "stop", seq.detok.stopped_by
                self.scheduler.stop_at(h, lens[i])
            u = self._finish(h, FinishReason(reason), emit=False) if reason else seq.delta(final=False)
            updates.append(u)
            if seq.callback is not None:
                seq.callback(u)
            if reason:
                self._drop(h)
        return updates

    def _finish(self, h: int, reason: FinishReason, emit: bool = True) -> SequenceUpdate:
        seq = self.seqs[h]
        req = seq.req
        req.times.finished = time.monotonic()
        state = self.scheduler.state(h)
        blocks = self.kv.request_block_counts(req.seq_id)
        self.scheduler.finish(h)
        self.sampler.release(h)
        u = seq.final(reason.value, state, blocks, emit)
        self.kv.forget(req.seq_id)
        if emit:
            if seq.callback is not None:
                seq.callback(u)
            self._drop(h)
        return u

    def _drop(self, h: int) -> None:
        """Forget a finished sequence; the client id goes once all its sequences are gone."""
        seq = self.seqs.pop(h, None)
        self._gen_logits.discard(h)
        if seq is None:
            return
        parent = seq.req.parent_id
        hs = self.children.get(parent)
        if hs is not None and all(x not in self.seqs for x in hs):
            del self.children[parent]
