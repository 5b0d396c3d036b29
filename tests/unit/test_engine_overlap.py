"""Overlapped scheduling (``overlap_scheduler="on"``): step N+1 is planned and launched before
step N's tokens reach the host, the next inputs are taken from the device, and placeholders
stand in for the pending tokens. Whatever a request asks for, the outputs must equal the
synchronous engine's, the planner must stay consistent after every step, and every KV block
must be free at the end (no placeholder may leak into an output, a block hash or a metric)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from inflight.config import EngineConfig
from inflight.engine.core import LLMEngine
from inflight.outputs import SequenceUpdate
from inflight.sampling_params import SamplingParams

SMALL = {"max_seq_len": 256, "block_size": 8, "max_tokens_in_paged_kv_cache": 2048}
PROMPTS = [[1, 5, 9], list(range(3, 40)), [7] * 17, list(range(100, 160, 3)), [2], list(range(50, 58))]
Req = tuple[list[int], SamplingParams]


def _run(model_dir: str, mode: str, reqs: list[Req], late: list[Req] | None = None,
         abort: dict[int, str] | None = None, **cfg: Any) -> tuple[dict[str, dict[str, Any]], LLMEngine]:
    """Run `reqs` (and `late` ones added after step 2; `abort` maps step -> request id) to the
    end; returns per request id the concatenated stream and its final update."""
    engine = LLMEngine(EngineConfig.from_kwargs(model_dir, overlap_scheduler=mode, **{**SMALL, **cfg}))
    assert engine.overlap is (mode == "on")
    got: dict[str, dict[str, Any]] = {}

    def sink(u: SequenceUpdate) -> None:
        key = f"{u.request_id}/{u.index}"
        g = got.setdefault(key, {"tokens": [], "text": "", "logprobs": [], "finals": 0})
        g["tokens"] += u.token_ids
        g["text"] += u.text
        g["logprobs"] += u.logprobs or []
        if u.finished:
            g["finals"] += 1
            g["final"] = u

    for i, (p, sp) in enumerate(reqs):
        engine.add_request(f"r{i}", p, sp, callback=sink)
    step = 0
    while engine.has_unfinished():
        step += 1
        if step == 3:
            for i, (p, sp) in enumerate(late or []):
                engine.add_request(f"late{i}", p, sp, callback=sink)
        if abort and step in abort:
            engine.abort(abort[step])
        engine.step()
        engine.scheduler.check_integrity()
        assert step < 2000, "engine did not finish"
    engine.kv.assert_all_free()
    assert not engine.seqs and not engine.scheduler.has_work()
    for key, g in got.items():
        assert g["finals"] == 1, f"{key}: {g['finals']} final updates"
    return got, engine


def _same(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]], logits: bool = False) -> None:
    assert a.keys() == b.keys()
    for key in a:
        x, y = a[key], b[key]
        assert x["tokens"] == y["tokens"], key
        assert x["text"] == y["text"], key
        fx, fy = x["final"], y["final"]
        assert (fx.finish_reason, fx.stop_reason) == (fy.finish_reason, fy.stop_reason), key
        assert fx.metrics.num_output_tokens == fy.metrics.num_output_tokens == len(x["tokens"]), key
        assert len(x["logprobs"]) == len(y["logprobs"]), key
        for lx, ly in zip(x["logprobs"], y["logprobs"], strict=True):
            assert lx.keys() == ly.keys(), key
            assert all(lx[t] == pytest.approx(ly[t], abs=1e-5) for t in lx), key
        if logits:
            for name in ("generation_logits", "context_logits"):
                tx, ty = getattr(fx, name), getattr(fy, name)
                assert (tx is None) == (ty is None), (key, name)
                if tx is not None:
                    assert tx.shape == ty.shape, (key, name)
                    torch.testing.assert_close(tx, ty, atol=1e-5, rtol=1e-5)


def _both(tiny_model_dir: Callable[[str], str], reqs: list[Req], family: str = "llama",
          **kw: Any) -> tuple[dict[str, dict[str, Any]], LLMEngine, LLMEngine]:
    d = tiny_model_dir(family)
    off, e_off = _run(d, "off", reqs, **kw)
    on, e_on = _run(d, "on", reqs, **kw)
    _same(on, off, logits=True)
    return on, e_on, e_off


def _greedy(n: int, **kw: Any) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True, **kw)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_greedy_batch_with_staggered_ends_and_late_arrivals(tiny_model_dir: Callable[[str], str],
                                                            family: str) -> None:
    reqs = [(p, _greedy(1 + 5 * i)) for i, p in enumerate(PROMPTS)]
    late = [(list(range(9, 30)), _greedy(7)), ([4, 4, 4], _greedy(1))]
    on, e_on, e_off = _both(tiny_model_dir, reqs, family=family, late=late)
    assert len(on["r0/0"]["tokens"]) == 1 and len(on["r5/0"]["tokens"]) == 26
    # one planned-ahead step per batch end at most: the overlap costs no extra tokens
    assert e_off.num_steps <= e_on.num_steps <= e_off.num_steps + 3


def test_chunked_prefill(tiny_model_dir: Callable[[str], str]) -> None:
    reqs = [(p, _greedy(12)) for p in PROMPTS]
    _both(tiny_model_dir, reqs, max_num_tokens=8)


def test_preemption_by_recompute(tiny_model_dir: Callable[[str], str]) -> None:
    reqs = [(p, _greedy(40)) for p in PROMPTS]
    on, e_on, e_off = _both(tiny_model_dir, reqs, batch_scheduler_policy="max_utilization",
                            max_tokens_in_paged_kv_cache=160)
    assert sum(g["final"].metrics.num_preemptions for g in on.values()) > 0, "nothing was preempted"


def test_prefix_reuse_hashes_the_real_tokens(tiny_model_dir: Callable[[str], str]) -> None:
    """Generated tokens fill blocks that get registered for reuse one step later than the
    token is sampled; a second wave whose prompts are the first wave's prompt + output must
    hit those blocks and still produce the same tokens as without reuse."""
    d = tiny_model_dir("llama")
    first = [(p, _greedy(30)) for p in PROMPTS[:3]]
    base, _ = _run(d, "off", first)
    wave2 = [(p + base[f"r{i}/0"]["tokens"][:25], _greedy(9)) for i, (p, _) in enumerate(first)]
    ref, _ = _run(d, "off", wave2)
    engine = LLMEngine(EngineConfig.from_kwargs(d, overlap_scheduler="on", enable_kv_cache_reuse=True, **SMALL))
    out: dict[str, list[int]] = {}
    reused: dict[str, int] = {}

    def sink(u: SequenceUpdate) -> None:
        out.setdefault(u.request_id, []).extend(u.token_ids)
        if u.finished:
            reused[u.request_id] = u.metrics.kv_reused_blocks

    for wave, tag in ((first, "a"), (wave2, "b")):
        for i, (p, sp) in enumerate(wave):
            engine.add_request(f"{tag}{i}", p, sp, callback=sink)
        while engine.has_unfinished():
            engine.step()
            engine.scheduler.check_integrity()
    for i in range(3):
        assert out[f"a{i}"] == base[f"r{i}/0"]["tokens"]
        assert out[f"b{i}"] == ref[f"r{i}/0"]["tokens"], f"wave-2 request {i} diverged under reuse"
        # prompt + 25 generated tokens: the blocks holding generated tokens are reused too
        assert reused[f"b{i}"] * 8 > len(PROMPTS[i]), reused
    engine.kv.assert_all_free()


def test_sampling_features(tiny_model_dir: Callable[[str], str]) -> None:
    d = tiny_model_dir("llama")
    seeded = dict(temperature=0.9, top_k=50, top_p=0.95, max_tokens=20, ignore_eos=True)
    reqs: list[Req] = [
        (PROMPTS[1], SamplingParams(seed=3, logprobs=3, **seeded)),
        (PROMPTS[2], SamplingParams(seed=4, repetition_penalty=1.3, presence_penalty=0.5, **seeded)),
        (PROMPTS[3], _greedy(20, frequency_penalty=1.0, logprobs=0)),
        (PROMPTS[0], _greedy(20, bad_words_ids=[[3, 4], [11]], min_tokens=5)),
        (PROMPTS[5], SamplingParams(seed=5, n=3, **seeded)),
        (PROMPTS[4], SamplingParams(temperature=0.0, max_tokens=30, min_tokens=3)),
    ]
    # stop on the 6th greedy token of the third request and on a 2-token sequence of the fourth
    ref, _ = _run(d, "off", [(PROMPTS[3], _greedy(20)), (PROMPTS[0], _greedy(20))])
    t3, t0 = ref["r0/0"]["tokens"], ref["r1/0"]["tokens"]
    reqs.append((PROMPTS[3], _greedy(20, stop_token_ids=[t3[5]])))
    reqs.append((PROMPTS[0], _greedy(20, stop_words_ids=[t0[7:9]])))
    on, _, _ = _both(tiny_model_dir, reqs)
    assert on["r6/0"]["final"].finish_reason == "stop" and on["r7/0"]["final"].finish_reason == "stop"
    assert len(on["r6/0"]["tokens"]) <= 6 and len(on["r7/0"]["tokens"]) <= 7


def test_returned_logits_and_single_token_requests(tiny_model_dir: Callable[[str], str]) -> None:
    reqs = [(PROMPTS[1], _greedy(6, return_generation_logits=True, return_context_logits=True)),
            (PROMPTS[3], _greedy(1, return_generation_logits=True)),
            (PROMPTS[0], _greedy(1))]
    on, _, _ = _both(tiny_model_dir, reqs)
    assert on["r0/0"]["final"].generation_logits.shape[0] == 6
    assert on["r1/0"]["final"].generation_logits.shape[0] == 1


def test_abort_with_a_token_in_flight(tiny_model_dir: Callable[[str], str]) -> None:
    d = tiny_model_dir("llama")
    reqs = [(p, _greedy(30)) for p in PROMPTS[:4]]
    full, _ = _run(d, "off", reqs)
    for step in (1, 2, 5):
        on, e_on = _run(d, "on", reqs, abort={step: "r1", step + 3: "r3"})
        for key in ("r1/0", "r3/0"):
            g = on[key]
            assert g["final"].finish_reason == "abort"
            n = len(g["tokens"])
            assert n < 30 and g["tokens"] == full[key]["tokens"][:n], "a placeholder leaked out"
            assert g["final"].metrics.num_output_tokens == n
        for key in ("r0/0", "r2/0"):
            assert on[key]["tokens"] == full[key]["tokens"]


def test_overlap_scheduler_is_validated(tiny_model_dir: Callable[[str], str]) -> None:
    from inflight.errors import ConfigError

    with pytest.raises(ConfigError, match="overlap_scheduler must be auto, on or off"):
        EngineConfig.from_kwargs(tiny_model_dir("llama"), overlap_scheduler="yes")
    with pytest.raises(ConfigError, match="overlap_min_running must be >= 0, got -1"):
        EngineConfig.from_kwargs(tiny_model_dir("llama"), overlap_min_running=-1)


def _count_modes(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the engine's overlapped and synchronous steps."""
    counts = {"overlapped": 0, "sync": 0}
    for name, key in (("_step_overlapped", "overlapped"), ("_step_sync", "sync")):
        orig = getattr(LLMEngine, name)

        def counted(self: LLMEngine, _orig: Callable[..., Any] = orig, _key: str = key) -> Any:
            counts[_key] += 1
            return _orig(self)

        monkeypatch.setattr(LLMEngine, name, counted)
    return counts


