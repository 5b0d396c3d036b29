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
