"""On two GPUs: TP=2 (NCCL, Triton kernels, CUDA graphs with the all-reduce inside, overlapped
scheduling) equals TP=1 token for token on the tiny models in float32, and its bf16 logits on a
Llama-3.2-1B-shaped checkpoint stay within the bf16 bound of TP=1."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path

import pytest
import torch
from inflight.config import EngineConfig
from inflight.engine.core import LLMEngine
from inflight.sampling_params import SamplingParams
from inflight.testing.tiny import tiny_model_dir
from kernel_testing import run_to_finals

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")]

PROMPTS = [[5, 17, 300, 41, 9], list(range(20, 90)), [7] * 33, list(range(100, 1300, 7))]


def _engine(model: str, tp: int, **kw: object) -> LLMEngine:
    return LLMEngine(EngineConfig(model=model, device="cuda", max_seq_len=512, tensor_parallel_size=tp,
                                  max_tokens_in_paged_kv_cache=16384, **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("family", ["llama", "llama2", "mistral", "qwen2", "qwen3"])
def test_tiny_tp2_equals_tp1(family: str) -> None:
    d = tiny_model_dir(family)
    params = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True, detokenize=False)
    one = _engine(d, 1, dtype="float32", max_num_tokens=64)  # chunked prefill too
    ref = run_to_finals(one, PROMPTS, params)
    two = _engine(d, 2, dtype="float32", max_num_tokens=64)
    try:
        assert two.runner.graphs is not None, "decode CUDA graphs (all-reduce inside) at TP=2"
        got = run_to_finals(two, PROMPTS, params)
    finally:
        two.close()
    for k in ref:
        assert got[k].token_ids == ref[k].token_ids, k  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def llama_1b_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A random bf16 checkpoint of the Llama-3.2-1B shape (same weights for both TP sizes)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    src = importlib.resources.files("inflight.tools.bench") / "configs" / "llama-3.2-1b"
    out = tmp_path_factory.mktemp("llama-1b")
    cfg = AutoConfig.from_pretrained(str(src))
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(out)
    (Path(out) / "generation_config.json").write_text(json.dumps({"eos_token_id": 128001}))
    return str(out)


def test_1b_shape_tp2_logits_within_bf16_bound(llama_1b_checkpoint: str) -> None:
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True, detokenize=False,
                            return_context_logits=True, return_generation_logits=True)
    kw = {"tokenizer": tiny_model_dir("llama"), "dtype": "bfloat16"}
    eng = _engine(llama_1b_checkpoint, 1, **kw)
    ref = run_to_finals(eng, PROMPTS[:2], params)
    del eng
    torch.cuda.empty_cache()
    two = _engine(llama_1b_checkpoint, 2, **kw)
    try:
        got = run_to_finals(two, PROMPTS[:2], params)
    finally:
        two.close()
    for k in ref:
        a, b = ref[k].context_logits, got[k].context_logits  # type: ignore[attr-defined]
        assert a.shape == b.shape
        # the same bound as the optimized-vs-reference test of the 8B shape: bf16 partial sums
        # are added in another order (all-reduce of two halves)
        err = (a - b).abs().max() / a.abs().max()
        assert err < 0.08, f"context logits differ: rel err {err:.4f}"
        cos = torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).min()
        assert cos > 0.99, f"context logits direction differs: min cosine {cos:.4f}"
        g_ref, g_two = ref[k].generation_logits, got[k].generation_logits  # type: ignore[attr-defined]
        err = (g_ref[0] - g_two[0]).abs().max() / g_ref[0].abs().max()
        assert err < 0.08, f"first generation logits differ: rel err {err:.4f}"
        print(f"TP2 vs TP1 bf16 {k}: context rel err {float((a - b).abs().max() / a.abs().max()):.4f}, "
              f"min cosine {float(cos):.5f}")
