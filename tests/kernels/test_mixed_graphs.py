"""MixedGraphs (worker/cuda_graphs.py): the padded forward a mixed-step CUDA graph replays
gives the eager step's logits, on the steps an engine really makes (chunked prefill next
to running decodes, a one-token last chunk, new prompts joining). On CPU the kernels run in
Triton's interpreter and ``run`` executes the padded forward without capture (no CUDA); the
GPU test captures and replays."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from inflight.config import EngineConfig
from inflight.engine.core import LLMEngine
from inflight.sampling_params import SamplingParams
from inflight.testing.tiny import tiny_model_dir
from inflight.worker.cuda_graphs import MixedGraphs, token_buckets


def test_token_buckets() -> None:
    assert token_buckets(512) == [16, 32, 64, 128, 192, 256, 320, 384, 448, 512]
    assert token_buckets(100) == [16, 32, 64, 100] and token_buckets(16) == [16]
    assert token_buckets(8192)[-7:] == [832, 896, 960, 1024, 2048, 4096, 8192]
    assert token_buckets(1000)[-2:] == [960, 1000]


def _engine(device: str, **kw: Any) -> LLMEngine:
    return LLMEngine(EngineConfig(model=tiny_model_dir("llama"), device=device, dtype="float32",
                                  attention_backend="triton", max_num_tokens=48, max_seq_len=256,
                                  max_tokens_in_paged_kv_cache=2048, max_batch_size=8, **kw))


def _drive(engine: LLMEngine, check: Any) -> list[tuple[int, int, int]]:
    """Prompts of several lengths (one longer than max_num_tokens: chunked), two joining
    while the first ones decode; every step goes through ``check``."""
    runner = engine.runner
    eager = runner.execute
    seen: list[tuple[int, int, int]] = []

    def both(inp: Any) -> torch.Tensor:
        out = eager(inp)
        if check(inp, out):
            m = inp.meta
            seen.append((m.num_decodes, m.num_reqs, m.num_tokens))
        return out

    runner.execute = both  # type: ignore[method-assign]
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, detokenize=False)
    first = [[5, 9, 13], list(range(20, 37))]
    joining = {2: [list(range(40, 110))], 4: [[7] * 5], 5: [[3] * 33, [11, 12]]}  # at step k
    for i, p in enumerate(first):
        engine.add_request(str(i), p, params)
    steps, n = 0, len(first)
    while engine.has_unfinished():
        engine.step()
        steps += 1
        for p in joining.get(steps, []):  # while the others decode
            engine.add_request(str(n), p, params)
            n += 1
    engine.kv.assert_all_free()
    return seen


def test_padded_mixed_forward_equals_the_eager_step() -> None:
    engine = _engine("cuda" if torch.cuda.is_available() else "cpu")  # the kernels run where they can
    r = engine.runner
    mg = MixedGraphs(r.model, r.kv_cache, r.backend, 48, 4, r.max_blocks_per_seq, r.max_seq_len,
                     r.model_cfg.vocab_size, r.device)
    fits = []

    def check(inp: Any, eager: torch.Tensor) -> bool:
        if not mg.fits(inp.meta, inp.num_logits):
            fits.append(False)
            return False
        fits.append(True)
        got = mg.run(inp.input_ids, inp.positions, inp.meta, inp.logits_indices)
        torch.testing.assert_close(got, eager, atol=1e-4, rtol=1e-4)
        return True

    seen = _drive(engine, check)
    assert any(nd > 0 for nd, _, _ in seen), "a prefill chunk next to running decodes"
    assert any(t < 16 for _, _, t in seen) and any(t > 32 for _, _, t in seen), seen  # buckets
    assert False in fits  # pure decodes and 5 or 6 requests at once (max_reqs 4) stay eager


def test_mixed_graphs_refuse_the_torch_backend() -> None:
    from inflight.model.attention import get_attention_backend

    with pytest.raises(ValueError, match="triton attention backend"):
        MixedGraphs(torch.nn.Identity(), torch.zeros(1), get_attention_backend("torch", "cpu"),
                    32, 2, 4, 64, 10, torch.device("cpu"))


def test_cuda_graph_max_tokens_is_checked() -> None:
    from inflight.errors import ConfigError

    d = tiny_model_dir("llama")
    assert EngineConfig(model=d).cuda_graph_max_tokens == 512  # on by default
    with pytest.raises(ConfigError, match=r"cuda_graph_max_tokens must be 0 \(off\) or >= 16 "
                       r"\(used up to max_num_tokens, 64\), got 8"):
        EngineConfig(model=d, max_num_tokens=64, cuda_graph_max_tokens=8)
    with pytest.raises(ConfigError, match="cuda_graph_max_tokens must be >= 0, got -1"):
        EngineConfig(model=d, cuda_graph_max_tokens=-1)
    # above max_num_tokens: the graphs stop there (the default 512 with a small max_num_tokens)
    assert EngineConfig(model=d, max_num_tokens=64, cuda_graph_max_tokens=100).cuda_graph_max_tokens == 100


@pytest.mark.gpu
def test_mixed_graphs_replay_equals_eager_on_the_gpu() -> None:
    """Captured: the runner replays mixed steps from graphs; their logits equal an eager
    engine's (same weights) on the same steps."""
    engine = _engine("cuda", cuda_graph_max_tokens=48)
    mg = engine.runner.mixed_graphs
    assert mg is not None and sorted(mg.graphs) == [16, 32, 48]
    replayed = []

    def check(inp: Any, out: torch.Tensor) -> bool:
        if mg.fits(inp.meta, inp.num_logits):
            replayed.append(out.clone())
            return True
        return False

    seen = _drive(engine, check)
    ref_engine = _engine("cuda", cuda_graph_max_tokens=0)  # eager mixed steps
    ref: list[torch.Tensor] = []
    _drive(ref_engine, lambda inp, out: (ref.append(out.clone()) or True)
           if inp.meta.num_decodes < inp.meta.num_reqs <= 8 and inp.meta.num_tokens <= 48 else False)
    assert seen and len(replayed) == len(ref)
    for a, b in zip(replayed, ref):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)
