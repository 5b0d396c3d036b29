"""`inflight bench scheduler`: CPU cost of one step's batch-manager work, no model.

Each step times what the engine does around the model, with fake requests (random prompts):

- plan: ``Scheduler.schedule()``: admission, chunking, block allocation, and the StepPlan's
  flat arrays written by the core into reused host buffers;
- meta: ``ModelRunner.prepare(plan)`` making the step's tensors from the plan;
- post: ``Scheduler.launched`` + ``Scheduler.update`` with one dummy token per sampling row
  (the core applies the length limit); finished requests are freed and replaced as the engine
  does.

``plan + meta`` is the figure to watch (<= 100 us per step at 256 running). To compare two
commits, run this module in each checkout on the same machine, alternating
(``benchmarks/gpu_bench.sh`` does that for the GPU host).

Scenarios: ``decode256`` / ``decode1024`` (N requests, all decoding) and ``mixed256``
(256 live requests with short outputs: finished ones are replaced by new prompts that are
prefilled in chunks next to the decodes; prefix reuse on, with a shared system prompt).

Usage: ``python -m inflight.tools.bench.scheduler_bench [--scenarios ...] [--steps N]`` or
``inflight bench scheduler``; ``run(num_running, ...)`` from Python.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any

import torch

from inflight.config import EngineConfig
from inflight.engine.kv_cache import KVCacheManager
from inflight.engine.scheduler import Scheduler, SequenceSpec
from inflight.engine.step_plan import StepPlan, StepResult
from inflight.worker.model_runner import ModelRunner

_NS = 1e-3  # ns -> us
IMPL = "cpp-owner"  # the C++ core owns request state; StepPlan boundary


@dataclass(frozen=True)
class Scenario:
    name: str
    num_running: int
    prompt_len: tuple[int, int]  # uniform range of prompt lengths
    output_len: tuple[int, int]  # uniform range of max_tokens; a request ends at max_tokens
    shared_prefix: int = 0  # tokens of a system prompt common to every request
    prefix_reuse: bool = False
    measure_prefill: bool = False  # False: warm up until every request decodes

    @property
    def max_seq_len(self) -> int:
        return self.prompt_len[1] + self.output_len[1]


SCENARIOS: dict[str, Scenario] = {
    "decode256": Scenario("decode256", 256, (128, 512), (4096, 4096)),
    "decode1024": Scenario("decode1024", 1024, (128, 512), (4096, 4096)),
    "mixed256": Scenario("mixed256", 256, (256, 1024), (16, 128), shared_prefix=64,
                         prefix_reuse=True, measure_prefill=True),
}


@dataclass
class Result:
    """Per-step figures in microseconds: medians over the measured steps. CPU time is the
    engine thread's (time.thread_time), which other processes on a busy machine do not
    inflate; wall time (perf_counter) is given next to it."""

    impl: str
    scenario: str
    num_running: int
    steps: int
    tokens_per_step: float
    decodes_per_step: float
    plan_cpu_us: float
    meta_cpu_us: float
    plan_meta_cpu_us: float  # the target figure
    plan_meta_cpu_p90_us: float
    plan_meta_wall_us: float
    post_cpu_us: float
    extra: dict[str, Any] = field(default_factory=dict)


def _stub_runner(cfg: EngineConfig, max_seq_len: int) -> ModelRunner:
    """A ModelRunner without a model or KV tensor: enough for prepare()."""
    r = ModelRunner.__new__(ModelRunner)
    r.cfg = cfg
    r.model_cfg = None  # type: ignore[assignment]
    r.device = torch.device("cpu")
    r.dtype = torch.float32
    r.max_seq_len = max_seq_len
    r.block_size = cfg.block_size
    r.max_blocks_per_seq = -(-max_seq_len // cfg.block_size)
    return r


class _Load:
    """Fake requests fed to a scheduler the way LLMEngine feeds them."""

    def __init__(self, sc: Scenario, sched: Scheduler, kv: KVCacheManager, seed: int) -> None:
        self.sc, self.sched, self.kv = sc, sched, kv
        self.rng = random.Random(seed)
        self.system = [self.rng.randrange(32000) for _ in range(sc.shared_prefix)]
        self.n = 0
        self.ids: dict[int, str] = {}

    def add(self) -> None:
        rng, sc = self.rng, self.sc
        plen = rng.randint(*sc.prompt_len)
        prompt = self.system + [rng.randrange(32000) for _ in range(plen - len(self.system))]
        rid = f"req-{self.n}"
        h = self.sched.add(SequenceSpec(rid, prompt, rng.randint(*sc.output_len), arrival_order=self.n))
        self.ids[h] = rid
        self.n += 1

    def after_step(self, plan: StepPlan) -> None:
        """What LLMEngine.step does after the model: launched, update, finish, replace."""
        self.sched.launched(plan)
        toks = 1 + plan.rows["num_output"] % 31999  # dummy; cheap so "post" is the bookkeeping
        ev = self.sched.update(plan, StepResult(plan.step, toks.astype("int64"),
                                                 _offsets(plan.num_samples)))
        for h in ev.handles[ev.finish != 0].tolist():
            self.sched.finish(h)
            self.kv.forget(self.ids.pop(h))
            self.add()


_OFFS: dict[int, Any] = {}


def _offsets(n: int) -> Any:
    if n not in _OFFS:
        import numpy as np

        _OFFS[n] = np.arange(n + 1, dtype=np.int64)
    return _OFFS[n]


def _build(sc: Scenario, seed: int, policy: str) -> tuple[Scheduler, KVCacheManager, ModelRunner, _Load]:
    block_size = 16
    cfg = EngineConfig(model="bench", block_size=block_size, max_batch_size=max(256, sc.num_running),
                       max_num_tokens=8192, batch_scheduler_policy=policy,
                       enable_kv_cache_reuse=sc.prefix_reuse)
    # enough blocks for every live request at its longest, plus room for cached prefixes
    num_blocks = sc.num_running * (-(-sc.max_seq_len // block_size)) + 1024
    kv = KVCacheManager(num_blocks, block_size, sc.prefix_reuse)
    sched = Scheduler(cfg, kv)
    load = _Load(sc, sched, kv, seed)
    for _ in range(sc.num_running):
        load.add()
    return sched, kv, _stub_runner(cfg, sc.max_seq_len), load


class _Clock:
    """Thread CPU time and wall time of consecutive phases."""

    def __init__(self) -> None:
        self.cpu: list[int] = []
        self.wall: list[int] = []

    def tick(self) -> None:
        self.cpu.append(time.thread_time_ns())
        self.wall.append(time.perf_counter_ns())

    def phases(self) -> tuple[list[int], list[int]]:
        c, w = self.cpu, self.wall
        return [b - a for a, b in pairwise(c)], [b - a for a, b in pairwise(w)]


def run(num_running: int = 256, *, scenario: str | Scenario | None = None,
        steps: int = 200, warmup: int = 20, seed: int = 0,
        policy: str = "guaranteed_no_evict") -> Result:
    """Measure ``steps`` steps of one scenario. ``scenario`` defaults to the decode scenario
    of ``num_running``."""
    sc = scenario if isinstance(scenario, Scenario) else SCENARIOS.get(
        scenario or f"decode{num_running}",
        Scenario(f"decode{num_running}", num_running, (128, 512), (4096, 4096)))
    sched, kv, runner, load = _build(sc, seed, policy)

    def step() -> tuple[StepPlan, _Clock]:
        clock = _Clock()
        clock.tick()
        plan = sched.schedule()
        clock.tick()
        runner.prepare(plan)
        clock.tick()
        load.after_step(plan)
        clock.tick()
        return plan, clock

    if not sc.measure_prefill:  # prefill everything first: measure pure decode steps
        while True:
            plan, _ = step()
            if not sched.num_waiting and plan.num_decodes == sched.num_running:
                break
    else:  # steady state: the first generation of requests has been replaced
        while load.n < 2 * sc.num_running:
            step()
    for _ in range(warmup):
        step()
    cpu: list[list[int]] = []  # per step: [plan, meta, post]
    wall: list[list[int]] = []
    tokens = decodes = 0
    gc.collect()
    for _ in range(steps):
        out, clock = step()
        c, w = clock.phases()
        cpu.append(c)
        wall.append(w)
        tokens += out.num_tokens
        decodes += out.num_decodes

    def med(xs: list[int]) -> float:
        return statistics.median(xs) * _NS

    both = sorted(c[0] + c[1] for c in cpu)
    return Result(
        impl=IMPL, scenario=sc.name, num_running=sc.num_running, steps=steps,
        tokens_per_step=tokens / steps, decodes_per_step=decodes / steps,
        plan_cpu_us=med([c[0] for c in cpu]), meta_cpu_us=med([c[1] for c in cpu]),
        plan_meta_cpu_us=med(both), plan_meta_cpu_p90_us=both[int(0.9 * (len(both) - 1))] * _NS,
        plan_meta_wall_us=med([w[0] + w[1] for w in wall]), post_cpu_us=med([c[2] for c in cpu]),
        extra={"hit_rate": round(kv.stats().hit_rate, 3)} if sc.prefix_reuse else {},
    )


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"torch {torch.__version__}")


HEADER = ("| impl | scenario | tokens/step | plan CPU us | meta CPU us | plan+meta CPU us (p90) "
          "| plan+meta wall us | post CPU us |")


def format_row(r: Result) -> str:
    return (f"| {r.impl} | {r.scenario} | {r.tokens_per_step:.0f} | {r.plan_cpu_us:.1f} | "
            f"{r.meta_cpu_us:.1f} | {r.plan_meta_cpu_us:.1f} ({r.plan_meta_cpu_p90_us:.1f}) | "
            f"{r.plan_meta_wall_us:.1f} | {r.post_cpu_us:.1f} |")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenarios", default=",".join(SCENARIOS),
                   help=f"comma-separated, from {', '.join(SCENARIOS)}")
    p.add_argument("--steps", type=int, default=200, help="measured steps per scenario")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policy", default="guaranteed_no_evict",
                   choices=("guaranteed_no_evict", "max_utilization"))
    p.add_argument("--rounds", type=int, default=1, help="runs per scenario; the median run is shown")
    p.add_argument("--json", default=None, help="also write the results to this file")


def _median_run(runs: list[Result]) -> Result:
    return sorted(runs, key=lambda r: r.plan_meta_cpu_us)[len(runs) // 2]


def main_args(args: argparse.Namespace, echo: Callable[[str], None] = print) -> int:
    names = args.scenarios.split(",")
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
    echo(f"# {datetime.date.today()} {machine()}")
    echo(HEADER)
    echo("|---|---|---|---|---|---|---|---|")
    results: list[Result] = []
    for name in names:
        sc = SCENARIOS[name]
        runs = [run(sc.num_running, scenario=sc, steps=args.steps, warmup=args.warmup,
                    seed=args.seed, policy=args.policy) for _ in range(args.rounds)]
        r = _median_run(runs)
        echo(format_row(r))
        results.append(r)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"machine": machine(), "date": str(datetime.date.today()),
                       "results": [asdict(r) for r in results]}, f, indent=2)
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``scheduler`` under an ``inflight bench`` subparsers object."""
    p = subparsers.add_parser("scheduler", help="CPU time per step of the batch manager (no model)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=main_args)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inflight.tools.bench.scheduler_bench",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return main_args(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
