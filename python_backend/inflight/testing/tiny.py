"""Tiny, offline, deterministic Hugging Face checkpoints for tests and demos.

``build_tokenizer`` trains a small byte-level BPE tokenizer (Llama-3 style: BOS prepended by
the post-processor, special tokens at the end of the vocabulary) on a generated corpus.
``build_tiny_model`` writes a randomly initialised model of one of :data:`FAMILIES`, each
with the quirk an engine must get right (llama3 rope scaling + tied embeddings, explicit
``head_dim``, q/k/v bias, q/k norm). ``tiny_model_dir`` caches builds under
``inflight.env.cache_dir()/tiny``. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import shutil
import tempfile
from typing import Any

import tokenizers
import torch
import transformers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerFast

from inflight import env
from inflight.errors import ConfigError, did_you_mean
from inflight.testing import tokenizer_corpus

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = (BOS, EOS, PAD)
# A small chat template (role markers as plain text, the BOS token as text, tools listed in
# a system block, Hermes-style <tool_call> for assistant tool calls), so chat requests are
# testable; the tiny model has random weights, so what it answers is still gibberish.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if tools %}<|system|>\nTools:\n{% for t in tools %}{{ t | tojson }}\n{% endfor %}"
    "Call one as <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>\n"
    "{{ eos_token }}{% endif %}"
    "{%- for m in messages %}<|{{ m.role }}|>\n"
    "{%- if m.content %}{{ m.content }}{% endif %}"
    "{%- for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>"
    "{%- endfor %}\n{{ eos_token }}{% endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
BPE_VOCAB_SIZE = 1533  # + 3 special tokens appended after training = 1536
MAX_POSITIONS = 512

# Weight init: normal(0, WEIGHT_STD) for matrices and biases, 1 + normal(0, NORM_STD) for norm
# scales. 0.02 (the HF default) makes a 64-wide model emit near-uniform logits and greedy
# decoding collapses onto one token (tied embeddings make the last token win); 0.2 gives
# varied text and a median top-1/top-2 logit margin of ~0.3.
WEIGHT_STD = 0.2
NORM_STD = 0.1

_COMMON: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": MAX_POSITIONS,
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
}

# family -> (architecture, config class name, family-specific config kwargs). Rope is given
# as `rope_theta` + `rope_scaling`, which transformers 4.x stores as is and 5.x folds into
# `rope_parameters`.
_FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaForCausalLM", "LlamaConfig", {
        "num_hidden_layers": 3,
        "rope_theta": 500000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
        "tie_word_embeddings": True,
    }),
    "llama2": ("LlamaForCausalLM", "LlamaConfig", {
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
    }),
    "mistral": ("MistralForCausalLM", "MistralConfig", {
        "head_dim": 32,  # != hidden_size / num_heads (16)
        "sliding_window": None,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": False,
    }),
    "qwen2": ("Qwen2ForCausalLM", "Qwen2Config", {  # q/k/v projections carry a bias
        "rope_theta": 1000000.0,
        "use_sliding_window": False,
        "tie_word_embeddings": False,
    }),
    "qwen3": ("Qwen3ForCausalLM", "Qwen3Config", {  # per-head RMSNorm on q and k
        "head_dim": 32,
        "num_hidden_layers": 3,
        "rope_theta": 1000000.0,
        "use_sliding_window": False,
        "tie_word_embeddings": False,
    }),
}
FAMILIES: tuple[str, ...] = tuple(_FAMILIES)


def check_family(family: str) -> None:
    """ConfigError (a ValueError) naming the known families unless ``family`` is one."""
    if family not in _FAMILIES:
        raise ConfigError(f"unknown family {family!r} for tiny:FAMILY{did_you_mean(family, FAMILIES)}")


# --------------------------------------------------------------------------- tokenizer


@functools.lru_cache(maxsize=1)
def _tokenizer_json() -> str:
    """Train the BPE tokenizer once per process; returns its serialised form."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus.corpus(), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    bos_id = tok.token_to_id(BOS)
    assert bos_id is not None
    tok.post_processor = _post_processor(bos_id)
    return tok.to_str()


def _post_processor(bos_id: int) -> processors.PostProcessor:
    """Llama 3: byte-level offsets, then BOS before each sequence."""
    template = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0",
        pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1",
        special_tokens=[(BOS, bos_id)],
    )
    return processors.Sequence([processors.ByteLevel(trim_offsets=False), template])


def build_tokenizer(out_dir: str) -> PreTrainedTokenizerFast:
    """Write the tiny tokenizer's files to ``out_dir`` (loadable by ``AutoTokenizer``)."""
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        clean_up_tokenization_spaces=False,  # keep decode(encode(s)) == s
        model_max_length=MAX_POSITIONS,
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out_dir)
    _patch_tokenizer_config(out_dir)
    return tok


