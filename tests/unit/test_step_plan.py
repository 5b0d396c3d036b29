"""The StepPlan the C++ core writes (read through ModelRunner.prepare on CPU tensors), checked
against the flat layout of a Python oracle on random mixed prefill/decode steps, live and
after a round trip through bytes; buffer growth; the generic builder's checks."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch
from inflight import _core
from inflight.config import EngineConfig
from inflight.engine.kv_cache import KVCacheManager
from inflight.engine.scheduler import Scheduler, SequenceSpec
from inflight.engine.step_plan import StepBuffers, StepPlan, StepResult
from inflight.worker.model_runner import ModelRunner, StepInputs

BS = 4


def oracle(sched: Scheduler, kv: KVCacheManager, plan: StepPlan, ctx_wanted: set[int]) -> dict[str, Any]:
    """The layout of the pure-Python ModelRunner.prepare() the core replaced."""
    ids: list[int] = []
    pos: list[int] = []
    slots: list[int] = []
    qsl, seq_lens, logits, sample_rows = [0], [], [], []
    ctx: dict[int, tuple[int, int]] = {}
    tables = []
    for h, start, n, samples in sched.entries(plan):
        st = sched.state(h)
        toks, table, end = sched.tokens(h).tolist(), kv.block_table(st["id"]), start + n
        tables.append(table)
        for p in range(start, end):
            ids.append(toks[p])
            pos.append(p)
            slots.append(table[p // BS] * BS + p % BS)
        qsl.append(qsl[-1] + n)
        seq_lens.append(end)
        if h in ctx_wanted and start < st["num_prompt"]:
            n_ctx = min(end, st["num_prompt"]) - start
            ctx[h] = (len(logits), len(logits) + n_ctx)
            logits.extend(range(qsl[-2], qsl[-2] + n_ctx))
        if samples:
            if not logits or logits[-1] != qsl[-1] - 1:
                logits.append(qsl[-1] - 1)
            sample_rows.append(len(logits) - 1)
    width = max(map(len, tables))
    sizes = [n for _, _, n, _ in sched.entries(plan)]
    return {"input_ids": ids, "positions": pos, "slot_mapping": slots, "qsl": qsl,
            "seq_lens": seq_lens, "block_tables": [t + [0] * (width - len(t)) for t in tables],
            "logits_indices": logits, "sample_rows": sample_rows, "ctx_rows": ctx,
            "num_decodes": sum(1 for n in sizes if n == 1),
            "max_query_len": max(sizes), "max_seq_len": max(seq_lens)}


def flatten(inp: StepInputs, plan: StepPlan) -> dict[str, Any]:
    m = inp.meta
    assert inp.input_ids.dtype == inp.positions.dtype == m.slot_mapping.dtype == torch.int64
    assert m.query_start_loc.dtype == m.seq_lens.dtype == m.block_tables.dtype == torch.int32
    assert inp.logits_indices.dtype == torch.int64
    assert m.query_start_loc.tolist() == m.query_start_loc_cpu and m.seq_lens.tolist() == m.seq_lens_cpu
    return {"input_ids": inp.input_ids.tolist(), "positions": inp.positions.tolist(),
            "slot_mapping": m.slot_mapping.tolist(), "qsl": m.query_start_loc_cpu,
            "seq_lens": m.seq_lens_cpu, "block_tables": m.block_tables.tolist(),
            "logits_indices": inp.logits_indices.tolist(), "sample_rows": plan.sample_rows.tolist(),
            "ctx_rows": plan.ctx_rows, "num_decodes": m.num_decodes,
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
    ctx: set[int] = set()
    worker_bufs = StepBuffers(1, 1, 1)
    for n in range(60):
        if rng.random() < 0.4:
            prompt = shared[: rng.choice((0, 4, 8))] + [rng.randrange(50) for _ in range(rng.randint(1, 20))]
            want_ctx = rng.random() < 0.3
            h = sched.add(SequenceSpec(f"r{n}", prompt, rng.randint(1, 6), arrival_order=n,
                                       context_logits=want_ctx))
            if want_ctx:
                ctx.add(h)
        plan = sched.schedule()
        if not plan:
            continue
        want = oracle(sched, kv, plan, ctx)
        assert flatten(run.prepare(plan), plan) == want  # live: views of the host buffers
        back = StepPlan.from_bytes(plan.to_bytes())
        assert flatten(run.prepare(back), back) == want  # as a worker process would get it
        # a tensor-parallel worker rank: the received plan copied into its own (growing) buffers
        loaded = worker_bufs.load(StepPlan.from_bytes(plan.to_bytes()))
        assert loaded.buffers is worker_bufs
        assert np.shares_memory(loaded.arrays["block_tables"], worker_bufs.arrays["block_tables"])
        assert flatten(run.prepare(loaded), loaded) == want
        sched.launched(plan)
        ev = sched.update(plan, StepResult.one_per_row(plan.step, [rng.randrange(50) for _ in range(plan.num_samples)]))
        for i, h in enumerate(ev.handles.tolist()):
            if ev.finish[i]:
                kv.forget(sched.state(h)["id"])
                sched.finish(h)
        sched.check_integrity()


def test_buffers_grow_and_outputs_do_not_alias_them() -> None:
    cfg = EngineConfig(model="unused", block_size=BS, max_num_tokens=64, max_batch_size=8)
    kv = KVCacheManager(64, BS)
    sched = Scheduler(cfg, kv)
    sched.buffers = StepBuffers(2, 1, 1)  # far too small: grown on the first step
    run = runner(cfg)
    for i in range(3):
        sched.add(SequenceSpec(f"r{i}", list(range(1, 12)), 4))
    plan = sched.schedule()
    first = run.prepare(plan)
    assert first.input_ids.numel() == 33 and sched.buffers.capacity[0] >= 33
    snapshot = first.input_ids.clone()
    sched.launched(plan)
    sched.update(plan, StepResult.one_per_row(plan.step, [99, 99, 99]))
    run.prepare(sched.schedule())
    assert torch.equal(first.input_ids, snapshot)  # the next step did not overwrite it


def test_generic_builder_checks_its_inputs() -> None:
    bufs = StepBuffers(8, 2, 2)
    entry = ("r", [1, 2, 3, 4, 5], 0, 5, 5, True, False)
    with pytest.raises(AssertionError, match="block table too short"):
        _core.build_step_metadata([entry], [[0]], BS, bufs.views)
    with pytest.raises(AssertionError, match="past the request's tokens"):
        _core.build_step_metadata([entry[:3] + (6,) + entry[4:]], [[0, 1]], BS, bufs.views)
    with pytest.raises(TypeError, match="int32"):
        _core.StepBufferViews(*([np.zeros(4, np.int64)] * 8))
    lay = _core.build_step_metadata([entry], [[3, 1]], BS, bufs.views)
    assert (lay.num_tokens, lay.num_reqs, lay.table_width, lay.sample_rows) == (5, 1, 2, [0])
    assert bufs.arrays["slot_mapping"][:5].tolist() == [12, 13, 14, 15, 4]
