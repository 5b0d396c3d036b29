"""benchmarks/quant_perplexity.py (issue 14's GPU perplexity run) end to end at tiny size on
CPU: stdlib corpus split by file, BPE tokenizer, a small Llama trained a few steps, and the
perplexity of the held-out windows through inflight's engine (bf16, fp8, fp8 + FP8 KV, the
INT4 AWQ checkpoint of ``inflight quantize``) and transformers. In float32 the engine's bf16
row must equal transformers' own loss on the same windows (a check of the evaluation path:
context logits, the shift by one, the tokenizer round trip); the quantized rows must be
finite and close."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors import safe_open

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "quant_perplexity.py"
FORMATS = ["transformers bf16", "bf16", "fp8", "fp8+kv-fp8", "int4-awq"]


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("quant_perplexity", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def qp() -> ModuleType:
    return _module()


@pytest.fixture(scope="module")
def run(qp: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("qppl")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INFLIGHT_NO_PROGRESS", "1")
        res = qp.main(["--tiny", "--device", "cpu", "--out", str(tmp / "ckpt"),
                       "--json", str(tmp / "result.json")])
    return res, tmp


def test_split_is_by_file_and_deterministic(qp: ModuleType) -> None:
    files = qp.stdlib_files(40)
    assert files == qp.stdlib_files(40) and len(files) == 40
    assert all(f.endswith(".py") and "site-packages" not in f for f in files)
    train, held = qp.read_split(files, 20)
    assert len(held) == 2 and len(train) + len(held) <= 40  # files 19 and 39 held out
    assert held[0] == Path(files[19]).read_text(encoding="utf-8")
    assert not set(held) & set(train)


def test_window_nll_is_cross_entropy(qp: ModuleType) -> None:
    logits = torch.randn(7, 11, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([3, 1, 4, 1, 5, 9, 2])
    s, c = qp.window_nll(logits, ids)
    assert c == 6
    ref = torch.nn.functional.cross_entropy(logits[:-1], ids[1:], reduction="sum")
    assert s == pytest.approx(float(ref), rel=1e-6)


def test_tiny_pipeline_rows(run: tuple[dict, Path]) -> None:
    res, tmp = run
    assert json.loads((tmp / "result.json").read_text()) == res
    rows = {r["format"]: r for r in res["rows"]}
    assert list(rows) == FORMATS
    assert [r for r in res["rows"] if "error" in r] == []
    ppl = {k: r["perplexity"] for k, r in rows.items()}
    vocab = res["args"]["vocab"]
    assert all(math.isfinite(p) and 1 < p < vocab for p in ppl.values()), ppl
    assert ppl["bf16"] < 0.9 * vocab  # trained: below the uniform distribution's perplexity
    # float32 on CPU: the engine computes what transformers computes
    assert ppl["bf16"] == pytest.approx(ppl["transformers bf16"], rel=1e-5)
    for fmt in ("fp8", "fp8+kv-fp8", "int4-awq"):  # the quantized path ran: not bf16's numbers
        assert abs(rows[fmt]["rel_change"]) > 1e-7, fmt
    assert abs(rows["fp8"]["rel_change"]) < 0.02
    assert abs(rows["fp8+kv-fp8"]["rel_change"]) < 0.02
    assert -0.05 < rows["int4-awq"]["rel_change"] < 0.2
    for r in rows.values():
        assert r["rel_change"] == pytest.approx(r["perplexity"] / ppl["bf16"] - 1)
        assert r["met"] == (None if r["bound"] is None else r["rel_change"] <= r["bound"])
    assert (rows["fp8"]["bound"], rows["int4-awq"]["bound"]) == (0.01, 0.05)
    assert res["train"]["steps"] == res["args"]["steps"] == 30


@torch.inference_mode()
def test_tiny_pipeline_matches_transformers_loss(qp: ModuleType, run: tuple[dict, Path]) -> None:
    """Independent of window_nll: transformers' own mean loss over the same held-out windows,
    tokenized again with the saved tokenizer (AutoTokenizer round trip)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    res, tmp = run
    a = res["args"]
    tok = AutoTokenizer.from_pretrained(tmp / "ckpt")
    _, held = qp.read_split(qp.stdlib_files(a["max_files"]), a["held_out_every"])
    ids: list[int] = []
    for text in held:
        ids += tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    windows = torch.tensor(ids[: a["eval_windows"] * a["seq"]]).reshape(a["eval_windows"], a["seq"])
    model = AutoModelForCausalLM.from_pretrained(tmp / "ckpt", dtype=torch.float32)
    loss = model(input_ids=windows, labels=windows).loss  # mean over every prediction
    ppl = {r["format"]: r["perplexity"] for r in res["rows"]}
    assert ppl["bf16"] == pytest.approx(math.exp(float(loss)), rel=1e-5)
    assert res["eval_tokens"] == windows.numel() - windows.shape[0]


