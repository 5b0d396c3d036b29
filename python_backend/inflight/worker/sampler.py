"""Batched token selection on the model's device, from a step plan's rows (no request objects).

Order: embedding bias -> logit masks (bad words, min_tokens) -> penalties (repetition,
presence, frequency) -> greedy argmax, or temperature -> top-k -> top-p -> min-p ->
exponential-race sampling. Seeded rows draw their noise from their own ``torch.Generator``,
so the same seed gives the same tokens whatever else shares the batch. Logprobs are of the
raw model distribution.

The numeric arguments come with the plan (per sampling row). What is per request and not a
number (its generator, bad words, end ids, embedding bias) the worker keeps by handle
(:meth:`Sampler.register` when a request arrives, :meth:`Sampler.release` when it ends),
as a worker process would. Penalties and multi-token bad words read the request's tokens:
the caller passes them as ``history`` for those rows only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from inflight.engine.step_plan import StepPlan


@dataclass
class SamplerOutput:
    """Sampler -> engine: one entry per sampled row (host lists, one device->host copy)."""

    token_ids: list[int]
    logprobs: list[float] | None  # logprob of the chosen token, when any row asked
    top_logprobs: list[list[tuple[int, float]]] | None


@dataclass
class RequestExtras:
    """Per-request sampling state that is not a plan number; registered once per sequence."""

    num_prompt: int
    end_ids: tuple[int, ...] = ()  # banned until min_tokens
    bad_words: list[list[int]] = field(default_factory=list)
    generator: torch.Generator | None = None
    embedding_bias: dict[int, float] = field(default_factory=dict)

    @property
    def multi_token_bad_words(self) -> bool:
        return any(len(w) > 1 for w in self.bad_words)


_GONE = RequestExtras(num_prompt=0)


def _uses_penalties(rows: dict[str, np.ndarray]) -> np.ndarray:
    return ((rows["repetition_penalty"] != 1.0) | (rows["presence_penalty"] != 0.0)
            | (rows["frequency_penalty"] != 0.0))


def apply_penalties(logits: torch.Tensor, rows: dict[str, np.ndarray], idx: list[int],
                    history: dict[int, np.ndarray], extras: list[RequestExtras]) -> torch.Tensor:
    """Repetition penalty over prompt+output (HF semantics); presence/frequency penalties over
    the output (OpenAI semantics), for rows ``idx`` of logits [B, V]."""
    dev, v = logits.device, logits.shape[1]
    counts = torch.zeros(len(idx), v, device=dev)
    seen = torch.zeros(len(idx), v, dtype=torch.bool, device=dev)
    for j, i in enumerate(idx):
        toks = torch.from_numpy(history[i]).to(dev)
        out = toks[extras[i].num_prompt:]
        if out.numel():
            counts[j].index_add_(0, out, torch.ones_like(out, dtype=counts.dtype))
        seen[j, toks] = True
    sel = torch.tensor(idx, device=dev)
    rep = torch.from_numpy(rows["repetition_penalty"][idx]).to(dev)[:, None]
    pres = torch.from_numpy(rows["presence_penalty"][idx]).to(dev)[:, None]
    freq = torch.from_numpy(rows["frequency_penalty"][idx]).to(dev)[:, None]
    sub = logits[sel]
    sub = torch.where(seen, torch.where(sub > 0, sub / rep, sub * rep), sub)
    logits[sel] = sub - freq * counts - pres * (counts > 0).float()
    return logits


def apply_masks(logits: torch.Tensor, rows: dict[str, np.ndarray], extras: list[RequestExtras],
                history: dict[int, np.ndarray]) -> torch.Tensor:
    """Ban bad words (a multi-token word only when its prefix was just generated) and, until
    min_tokens, end tokens."""
    n_out, min_tok = rows["num_output"], rows["min_tokens"]
    for i, ex in enumerate(extras):
        for word in ex.bad_words:
            prefix = list(word[:-1])
            if prefix:
                out = history[i][ex.num_prompt:].tolist()
                if out[-len(prefix):] != prefix:
                    continue
            logits[i, word[-1]] = float("-inf")
        if n_out[i] < min_tok[i] and ex.end_ids:
            logits[i, list(ex.end_ids)] = float("-inf")
    return logits


def apply_embedding_bias(logits: torch.Tensor, extras: list[RequestExtras]) -> torch.Tensor:
    """Add each request's sparse additive bias {token id: bias} to its row of [B, V]."""
    for i, ex in enumerate(extras):
        if ex.embedding_bias:
            ids = torch.tensor(list(ex.embedding_bias), dtype=torch.long, device=logits.device)
            logits[i, ids] += torch.tensor(list(ex.embedding_bias.values()), dtype=logits.dtype,
                                           device=logits.device)
    return logits


