"""The tiny offline checkpoints that the other tests and the README demo run on."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers
from inflight.config import ModelConfig
from inflight.testing import tiny
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

ROUNDTRIP_TEXTS = [
    "Hello, world! The scheduler frees 42 blocks.",
    "  leading and  double  spaces\tand tabs\n\nnew lines ",
    "def add(a, b):\n    return a + b\n",
    "你好，世界。今天天气很好。こんにちは、東京。안녕하세요.",
    "emoji 😀🚀 👩‍💻 👨‍👩‍👧 🇯🇵 🏳️‍🌈 ❤️",
    "rare: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ☃ ∑ Ωµ ﷽",
]
PROMPTS = ["Hello world", "你好，世界。", "def add(a, b):"]
ARCHS = {
    "llama": "LlamaForCausalLM",
    "llama2": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",  # transformers >= 4.51
}
FAMILIES = [
    pytest.param(f, marks=pytest.mark.skipif(
        not hasattr(transformers, ARCHS[f]), reason=f"transformers lacks {ARCHS[f]}"))
    for f in tiny.FAMILIES
]


def _hash_dir(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def _tensor_names(model_dir: Path) -> set[str]:
    names: set[str] = set()
    for f in model_dir.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            names.update(st.keys())
    return names


def _rope(config: Any) -> dict[str, Any]:
    # transformers 5: `rope_parameters`; 4.x: `rope_scaling` (+ `rope_theta`)
    return dict(getattr(config, "rope_parameters", None) or config.rope_scaling or {})


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    tiny.build_tokenizer(str(out))
    return out


@pytest.fixture(scope="module")
def tokenizer(tok_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(str(tok_dir))


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    families = [f for f in tiny.FAMILIES if hasattr(transformers, ARCHS[f])]
    return {f: Path(tiny.build_tiny_model(f, str(root / f))) for f in families}


# ----------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("text", ROUNDTRIP_TEXTS)
def test_tokenizer_roundtrip(tokenizer: Any, text: str) -> None:
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    plain = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(plain) == text
    assert ids[1:] == plain


def test_tokenizer_bos_and_specials(tokenizer: Any, tok_dir: Path) -> None:
    assert tokenizer.bos_token == "<|begin_of_text|>"
    assert tokenizer.eos_token == "<|end_of_text|>"
    assert tokenizer.pad_token == "<|pad|>"
    ids = tokenizer("Hello").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    assert tokenizer.encode("<|end_of_text|>", add_special_tokens=False) == [tokenizer.eos_token_id]
    assert 1000 <= len(tokenizer) <= 2000
    specials = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    assert specials == set(range(len(tokenizer) - 3, len(tokenizer)))  # at the end, like Llama 3
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_tokenizer_merges_cover_multibyte(tokenizer: Any) -> None:
    for text in ("你好", "世界", "😀"):
        n_bytes = len(text.encode())
        assert len(tokenizer.encode(text, add_special_tokens=False)) < n_bytes


def test_tokenizer_deterministic(tmp_path: Path, tok_dir: Path) -> None:
    tiny._tokenizer_json.cache_clear()  # retrain from scratch
    tiny.build_tokenizer(str(tmp_path))
    assert _hash_dir(tmp_path) == _hash_dir(tok_dir)


# ----------------------------------------------------------------------------- models

@pytest.mark.parametrize("family", FAMILIES)
def test_family_loads_with_quirks(model_dirs: dict[str, Path], family: str) -> None:
    d = model_dirs[family]
    model = AutoModelForCausalLM.from_pretrained(str(d))
    cfg = model.config
    assert type(model).__name__ == ARCHS[family] and cfg.architectures == [ARCHS[family]]
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (64, 4, 2)
    assert cfg.vocab_size == len(AutoTokenizer.from_pretrained(str(d)))
    assert model.dtype == torch.float32
    names = _tensor_names(d)
    state = model.state_dict()
    if family == "llama":
        rope = _rope(cfg)
        assert rope["rope_type"] == "llama3" and rope["factor"] == 8.0
        assert rope["original_max_position_embeddings"] == 64
        assert cfg.tie_word_embeddings and "lm_head.weight" not in names
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    else:
        assert not cfg.tie_word_embeddings and "lm_head.weight" in names
    if family == "mistral":
        assert cfg.head_dim == 32 and cfg.sliding_window is None
        assert state["model.layers.0.self_attn.q_proj.weight"].shape == (4 * 32, 64)
    if family == "qwen2":
        for proj in ("q", "k", "v"):
            bias = f"model.layers.0.self_attn.{proj}_proj.bias"
            assert bias in names and state[bias].abs().sum() > 0
        assert "model.layers.0.self_attn.o_proj.bias" not in names
    if family == "qwen3":
        assert cfg.head_dim == 32
        assert state["model.layers.0.self_attn.q_norm.weight"].shape == (32,)
        assert "model.layers.0.self_attn.k_norm.weight" in names


@pytest.mark.parametrize("family", FAMILIES)
def test_family_tokenizer_fits_model(model_dirs: dict[str, Path], family: str) -> None:
    # transformers 5 swaps in Qwen2Tokenizer for model_type qwen2 (NFC, digit split): check
    # it still agrees with the model's vocabulary, adds BOS and round-trips NFC text.
    tok = AutoTokenizer.from_pretrained(str(model_dirs[family]))
    cfg = json.loads((model_dirs[family] / "config.json").read_text())
    assert len(tok) == cfg["vocab_size"]
    assert tok.bos_token_id == cfg["bos_token_id"] and tok.eos_token_id == cfg["eos_token_id"]
    for text in ROUNDTRIP_TEXTS:
        ids = tok.encode(text)
        assert ids[0] == tok.bos_token_id and max(ids) < cfg["vocab_size"]
        assert tok.decode(ids, skip_special_tokens=True) == text


@pytest.mark.parametrize("family", FAMILIES)
def test_engine_config_parses(model_dirs: dict[str, Path], family: str) -> None:
    mc = ModelConfig.from_hf(str(model_dirs[family]))
    assert mc.architecture == ARCHS[family]
    assert mc.rope.rope_type == ("llama3" if family == "llama" else "default")
    assert mc.tie_word_embeddings == (family == "llama")
    assert mc.attention_bias == (family == "qwen2")
    assert mc.qk_norm == (family == "qwen3")
    assert mc.head_dim == (32 if family in ("mistral", "qwen3") else 16)
    assert mc.torch_dtype == "float32" and mc.eos_token_ids == (mc.vocab_size - 2,)


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generate_not_degenerate(model_dirs: dict[str, Path], family: str) -> None:
    d = str(model_dirs[family])
    tok = AutoTokenizer.from_pretrained(d)
    model: Any = AutoModelForCausalLM.from_pretrained(d)
    gen = json.loads((model_dirs[family] / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.eos_token_id
    for prompt in PROMPTS:
        ids = tok(prompt, return_tensors="pt").input_ids
        out = model.generate(
            ids, max_new_tokens=16, min_new_tokens=16, do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
        new = out[0, ids.shape[1]:].tolist()
        assert len(new) == 16 and len(set(new)) >= 4, (prompt, new)


def test_sharded_checkpoint_matches(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    d = Path(tiny.build_tiny_model("llama2", str(tmp_path), max_shard_size="200KB"))
    index = json.loads((d / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not (d / "model.safetensors").exists()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        sharded = AutoModelForCausalLM.from_pretrained(str(d))(ids).logits
        single = AutoModelForCausalLM.from_pretrained(str(model_dirs["llama2"]))(ids).logits
    torch.testing.assert_close(sharded, single, rtol=0, atol=0)


def test_weights_deterministic_per_seed(tmp_path: Path, model_dirs: dict[str, Path]) -> None:
    again = tmp_path / "again"
    other = tmp_path / "other"
    tiny.build_tiny_model("qwen2", str(again), seed=0)
    tiny.build_tiny_model("qwen2", str(other), seed=1)
    assert _hash_dir(again) == _hash_dir(model_dirs["qwen2"])
    assert _hash_dir(other)["model.safetensors"] != _hash_dir(again)["model.safetensors"]


def test_overrides_and_unknown_family(tmp_path: Path) -> None:
    d = tiny.build_tiny_model("llama2", str(tmp_path / "deep"), num_hidden_layers=4)
    assert json.loads(Path(d, "config.json").read_text())["num_hidden_layers"] == 4
    with pytest.raises(ValueError, match="unknown family"):
        tiny.build_tiny_model("gpt2", str(tmp_path / "x"))
    with pytest.raises(ValueError, match="unknown family"):
        tiny.tiny_model_dir("gpt2")


# ----------------------------------------------------------------------------- cache


def test_tiny_model_dir_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFLIGHT_CACHE_DIR", str(tmp_path))
    path = tiny.tiny_model_dir("mistral", seed=3)
    assert path == os.path.join(str(tmp_path), "tiny", f"mistral-3-{tiny.builder_version()}")
    assert os.path.isfile(os.path.join(path, "config.json"))
    assert os.stat(path).st_mode & 0o755 == 0o755

    def fail(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("cached model was rebuilt")

    monkeypatch.setattr(tiny, "build_tiny_model", fail)
    assert tiny.tiny_model_dir("mistral", seed=3) == path
    assert os.listdir(os.path.join(str(tmp_path), "tiny")) == [os.path.basename(path)]


def test_tiny_model_dir_lost_race(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process finishes first: its copy wins, ours is discarded without error."""
    monkeypatch.setenv("INFLIGHT_CACHE_DIR", str(tmp_path))
    final = os.path.join(str(tmp_path), "tiny", f"llama-0-{tiny.builder_version()}")
    real_build = tiny.build_tiny_model

    def racing_build(family: str, out_dir: str, seed: int = 0, **kw: Any) -> str:
        real_build(family, final, seed)  # the "other process"
        return real_build(family, out_dir, seed, **kw)

    monkeypatch.setattr(tiny, "build_tiny_model", racing_build)
    assert tiny.tiny_model_dir("llama") == final
    assert os.listdir(os.path.join(str(tmp_path), "tiny")) == [os.path.basename(final)]