def test_tiny_checkpoints(run: tuple[dict, Path]) -> None:
    res, tmp = run
    cfg = json.loads((tmp / "ckpt" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"
    with safe_open(str(tmp / "ckpt" / "model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}  # noqa: SIM118
    awq = json.loads((tmp / "ckpt-int4-awq" / "config.json").read_text())["quantization_config"]
    assert (awq["quant_method"], awq["group_size"]) == ("awq", 128) == ("awq", res["int4_group_size"])


def test_eval_and_validation_windows_are_disjoint(qp: ModuleType) -> None:
    ids = torch.arange(1000)
    ev, val = qp.eval_windows(ids, 64, 100, 3)  # 15 whole windows: 3 validation, 12 evaluation
    assert ev.shape == (12, 64) and val.shape == (3, 64)
    assert ev[0, 0] == 0 and val[-1, -1] == 15 * 64 - 1
    assert not set(ev.flatten().tolist()) & set(val.flatten().tolist())
    ev, _ = qp.eval_windows(ids, 64, 5, 3)
    assert ev.shape == (5, 64)
    with pytest.raises(SystemExit, match="not one window of 64 left"):
        qp.eval_windows(ids, 64, 5, 15)


def test_early_stopping_keeps_the_best_weights(qp: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation losses 3, 2, 2.5, 2.6, 2.7 with patience 3: training stops at the fifth
    check and the model ends with the weights of the second check, not the last ones."""
    a = qp.parse_args(["--tiny", "--device", "cpu", "--steps", "200", "--patience", "3"])
    model = qp.build_model(a, 512, 0)
    losses = iter([3.0, 2.0, 2.5, 2.6, 2.7, 1.0])
    seen: list[dict[str, torch.Tensor]] = []

    def scripted(m: object, windows: torch.Tensor, dev: torch.device, chunk: int) -> float:
        seen.append({k: t.detach().clone() for k, t in model.state_dict().items()})
        return next(losses)

    monkeypatch.setattr(qp, "val_loss", scripted)
    monkeypatch.setenv("INFLIGHT_NO_PROGRESS", "1")
    ids = torch.randint(0, 512, (4000,), generator=torch.Generator().manual_seed(0))
    stats = qp.train(model, ids, a, torch.device("cpu"), ids[:128].reshape(2, 64))
    assert len(seen) == 5 and stats["steps"] == 5 * a.val_every
    assert stats["stopped_early"] and stats["best_step"] == 2 * a.val_every
    assert stats["best_val_loss"] == 2.0
    assert [c[1] for c in stats["val_checks"]] == [3.0, 2.0, 2.5, 2.6, 2.7]
    final = model.state_dict()
    assert all(torch.equal(final[k], seen[1][k]) for k in final)
    assert not all(torch.equal(final[k], seen[4][k]) for k in final)  # it did train on


def test_bad_early_stopping_flags_are_refused(qp: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    for flags, msg in ((["--val-every", "0"], "--val-every must be >= 1, got 0"),
                       (["--patience", "-1"], "--patience must be >= 0, got -1")):
        with pytest.raises(SystemExit):
            qp.parse_args(flags)
        assert msg in capsys.readouterr().err