def _filter(logits: torch.Tensor, rows: dict[str, np.ndarray], idx: np.ndarray) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p on [b, V] (rows ``idx``) -> filtered logits."""
    dev = logits.device
    temp = torch.from_numpy(np.maximum(rows["temperature"][idx], 1e-6)).to(dev)[:, None]
    logits = logits / temp
    top_k, top_p, min_p = rows["top_k"][idx], rows["top_p"][idx], rows["min_p"][idx]
    if (top_k > 0).any() or (top_p < 1.0).any():
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        v = logits.shape[1]
        k_t = torch.from_numpy(np.where(top_k > 0, top_k, v).astype(np.int64)).to(dev)[:, None]
        drop = torch.arange(v, device=dev)[None, :] >= k_t
        probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        mass_before = probs.cumsum(-1) - probs
        drop |= mass_before >= torch.from_numpy(top_p).to(dev)[:, None]
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    if (min_p > 0).any():
        probs = logits.softmax(-1)
        thresh = probs.max(-1, keepdim=True).values * torch.from_numpy(min_p).to(dev)[:, None]
        logits = logits.masked_fill(probs < thresh, float("-inf"))
    return logits


def _sample(logits: torch.Tensor, gens: list[torch.Generator | None],
            default_gen: torch.Generator | None) -> torch.Tensor:
    """Exponential race: argmax(p / E) with E ~ Exp(1) equals sampling from p."""
    probs = logits.softmax(-1)
    noise = torch.empty_like(probs)
    seeded = [i for i, g in enumerate(gens) if g is not None]
    if len(seeded) < len(gens):
        noise.exponential_(generator=default_gen)
    for i in seeded:
        noise[i].exponential_(generator=gens[i])
    return (probs / noise).argmax(-1)


class DeviceSample:
    """One step's sampled rows, still on the model's device. :meth:`to_host` starts the
    device->host copies without waiting; :meth:`result` waits for them (the one sync)."""

    def __init__(self, tokens: torch.Tensor, chosen: torch.Tensor | None,
                 top: tuple[torch.Tensor, torch.Tensor] | None, want: list[int]) -> None:
        self.tokens = tokens  # [S] int64, feeds the next step's inputs when overlapped
        self._chosen, self._top, self._want = chosen, top, want
        self._host: list[torch.Tensor] | None = None
        self._event: torch.cuda.Event | None = None

    def to_host(self) -> DeviceSample:
        parts = [self.tokens] + ([self._chosen] if self._chosen is not None else []) + list(self._top or ())
        if self.tokens.is_cuda:  # into pinned memory, ordered after the sampling kernels
            self._host = [t.to("cpu", non_blocking=True) for t in parts]
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = parts
        return self

    def result(self) -> SamplerOutput:
        if self._host is None:
            self.to_host()
        assert self._host is not None
        if self._event is not None:
            self._event.synchronize()
        tokens = self._host[0].tolist()
        if self._chosen is None:
            return SamplerOutput(tokens, None, None)
        chosen = self._host[1].tolist()
        top: list[list[tuple[int, float]]] = [[] for _ in tokens]
        if self._top is not None:
            vals_l, ids_l = self._host[2].tolist(), self._host[3].tolist()
            top = [list(zip(ids_l[i], vals_l[i]))[: max(w, 0)] for i, w in enumerate(self._want)]
        return SamplerOutput(tokens, chosen, top)


class Sampler:
    def __init__(self, device: torch.device, seed: int = 0) -> None:
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.extras: dict[int, RequestExtras] = {}
        self._special: set[int] = set()  # handles with bad words, a generator or a bias

    # ---- per-request state (the worker's side of a request) -------------------------------
    def register(self, handle: int, extras: RequestExtras) -> None:
        self.extras[handle] = extras
        if extras.bad_words or extras.generator is not None or extras.embedding_bias:
            self._special.add(handle)

    def release(self, handle: int) -> None:
        self.extras.pop(handle, None)
        self._special.discard(handle)

    def reads_history(self, plan: StepPlan) -> list[int]:
        """Sampling rows whose sampling reads the request's tokens (penalties, multi-token bad
        words): an overlapped engine must have their last token on the host first."""
        if not plan.num_samples:
            return []
        rows = plan.rows
        need = _uses_penalties(rows)
        if self._special:
            for i, h in enumerate(rows["sample_handles"].tolist()):
                if h in self._special and self.extras.get(h, _GONE).multi_token_bad_words:
                    need[i] = True
        return np.flatnonzero(need).tolist()  # type: ignore[no-any-return]

    # ---- one step --------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, logits: torch.Tensor, plan: StepPlan,
               history: dict[int, np.ndarray] | None = None) -> DeviceSample:
        """logits: [S, V] fp32, one row per sampling row of ``plan``. ``history``: sampling row
        -> prompt+output tokens, for the rows :meth:`reads_history` names. No host sync."""
        rows = plan.rows
        handles = rows["sample_handles"].tolist()
        raw = logits
        special = bool(self._special) and any(h in self._special for h in handles)
        masks = special or bool((rows["num_output"] < rows["min_tokens"]).any())
        pen_rows = np.flatnonzero(_uses_penalties(rows)).tolist()
        if masks or pen_rows:
            # a row whose request finished since it was planned (overlapped engines) samples
            # with neutral extras; its token is dropped by update()
            extras = [self.extras.get(h, _GONE) for h in handles]
            hist = history or {}
            logits = logits.clone()
            if special:
                logits = apply_embedding_bias(logits, extras)
            if masks:
                logits = apply_masks(logits, rows, extras, hist)
            if pen_rows:
                logits = apply_penalties(logits, rows, pen_rows, hist, extras)
        tokens = logits.argmax(-1)
        sampled = np.flatnonzero(rows["temperature"] > 0)
        if len(sampled):
            gens = [self.extras.get(handles[i], _GONE).generator if handles[i] in self._special else None
                    for i in sampled.tolist()]
            idx = torch.from_numpy(sampled).to(logits.device)
            tokens[idx] = _sample(_filter(logits[idx], rows, sampled), gens, self.gen)
        want = rows["logprobs"].tolist()
        if all(w < 0 for w in want):
            return DeviceSample(tokens, None, None, want)
        logp = raw.log_softmax(-1)
        chosen = logp.gather(1, tokens[:, None])[:, 0]
        k = max(want)
        return DeviceSample(tokens, chosen, logp.topk(k, dim=-1) if k > 0 else None, want)

    def __call__(self, logits: torch.Tensor, plan: StepPlan,
                 history: dict[int, np.ndarray] | None = None) -> SamplerOutput:
        return self.sample(logits, plan, history).result()
