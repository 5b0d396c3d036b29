"""Synthetic workloads: random token ids with normally distributed lengths (the
token-norm-dist method of TensorRT-LLM's prepare_dataset), so benchmarks need no data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Workload:
    prompts: list[list[int]]
    output_lens: list[int]

    @property
    def num_requests(self) -> int:
        return len(self.prompts)

    @property
    def input_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    @property
    def output_tokens(self) -> int:
        return sum(self.output_lens)


def token_norm_dist(num_requests: int, input_mean: int, output_mean: int, vocab: int,
                    input_stdev: float = 0.0, output_stdev: float = 0.0, seed: int = 0,
                    max_len: int | None = None, low_token: int = 10) -> Workload:
    """Lengths ~ N(mean, stdev) clipped to [1, max_len]; ids uniform in [low_token, vocab)."""
    rng = np.random.default_rng(seed)
    hi = max_len or 1 << 30
    ins = np.clip(np.rint(rng.normal(input_mean, input_stdev, num_requests)), 1, hi).astype(int)
    outs = np.clip(np.rint(rng.normal(output_mean, output_stdev, num_requests)), 1, hi).astype(int)
    prompts = [rng.integers(low_token, vocab, n).tolist() for n in ins]
    return Workload(prompts, outs.tolist())


def sharegpt_like(num_requests: int, vocab: int, seed: int = 0, max_len: int = 2048) -> Workload:
    """Lengths shaped like ShareGPT conversations (log-normal, mean ~202 in / ~179 out)."""
    rng = np.random.default_rng(seed)

    def lognormal(mean: float, sigma: float) -> np.ndarray:
        mu = np.log(mean) - sigma**2 / 2
        return np.clip(np.rint(rng.lognormal(mu, sigma, num_requests)), 4, max_len).astype(int)

    ins, outs = lognormal(202, 0.9), lognormal(179, 0.9)
    prompts = [rng.integers(10, vocab, n).tolist() for n in ins]
    return Workload(prompts, outs.tolist())
