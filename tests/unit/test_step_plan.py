"""Step metadata written by the C++ core (ModelRunner.prepare on CPU tensors): checked against
the flat layout the pure-Python prepare() produced, on random mixed prefill/decode steps,
through the scheduler's plan and through the generic path for hand-made outputs."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch
from inflight import _core
from inflight.config import EngineConfig
from inflight.kv_cache_manager import KVCacheManager
from inflight.model_runner import ModelRunner, StepInputs
from inflight.request import Request, RequestStatus
from inflight.sampling_params import SamplingParams
from inflight.scheduler import ScheduledRequest, Scheduler, SchedulerOutput, StepBuffers

BS = 4


def oracle(out: SchedulerOutput, tables: list[list[int]]) -> dict[str, Any]:
    """The layout of the pure-Python ModelRunner.prepare() this replaced."""
    ids: list[int] = []
    pos: list[int] = []
    slots: list[int] = []
    qsl, seq_lens, logits, sample_rows = [0], [], [], []
    ctx: dict[str, tuple[int, int]] = {}
    for s, table in zip(out.scheduled, tables, strict=True):
        r, end = s.request, s.start + s.num_new_tokens
        for p in range(s.start, end):
            ids.append(r.token_ids[p])
            pos.append(p)
            slots.append(table[p // BS] * BS + p % BS)
        qsl.append(qsl[-1] + s.num_new_tokens)
        seq_lens.append(end)
        if r.context_logits is not None and s.start < r.num_prompt_tokens:
            n_ctx = min(end, r.num_prompt_tokens) - s.start
            ctx[r.request_id] = (len(logits), len(logits) + n_ctx)
            logits.extend(range(qsl[-2], qsl[-2] + n_ctx))
        if s.samples:
            if not logits or logits[-1] != qsl[-1] - 1:
                logits.append(qsl[-1] - 1)
            sample_rows.append(len(logits) - 1)
    width = max(map(len, tables))
    return {"input_ids": ids, "positions": pos, "slot_mapping": slots, "qsl": qsl,
            "seq_lens": seq_lens, "block_tables": [t + [0] * (width - len(t)) for t in tables],
            "logits_indices": logits, "sample_rows": sample_rows, "ctx_rows": ctx,
            "num_decodes": sum(1 for s in out.scheduled if s.num_new_tokens == 1),
            "max_query_len": max(s.num_new_tokens for s in out.scheduled), "max_seq_len": max(seq_lens)}


def flatten(inp: StepInputs) -> dict[str, Any]:
    m = inp.meta
    assert inp.input_ids.dtype == inp.positions.dtype == m.slot_mapping.dtype == torch.int64
    assert m.query_start_loc.dtype == m.seq_lens.dtype == m.block_tables.dtype == torch.int32
    assert inp.logits_indices.dtype == torch.int64
    assert m.query_start_loc.tolist() == m.query_start_loc_cpu and m.seq_lens.tolist() == m.seq_lens_cpu
    return {"input_ids": inp.input_ids.tolist(), "positions": inp.positions.tolist(),
            "slot_mapping": m.slot_mapping.tolist(), "qsl": m.query_start_loc_cpu,
            "seq_lens": m.seq_lens_cpu, "block_tables": m.block_tables.tolist(),
            "logits_indices": inp.logits_indices.tolist(), "sample_rows": inp.sample_rows,
            "ctx_rows": inp.ctx_rows, "num_decodes": m.num_decodes,
            "max_query_len": m.max_query_len, "max_seq_len": m.max_seq_len}


def runner(cfg: EngineConfig, max_seq_len: int = 256) -> ModelRunner:
    """A ModelRunner without a model: prepare() needs only these."""
    r = ModelRunner.__new__(ModelRunner)
    r.cfg, r.device, r.block_size = cfg, torch.device("cpu"), cfg.block_size
    r.max_seq_len, r.max_blocks_per_seq = max_seq_len, -(-max_seq_len // cfg.block_size)
    return r


@pytest.mark.parametrize("seed", range(4))
def test_prepare_matches_the_python_layout_on_random_steps(seed: int) -> None:
    rng = random.Random(seed)
    reuse = seed % 2 == 1
    cfg = EngineConfig(model="unused", block_size=BS, max_num_tokens=24, max_batch_size=6,
                       enable_kv_cache_reuse=reuse, batch_scheduler_policy="max_utilization")
    kv = KVCacheManager(40, BS, reuse)
    sched = Scheduler(cfg, kv)
    run = runner(cfg)
    shared = [rng.randrange(50) for _ in range(8)]
    n = 0
    for _ in range(60):
        if rng.random() < 0.4:
            params = SamplingParams(max_tokens=rng.randint(1, 6),
                                    return_context_logits=rng.random() < 0.3)
            prompt = shared[: rng.choice((0, 4, 8))] + [rng.randrange(50) for _ in range(rng.randint(1, 20))]
            sched.add(Request(f"r{n}", prompt, params, params.max_tokens or 1, frozenset(),
                              arrival_order=n))
            n += 1
        out = sched.schedule()
        if not out:
            continue
        tables = [kv.block_table(s.request.request_id) for s in out.scheduled]
        want = oracle(out, tables)
        assert flatten(run.prepare(out, [])) == want  # the plan's own tables
        hand_made = SchedulerOutput(list(out.scheduled))
        assert flatten(run.prepare(hand_made, tables)) == want  # the generic path
        sched.advance(out.scheduled)
        for s in out.scheduled:
            if s.samples:
                s.request.append_token(rng.randrange(50))
                if s.request.num_output_tokens >= s.request.max_tokens:
                    sched.finish(s.request, RequestStatus.FINISHED_LENGTH)
        sched.check_integrity()


def test_buffers_grow_and_outputs_do_not_alias_them() -> None:
    cfg = EngineConfig(model="unused", block_size=BS, max_num_tokens=64, max_batch_size=8)
    kv = KVCacheManager(64, BS)
    sched = Scheduler(cfg, kv)
    run = runner(cfg)
    run._step_buffers = StepBuffers(BS, 2, 1, 1)  # far too small: grown on the first step
    for i in range(3):
        sched.add(Request(f"r{i}", list(range(1, 12)), SamplingParams(max_tokens=4), 4, frozenset()))
    out = sched.schedule()
    first = run.prepare(out, [])
    assert first.input_ids.numel() == 33 and run._step_buffers.capacity[0] >= 33
    snapshot = first.input_ids.clone()
    sched.advance(out.scheduled)
    for s in out.scheduled:
        s.request.append_token(99)
    run.prepare(sched.schedule(), [])
    assert torch.equal(first.input_ids, snapshot)  # the next step did not overwrite it


def test_a_stale_plan_falls_back_to_the_given_tables() -> None:
    cfg = EngineConfig(model="unused", block_size=BS, max_num_tokens=64)
    kv = KVCacheManager(64, BS)
    sched = Scheduler(cfg, kv)
    a = Request("a", [1, 2, 3], SamplingParams(max_tokens=2), 2, frozenset())
    b = Request("b", [4, 5, 6, 7, 8], SamplingParams(max_tokens=2), 2, frozenset())
    sched.add(a)
    sched.add(b)
    out = sched.schedule()
    tables = [kv.block_table("a"), kv.block_table("b")]
    sched.finish(b, RequestStatus.FINISHED_ABORTED)  # the plan is no longer intact
    got = flatten(runner(cfg).prepare(out, tables))
    assert got == oracle(out, tables)


def test_generic_builder_checks_its_inputs() -> None:
    bufs = StepBuffers(BS, 8, 2, 2)
    r = Request("r", [1, 2, 3, 4, 5], SamplingParams(), 1, frozenset())
    with pytest.raises(AssertionError, match="block table too short"):
        bufs.build(SchedulerOutput([ScheduledRequest(r, 5, 0)]), [[0]])
    with pytest.raises(AssertionError, match="past the request's tokens"):
        bufs.build(SchedulerOutput([ScheduledRequest(r, 6, 0)]), [[0, 1]])
    with pytest.raises(TypeError, match="int32"):
        _core.StepBufferViews(*([np.zeros(4, np.int64)] * 8))
    lay = bufs.build(SchedulerOutput([ScheduledRequest(r, 5, 0)]), [[3, 1]])
    assert (lay.num_tokens, lay.num_reqs, lay.table_width, lay.sample_rows) == (5, 1, 2, [0])
    assert bufs.arrays["slot_mapping"][:5].tolist() == [12, 13, 14, 15, 4]