def test_overlap_only_above_min_running(tiny_model_dir: Callable[[str], str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """overlap_min_running=3: the engine switches between overlapped and synchronous steps as
    the batch shrinks (staggered ends) and grows (late arrivals), finishing the step in flight
    whenever it leaves the overlap; the outputs are the synchronous engine's, bit for bit."""
    d = tiny_model_dir("llama")
    reqs = [(p, _greedy(1 + 5 * i)) for i, p in enumerate(PROMPTS)]
    late = [(list(range(9, 30)), _greedy(7)), ([4, 4, 4], _greedy(1))]
    off, _ = _run(d, "off", reqs, late=late)
    counts = _count_modes(monkeypatch)
    mixed, _ = _run(d, "on", reqs, late=late, overlap_min_running=3)
    _same(mixed, off, logits=True)
    assert counts["overlapped"] > 0 and counts["sync"] > 0, counts


def _steps_to_first_token(model_dir: str, min_running: int) -> int:
    """step() calls from a request's arrival, while another one is decoding, to its first token."""
    engine = LLMEngine(EngineConfig.from_kwargs(model_dir, overlap_scheduler="on",
                                                overlap_min_running=min_running, **SMALL))
    engine.add_request("a", PROMPTS[1], _greedy(30), callback=lambda u: None)
    for _ in range(4):
        engine.step()
    first: list[int] = []
    calls = 0
    engine.add_request("b", PROMPTS[3], _greedy(5),
                       callback=lambda u: first.append(calls) if u.token_ids and not first else None)
    while not first:
        calls += 1
        engine.step()
        assert calls < 10
    while engine.has_unfinished():
        engine.step()
    engine.kv.assert_all_free()
    return first[0]


def test_a_synchronous_step_gives_a_new_request_its_first_token_one_step_earlier(
        tiny_model_dir: Callable[[str], str]) -> None:
    """Overlapped, step N+1 is launched before a request that arrives during step N is seen:
    its prefill runs one step later than synchronously. overlap_min_running above the batch
    removes that step from its time to first token."""
    d = tiny_model_dir("llama")
    overlapped = _steps_to_first_token(d, 0)
    sync = _steps_to_first_token(d, 2)  # one sequence running: below 2
    assert (overlapped, sync) == (2, 1)