def _patch_tokenizer_config(out_dir: str) -> None:
    """Smooth over how transformers 4.x and 5.x load ``tokenizer_config.json``.

    5.x writes ``tokenizer_class: TokenizersBackend``, which 4.x cannot resolve. For
    ``model_type: qwen2`` 5.x ignores the saved class and rebuilds a ``Qwen2Tokenizer`` from
    the vocab and merges (NFC normaliser, Qwen split regex: digits one by one); its default
    ``unk_token`` ``<|endoftext|>`` would be appended as an extra token one past the model's
    vocabulary, which an explicit ``unk_token: null`` prevents.
    """
    path = os.path.join(out_dir, "tokenizer_config.json")
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg.get("tokenizer_class") in (None, "TokenizersBackend"):
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg.setdefault("unk_token", None)
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- model


def _config(family: str, tok: PreTrainedTokenizerFast, overrides: dict[str, Any]) -> Any:
    check_family(family)
    arch, config_name, extra = _FAMILIES[family]
    config_cls = getattr(transformers, config_name, None)
    if config_cls is None:
        raise RuntimeError(f"transformers {transformers.__version__} has no {config_name}")
    kwargs = {
        **_COMMON,
        **extra,
        "vocab_size": len(tok),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "architectures": [arch],
        **overrides,
    }
    return config_cls(**kwargs)


@torch.no_grad()
def _reinit(model: torch.nn.Module, seed: int) -> None:
    """Overwrite every parameter from a seeded generator (shared/tied ones only once)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
        if name.endswith("norm.weight"):
            p.copy_(1.0 + NORM_STD * noise)
        else:
            p.copy_(WEIGHT_STD * noise)


def _make_model(config: Any, seed: int) -> PreTrainedModel:
    arch = config.architectures[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, arch)(config).to(torch.float32)
    _reinit(model, seed)
    model.eval()
    return model


def _save_model(model: PreTrainedModel, out_dir: str, max_shard_size: str | int | None) -> None:
    kwargs: dict[str, Any] = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        kwargs["safe_serialization"] = True  # transformers 4.x; 5.x only writes safetensors
    if max_shard_size is not None:
        kwargs["max_shard_size"] = max_shard_size
    hf_logging = transformers.utils.logging
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # 5.x shows a "Writing model shards" bar
    try:
        model.save_pretrained(out_dir, **kwargs)
    finally:
        if bar_was_on:
            hf_logging.enable_progress_bar()


def build_tiny_model(
    family: str,
    out_dir: str,
    seed: int = 0,
    *,
    max_shard_size: str | int | None = None,
    **overrides: Any,
) -> str:
    """Write a tiny random ``family`` checkpoint (weights, config, tokenizer) to ``out_dir``.

    ``overrides`` replace config kwargs (e.g. ``num_hidden_layers=4``); ``max_shard_size``
    (e.g. ``"200KB"``) produces a sharded checkpoint with ``model.safetensors.index.json``.
    Returns ``out_dir``.
    """
    os.makedirs(out_dir, exist_ok=True)
    tok = build_tokenizer(out_dir)
    model = _make_model(_config(family, tok, overrides), seed)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    _save_model(model, out_dir, max_shard_size)
    return out_dir


# --------------------------------------------------------------------------- cache


@functools.lru_cache(maxsize=1)
def builder_version() -> str:
    """Hash of everything that determines the files a build writes."""
    h = hashlib.sha256()
    for path in (__file__, tokenizer_corpus.__file__):
        with open(path, "rb") as f:
            h.update(f.read())
    for dist in (transformers, tokenizers, torch):
        h.update(f"{dist.__name__}={dist.__version__};".encode())
    return h.hexdigest()[:12]


def _make_readable(path: str) -> None:
    """mkdtemp (and safetensors' writer) create owner-only modes; a shared cache wants 755/644."""
    os.chmod(path, 0o755)
    for name in os.listdir(path):
        os.chmod(os.path.join(path, name), 0o644)


def tiny_model_dir(family: str = "llama", seed: int = 0) -> str:
    """Path of a cached tiny ``family`` checkpoint, building it on first use.

    Layout: ``<cache_dir>/tiny/<family>-<seed>-<builder_version()>``. The build goes to a
    temporary sibling directory that is renamed into place, so concurrent callers never see a
    partial checkpoint; when two race, the loser discards its copy.
    """
    check_family(family)
    root = os.path.join(env.cache_dir(), "tiny")
    final = os.path.join(root, f"{family}-{seed}-{builder_version()}")
    if os.path.isdir(final):
        return final
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{family}-{seed}-", dir=root)
    try:
        build_tiny_model(family, tmp, seed)
        _make_readable(tmp)
        os.replace(tmp, final)
    except OSError:
        if not os.path.isdir(final):  # a real failure, not a lost race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
