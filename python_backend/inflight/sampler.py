"""Batched token selection on the model's device.

Order: logit masks (bad words, min_tokens) -> penalties (repetition, presence, frequency)
-> greedy argmax, or temperature -> top-k -> top-p -> min-p -> exponential-race sampling.
Seeded rows draw their noise from their own ``torch.Generator``, so the same seed gives the
same tokens whatever else shares the batch. Logprobs are of the raw model distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .request import Request


@dataclass
class SamplerOutput:
    """Sampler -> engine: one entry per sampled row (host lists, one device->host copy)."""

    token_ids: list[int]
    logprobs: list[float] | None  # logprob of the chosen token, when any row asked
    top_logprobs: list[list[tuple[int, float]]] | None


def _penalty_tensors(reqs: list[Request], vocab: int, device: torch.device
                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(output token counts [B, V], prompt+output presence mask [B, V]) or None if unused."""
    if not any(_uses_penalties(r) for r in reqs):
        return None
    counts = torch.zeros(len(reqs), vocab, device=device)
    seen = torch.zeros(len(reqs), vocab, dtype=torch.bool, device=device)
    for i, r in enumerate(reqs):
        if not _uses_penalties(r):
            continue
        out = torch.tensor(r.output_token_ids, dtype=torch.long, device=device)
        if out.numel():
            counts[i].index_add_(0, out, torch.ones_like(out, dtype=counts.dtype))
        seen[i, torch.tensor(r.token_ids, dtype=torch.long, device=device)] = True
    return counts, seen


def _uses_penalties(r: Request) -> bool:
    p = r.params
    return p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0


def apply_penalties(logits: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
    """logits [B, V] fp32 -> penalised logits. Repetition penalty over prompt+output (HF
    semantics); presence/frequency penalties over the output (OpenAI semantics)."""
    pt = _penalty_tensors(reqs, logits.shape[1], logits.device)
    if pt is None:
        return logits
    counts, seen = pt
    dev = logits.device
    rep = torch.tensor([r.params.repetition_penalty for r in reqs], device=dev)[:, None]
    pres = torch.tensor([r.params.presence_penalty for r in reqs], device=dev)[:, None]
    freq = torch.tensor([r.params.frequency_penalty for r in reqs], device=dev)[:, None]
    penalised = torch.where(logits > 0, logits / rep, logits * rep)
    logits = torch.where(seen, penalised, logits)
    return logits - freq * counts - pres * (counts > 0).float()


def apply_masks(logits: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
    """Ban bad words (a multi-token word only when its prefix was just generated) and, until
    min_tokens, end tokens."""
    for i, r in enumerate(reqs):
        p = r.params
        out = r.output_token_ids
        for word in p.bad_words_ids:
            prefix = list(word[:-1])
            if not prefix or out[-len(prefix):] == prefix:
                logits[i, word[-1]] = float("-inf")
        if r.num_output_tokens < p.min_tokens:
            ends = set(p.stop_token_ids) | (set() if p.ignore_eos else set(r.eos_token_ids))
            if ends:
                logits[i, list(ends)] = float("-inf")
    return logits


def _filter(logits: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
    """Temperature, top-k, top-p, min-p on [B, V] -> filtered logits (-inf outside)."""
    dev = logits.device
    temp = torch.tensor([max(r.params.temperature, 1e-6) for r in reqs], device=dev)[:, None]
    logits = logits / temp
    top_k = [r.params.top_k for r in reqs]
    top_p = [r.params.top_p for r in reqs]
    min_p = [r.params.min_p for r in reqs]
    if any(k > 0 for k in top_k) or any(p < 1.0 for p in top_p):
        sorted_logits, idx = logits.sort(dim=-1, descending=True)
        v = logits.shape[1]
        k_t = torch.tensor([k if k > 0 else v for k in top_k], device=dev)[:, None]
        ranks = torch.arange(v, device=dev)[None, :]
        drop = ranks >= k_t
        probs = sorted_logits.masked_fill(drop, float("-inf")).softmax(-1)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        mass_before = probs.cumsum(-1) - probs
        drop |= mass_before >= torch.tensor(top_p, device=dev)[:, None]
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, idx, sorted_logits)
    if any(m > 0 for m in min_p):
        probs = logits.softmax(-1)
        thresh = probs.max(-1, keepdim=True).values * torch.tensor(min_p, device=dev)[:, None]
        logits = logits.masked_fill(probs < thresh, float("-inf"))
    return logits


def _sample(logits: torch.Tensor, reqs: list[Request], default_gen: torch.Generator | None
            ) -> torch.Tensor:
    """Exponential race: argmax(p / E) with E ~ Exp(1) equals sampling from p."""
    probs = logits.softmax(-1)
    noise = torch.empty_like(probs)
    seeded = [i for i, r in enumerate(reqs) if r.generator is not None]
    if len(seeded) < len(reqs):
        noise.exponential_(generator=default_gen)
    for i in seeded:
        noise[i].exponential_(generator=reqs[i].generator)
    return (probs / noise).argmax(-1)


class DeviceSample:
    """One step's sampled rows, still on the model's device. :meth:`to_host` starts the
    device->host copies without waiting; :meth:`result` waits for them (the one sync)."""

    def __init__(self, tokens: torch.Tensor, chosen: torch.Tensor | None,
                 top: tuple[torch.Tensor, torch.Tensor] | None, want: list[int | None]) -> None:
        self.tokens = tokens  # [B] int64, feeds the next step's inputs when overlapped
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
            top = [list(zip(ids_l[i], vals_l[i]))[: (w or 0)] for i, w in enumerate(self._want)]
        return SamplerOutput(tokens, chosen, top)


def reads_history(r: Request) -> bool:
    """Whether sampling this request reads its previous tokens (penalties, multi-token bad
    words): the overlapped engine must have the last token on the host first."""
    return _uses_penalties(r) or any(len(w) > 1 for w in r.params.bad_words_ids)


class Sampler:
    def __init__(self, device: torch.device, seed: int = 0) -> None:
        self.gen = torch.Generator(device=device).manual_seed(seed)

    @torch.no_grad()
    def sample(self, logits: torch.Tensor, reqs: list[Request]) -> DeviceSample:
        """logits: [B, V] fp32, one row per request that samples this step. No host sync."""
        raw = logits
        if any(_uses_penalties(r) or r.params.bad_words_ids or r.params.min_tokens for r in reqs):
            logits = apply_masks(apply_penalties(logits.clone(), reqs), reqs)
        greedy = [r.params.greedy for r in reqs]
        tokens = logits.argmax(-1)
        if not all(greedy):
            idx = [i for i, g in enumerate(greedy) if not g]
            sub = [reqs[i] for i in idx]
            sampled = _sample(_filter(logits[idx], sub), sub, self.gen)
            tokens[idx] = sampled
        want = [r.params.logprobs for r in reqs]
        if all(w is None for w in want):
            return DeviceSample(tokens, None, None, want)
        logp = raw.log_softmax(-1)
        chosen = logp.gather(1, tokens[:, None])[:, 0]
        k = max((w or 0) for w in want)
        return DeviceSample(tokens, chosen, logp.topk(k, dim=-1) if k > 0 else None, want)

    def __call__(self, logits: torch.Tensor, reqs: list[Request]) -> SamplerOutput:
        return self.sample(logits, reqs).result()
