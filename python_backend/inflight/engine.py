"""The synchronous engine core: validate and admit requests, run steps, produce deltas.

Not thread-safe by itself; `EngineLoop` (engine_loop.py) owns one in its own thread.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .config import EngineConfig, ModelConfig
from .detokenizer import IncrementalDetokenizer
from .errors import ConfigError, InvalidRequestError, QueueFullError
from .kv_cache_manager import KVCacheManager
from .model_runner import ModelRunner
from .outputs import RequestMetrics, SequenceUpdate
from .request import Request, RequestStatus
from .sampler import DeviceSample, Sampler, SamplerOutput, reads_history
from .sampling_params import SamplingParams
from .scheduler import Scheduler, SchedulerOutput

log = logging.getLogger(__name__)
UpdateCallback = Callable[[SequenceUpdate], None]
_PLACEHOLDER = 0  # stands for a sampled token still on the GPU (overlapped steps)


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

    reqs: list[Request]  # the sampling requests, in row order of `sample`
    sample: DeviceSample


@dataclass
class _Seq:
    """Engine-side state of one sequence besides the Request: its detokenizer and sink."""

    req: Request
    detok: IncrementalDetokenizer | None
    callback: UpdateCallback | None
    emitted_tokens: int = 0
    emitted_logprobs: int = 0
    fed: int = 0  # output tokens fed to the detokenizer
    hold: int = 0  # tokens held back while they may start a stop-word sequence
    pending: bool = False  # token_ids ends with a placeholder for a token still on the GPU

    def feed(self, finished: bool, drop_last: bool) -> None:
        """Detokenize output tokens that can no longer be part of a stop-word sequence."""
        if self.detok is None:
            return
        req = self.req
        base = req.num_prompt_tokens  # index into token_ids: no copy of the output per step
        end = req.num_output_tokens - (1 if drop_last else 0) - (0 if finished else self.hold)
        if end > self.fed:
            self.detok.add(req.token_ids[base + self.fed:base + end])
            self.fed = end


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
        self.runner = ModelRunner(cfg, mc, max_seq_len)
        self.kv = KVCacheManager(self.runner.num_blocks, cfg.block_size, cfg.enable_kv_cache_reuse)
        self.scheduler = Scheduler(cfg, self.kv)
        self.sampler = Sampler(self.runner.device, cfg.seed)
        self.eos_token_ids = frozenset(set(mc.eos_token_ids) | _generation_eos(cfg.model)
                                       | ({self.tokenizer.eos_token_id}
                                          if self.tokenizer.eos_token_id is not None else set()))
        self.seqs: dict[str, _Seq] = {}  # internal sequence id -> state
        self.children: dict[str, list[str]] = {}  # client request id -> sequence ids
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
        return list(self.tokenizer(prompt)["input_ids"])

    def _resolve(self, prompt_ids: list[int], p: SamplingParams) -> int:
        """Validate against the model and engine caps; returns the resolved max_tokens."""
        n = len(prompt_ids)
        if n == 0:
            raise InvalidRequestError("input_ids", "the prompt must contain at least one token")
        bad = next((t for t in prompt_ids if not (isinstance(t, int) and 0 <= t < self.vocab_size)), None)
        if bad is not None:
            raise InvalidRequestError("input_ids", f"token id must be in [0, {self.vocab_size}), got {bad!r}")
        if n >= self.max_seq_len:
            raise InvalidRequestError(
                "input_ids", f"prompt has {n} tokens; max_seq_len is {self.max_seq_len} "
                "and at least one token must be generated")
        max_tokens = p.max_tokens if p.max_tokens is not None else self.max_seq_len - n
        if n + max_tokens > self.max_seq_len:
            raise InvalidRequestError(
                "max_tokens", f"prompt ({n} tokens) + max_tokens ({max_tokens}) exceeds "
                f"max_seq_len ({self.max_seq_len}); allowed max_tokens <= {self.max_seq_len - n}")
        c = self.cfg
        if not c.enable_chunked_context:
            # without chunking a prompt (and, under max_utilization, a preempted request's
            # whole recompute) must fit into one step's token budget
            limit = n if c.batch_scheduler_policy == "guaranteed_no_evict" else n + max_tokens
            if limit > c.max_num_tokens:
                raise InvalidRequestError(
                    "input_ids", f"{limit} tokens exceed max_num_tokens ({c.max_num_tokens}) and "
                    "enable_chunked_context is false; shorten the prompt or enable chunking")
        p.validate_for(vocab_size=self.vocab_size, max_n=c.max_num_return_sequences,
                       max_logprobs=c.max_logprobs, max_stop_words=c.max_stop_words,
                       max_bad_words=c.max_bad_words)
        need = self.kv.blocks_needed(n + max_tokens)
        if need > self.kv.num_blocks:
            raise InvalidRequestError(
                "max_tokens", f"prompt ({n}) + max_tokens ({max_tokens}) needs {need} KV blocks but "
                f"the pool holds {self.kv.num_blocks} ({self.kv.num_blocks * self.kv.block_size} "
                "tokens); lower max_tokens or raise max_tokens_in_paged_kv_cache")
        return max_tokens

    def _encode_words(self, words: list[str]) -> list[list[int]]:
        return [self.tokenizer.encode(w, add_special_tokens=False) for w in words]

    def make_request(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                     callback: UpdateCallback | None = None, priority: int = 0,
                     queued_elsewhere: int = 0) -> tuple[list[int], list[_Seq]]:
        """Validate and build the request's sequences without touching engine state (safe
        from any thread). Raises InvalidRequestError or QueueFullError."""
        prompt_ids = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        if params.bad_words:
            params.bad_words_ids = params.bad_words_ids + [w for w in self._encode_words(params.bad_words) if w]
            params.bad_words = []
        max_tokens = self._resolve(prompt_ids, params)
        cap = self.cfg.max_queue_size
        if cap and self.scheduler.num_waiting + queued_elsewhere + params.n > cap:
            raise QueueFullError(f"request {request_id!r} exceeds maximum queue size ({cap})")
        ids = [request_id] if params.n == 1 else [f"{request_id}#{i}" for i in range(params.n)]
        hold = max((len(w) for w in params.stop_words_ids), default=1) - 1
        seqs: list[_Seq] = []
        for i, sid in enumerate(ids):
            eos = frozenset({params.end_id}) if params.end_id is not None else self.eos_token_ids
            req = Request(sid, prompt_ids, params, max_tokens, eos, priority=priority,
                          seq_index=i, parent_id=request_id, arrival_order=next(self._order))
            if params.seed is not None:
                seed = (params.seed + i * 0x9E3779B97F4A7C15) % 2**64
                req.generator = torch.Generator(device=self.runner.device).manual_seed(seed)
            detok = (IncrementalDetokenizer(self.tokenizer, prompt_ids, params.skip_special_tokens,
                                            params.stop, params.include_stop_str_in_output)
                     if params.detokenize else None)
            seqs.append(_Seq(req, detok, callback, hold=hold))
        return prompt_ids, seqs

    def enqueue(self, request_id: str, seqs: list[_Seq]) -> None:
        """Engine thread: admit prepared sequences to the waiting queue."""
        if request_id in self.children:
            raise InvalidRequestError("request_id", f"{request_id!r} is already in flight")
        for seq in seqs:
            self.seqs[seq.req.request_id] = seq
            self.scheduler.add(seq.req)
        self.children[request_id] = [seq.req.request_id for seq in seqs]

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                    callback: UpdateCallback | None = None, priority: int = 0) -> list[int]:
        """Validate and queue (single-threaded use); returns the prompt token ids."""
        prompt_ids, seqs = self.make_request(request_id, prompt, params, callback, priority)
        self.enqueue(request_id, seqs)
        return prompt_ids

    def abort(self, request_id: str) -> bool:
        """Cancel every sequence of a request; False if the id is unknown or finished."""
        ids = self.children.get(request_id)
        if not ids:
            return False
        for sid in list(ids):
            seq = self.seqs.get(sid)
            if seq is not None and not seq.req.is_finished:
                self._finish(seq, RequestStatus.FINISHED_ABORTED)
        return True

    def fail_all(self, message: str) -> None:
        """Engine fault: every live sequence gets a final error update."""
        for seq in list(self.seqs.values()):
            seq.req.error = message
            self._finish(seq, RequestStatus.FINISHED_ERROR)

    def has_unfinished(self) -> bool:
        return bool(self.seqs) or self._inflight is not None

    # ---- one step ---------------------------------------------------------------------------
    def step(self) -> list[SequenceUpdate]:
        """Run one step; returns the updates it produced. Overlapped (``overlap_scheduler``),
        a step plans and launches step N+1 before it reads step N's tokens, so the updates it
        returns are step N's and the GPU never waits for the host in between."""
        if self.overlap:
            return self._step_overlapped()
        sched = self.scheduler.schedule()
        if not sched:
            return []
        inp, logits, sampling = self._launch(sched)
        out = self.sampler(_rows(logits, inp.sample_rows), sampling) if sampling else None
        self._keep_logits(sched, logits, inp.ctx_rows, inp.sample_rows)
        self.scheduler.advance(sched.scheduled)
        return self._postprocess(sampling, out)

    def _launch(self, sched: SchedulerOutput) -> tuple[Any, torch.Tensor, list[Request]]:
        self.num_steps += 1
        self.last_step_tokens = sched.num_tokens
        inp = self.runner.prepare(sched, [])  # the plan carries its block tables
        prev = self._inflight
        if prev is not None:  # inputs whose token is still on the GPU: take it from there
            pos = {id(r): i for i, r in enumerate(prev.reqs)}
            rows, src = [], []
            for i, s in enumerate(sched.scheduled):
                req = s.request
                j = pos.get(id(req))
                if j is not None and self.seqs[req.request_id].pending and s.start + s.num_new_tokens == req.num_tokens:
                    rows.append(inp.meta.query_start_loc_cpu[i] + s.num_new_tokens - 1)
                    src.append(j)
            if rows:
                self.runner.patch_input_ids(inp, rows, prev.sample.tokens, src)
        logits = self.runner.execute(inp)
        return inp, logits, [s.request for s in sched.scheduled if s.samples]

    def _step_overlapped(self) -> list[SequenceUpdate]:
        prev = self._inflight
        sched = self.scheduler.schedule()
        if not sched:
            self._inflight = None
            return self._complete(prev) if prev is not None else []
        inp, logits, sampling = self._launch(sched)
        updates: list[SequenceUpdate] = []
        if prev is not None and any(reads_history(r) for r in sampling):
            updates, prev = self._complete(prev), None  # penalties read the previous token
        sample = self.sampler.sample(_rows(logits, inp.sample_rows), sampling).to_host() if sampling else None
        if prev is not None:
            updates = self._complete(prev)  # overlaps the GPU running this step
        self._keep_logits(sched, logits, inp.ctx_rows, inp.sample_rows)  # after: skips finished ones
        self.scheduler.advance(sched.scheduled)  # block hashes: after the placeholders are filled
        live = [r for r in sampling if not r.is_finished]
        for r in live:
            r.token_ids.append(_PLACEHOLDER)
            self.seqs[r.request_id].pending = True
        self._inflight = _InFlight(sampling, sample) if live and sample is not None else None
        return updates

    def _complete(self, f: _InFlight) -> list[SequenceUpdate]:
        """Fill in an overlapped step's tokens (they replace the placeholders) and post-process
        them; requests that finished or were aborted meanwhile drop theirs."""
        out = f.sample.result()
        reqs: list[Request] = []
        keep: list[int] = []
        for i, req in enumerate(f.reqs):
            seq = self.seqs.get(req.request_id)
            if seq is None or req.is_finished or not seq.pending:
                continue
            seq.pending = False
            req.token_ids.pop()
            reqs.append(req)
            keep.append(i)
        if len(keep) != len(f.reqs):
            out = SamplerOutput([out.token_ids[i] for i in keep],
                                None if out.logprobs is None else [out.logprobs[i] for i in keep],
                                None if out.top_logprobs is None else [out.top_logprobs[i] for i in keep])
        return self._postprocess(reqs, out) if reqs else []

    def _keep_logits(self, sched: SchedulerOutput, logits: torch.Tensor,
                     ctx_rows: dict[str, tuple[int, int]], sample_rows: list[int]) -> None:
        for rid, (a, b) in ctx_rows.items():
            seq = self.seqs.get(rid)
            if seq is not None:
                seq.req.context_logits.append(logits[a:b].cpu())  # type: ignore[union-attr]
        rows = iter(sample_rows)
        for s in sched.scheduled:
            if s.samples:
                row = next(rows)
                if s.request.generation_logits is not None and not s.request.is_finished:
                    s.request.generation_logits.append(logits[row].cpu())

    def _postprocess(self, reqs: list[Request], out: SamplerOutput | None) -> list[SequenceUpdate]:
        now = time.monotonic()
        updates: list[SequenceUpdate] = []
        for i, req in enumerate(reqs):
            assert out is not None
            seq = self.seqs[req.request_id]
            token = out.token_ids[i]
            req.append_token(token)
            if req.times.first_token is None:
                req.times.first_token = now
            req.times.last_token = now
            if out.logprobs is not None and req.logprobs is not None:
                lp = {token: out.logprobs[i]}
                lp.update(dict(out.top_logprobs[i]) if out.top_logprobs else {})
                req.logprobs.append(lp)
                req.cumulative_logprob += out.logprobs[i]
            status, drop_last = self._check_stop(req, token)
            seq.feed(status is not None, drop_last)
            if seq.detok is not None:
                stoppable = status is None or status is RequestStatus.FINISHED_LENGTH
                if stoppable and seq.detok.stopped_by is not None:
                    status, req.stop_reason = RequestStatus.FINISHED_STOPPED, seq.detok.stopped_by
            u = self._finish(seq, status, emit=False) if status is not None else self._delta(seq, final=False)
            updates.append(u)
            if seq.callback is not None:
                seq.callback(u)
        for req in reqs:
            if req.is_finished:
                self._drop(req)
        return updates

    def _check_stop(self, req: Request, token: int) -> tuple[RequestStatus | None, bool]:
        """Token-level stop rules. Returns (status or None, whether the last token stays out
        of the text). A matched stop-word sequence is cut from the output tokens."""
        p = req.params
        if req.num_output_tokens >= p.min_tokens:
            if (token in req.eos_token_ids and not p.ignore_eos) or token in p.stop_token_ids:
                req.stop_reason = token
                return RequestStatus.FINISHED_STOPPED, not p.include_stop_str_in_output
            tail = req.token_ids
            for word in p.stop_words_ids:  # compare the tail in place (no copy of the output)
                n = len(word)
                if req.num_output_tokens >= n and tail[len(tail) - n:] == list(word):
                    req.stop_reason = str(list(word))
                    if not p.include_stop_str_in_output:
                        del req.token_ids[len(req.token_ids) - len(word):]
                    return RequestStatus.FINISHED_STOPPED, False
        if req.num_output_tokens >= req.max_tokens or req.num_tokens >= self.max_seq_len:
            return RequestStatus.FINISHED_LENGTH, False
        return None, False

    # ---- outputs ---------------------------------------------------------------------------
    def _delta(self, seq: _Seq, final: bool) -> SequenceUpdate:
        req = seq.req
        n_out, base = req.num_output_tokens, req.num_prompt_tokens
        limit = n_out if final else max(n_out - seq.hold, seq.emitted_tokens)
        new_ids = req.token_ids[base + seq.emitted_tokens:base + limit]
        seq.emitted_tokens = limit
        lps = None
        if req.logprobs is not None:
            lps = req.logprobs[seq.emitted_logprobs:]
            seq.emitted_logprobs = len(req.logprobs)
        text = seq.detok.take_delta(final) if seq.detok is not None else ""
        return SequenceUpdate(req.parent_id or req.request_id, req.seq_index, new_ids, text, lps)

    def _finish(self, seq: _Seq, status: RequestStatus, emit: bool = True) -> SequenceUpdate:
        req = seq.req
        if seq.pending:  # aborted with a token still on the GPU: it is dropped
            seq.pending = False
            req.token_ids.pop()
        reused, new, _total = self.kv.request_block_counts(req.request_id)
        self.scheduler.finish(req, status)
        if emit:  # abort / error: release held-back tokens
            seq.feed(True, False)
        if seq.detok is not None and status is not RequestStatus.FINISHED_STOPPED:
            seq.detok.flush()
        u = self._delta(seq, final=True)
        u.finished, u.finish_reason, u.stop_reason = True, status.value, req.stop_reason
        u.error = req.error
        u.cumulative_logprob = req.cumulative_logprob if req.logprobs is not None else None
        u.metrics = RequestMetrics(
            req.times.arrival, req.times.first_scheduled, req.times.first_token, req.times.finished,
            req.num_prompt_tokens, req.num_output_tokens, req.num_cached_prompt_tokens,
            req.num_preemptions, reused, new)
        if req.context_logits is not None and req.context_logits:
            u.context_logits = torch.cat(req.context_logits)[: req.num_prompt_tokens]
        if req.generation_logits:
            u.generation_logits = torch.stack(req.generation_logits)
        self.kv.forget(req.request_id)
        if emit:
            if seq.callback is not None:
                seq.callback(u)
            self._drop(req)
        return u

    def _drop(self, req: Request) -> None:
        """Forget a finished sequence; the client id goes once all its sequences are gone."""
        self.seqs.pop(req.request_id, None)
        parent = req.parent_id or req.request_id
        ids = self.children.get(parent)
        if ids is not None and all(i not in self.seqs for i in ids):
            del self.children[parent]
