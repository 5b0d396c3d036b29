"""Frozen, validated configuration objects.

``ModelConfig.from_hf`` normalises the Hugging Face ``config.json`` quirks (rope keys moved
between transformers 4 and 5, optional ``head_dim``, tied embeddings) once, so model code
never looks at the raw dict. ``EngineConfig`` carries the TensorRT-LLM backend parameter
names where one exists.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, fields
from typing import Any

from inflight.errors import ConfigError, did_you_mean

_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def parse_bool(value: str, name: str, source: str) -> bool:
    """The one parser of boolean strings (config.pbtxt parameters, --set values, JSON strings):
    true/false, 1/0, yes/no, any case. Anything else is a ConfigError naming ``source`` and
    the key."""
    word = value.strip().lower()
    if word not in _BOOL_WORDS:
        raise ConfigError(f"{source} {name}={value}: expected true or false (also 1/0, yes/no)")
    return _BOOL_WORDS[word]


# The one architecture registry: HF architecture name -> (module of inflight.model, class).
# inflight.model imports the class lazily; ModelConfig checks names against it.
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("llama", "LlamaForCausalLM"),
    "Qwen2ForCausalLM": ("llama", "LlamaForCausalLM"),
    "Qwen3ForCausalLM": ("llama", "LlamaForCausalLM"),
}
SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES)
SCHEDULER_POLICIES = ("guaranteed_no_evict", "max_utilization")
DTYPES = ("auto", "float32", "bfloat16", "float16")
LOAD_FORMATS = ("auto", "safetensors", "dummy")
# EngineConfig fields with a closed set of values, and integer fields with a lower bound
CHOICES: dict[str, tuple[str, ...]] = {
    "dtype": DTYPES, "load_format": LOAD_FORMATS, "batch_scheduler_policy": SCHEDULER_POLICIES,
    "overlap_scheduler": ("auto", "on", "off"), "attention_backend": ("auto", "torch", "triton"),
    # quantization: auto = what the checkpoint declares (else none); docs/quantization.md
    "quantization": ("auto", "none", "fp8", "awq", "compressed-tensors", "modelopt"),
    "kv_cache_dtype": ("auto", "fp8"),  # auto: the model dtype, or fp8 when the checkpoint says
}
MINIMUMS: dict[str, int] = {
    "max_batch_size": 1, "max_num_tokens": 1, "max_num_return_sequences": 1, "max_seq_len": 2,
    "max_queue_size": 0, "max_logprobs": 0, "max_stop_words": 0, "max_bad_words": 0,
    "tensor_parallel_size": 1, "cuda_graph_max_tokens": 0, "overlap_min_running": 0,
}
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def _one_of(values: tuple[str, ...]) -> str:
    """('a', 'b', 'c') -> 'a, b or c'."""
    return ", ".join(values[:-1]) + f" or {values[-1]}" if len(values) > 1 else values[0]


def check_model_dir(path: str, hint: str = "") -> None:
    """A Hugging Face checkpoint directory: it exists and holds config.json. ``hint`` ends
    the "does not exist" message (what the caller accepts instead)."""
    if not os.path.isdir(path):
        what = "is not a directory" if os.path.exists(path) else "does not exist"
        raise ConfigError(f"model directory {path!r} {what}{hint}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(f"{path!r} has no config.json; is it a Hugging Face checkpoint directory?")


@dataclass(frozen=True)
class RopeConfig:
    theta: float = 10000.0
    rope_type: str = "default"  # default | linear | llama3
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192

    @classmethod
    def from_hf(cls, raw: dict[str, Any]) -> RopeConfig:
        # transformers 5 writes `rope_parameters`; 4.x writes `rope_theta` + `rope_scaling`.
        params = dict(raw.get("rope_parameters") or {})
        scaling = dict(raw.get("rope_scaling") or {})
        merged = {**scaling, **params}
        theta = float(merged.get("rope_theta", raw.get("rope_theta", 10000.0)))
        rope_type = str(merged.get("rope_type", merged.get("type", "default")) or "default")
        if rope_type not in ("default", "linear", "llama3"):
            raise ConfigError(
                f"rope_scaling type {rope_type!r} is not supported (supported: default, linear, llama3)"
            )
        return cls(
            theta=theta,
            rope_type=rope_type,
            factor=float(merged.get("factor", 1.0)),
            low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
            high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
            original_max_position=int(merged.get("original_max_position_embeddings", 8192)),
        )


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    rope: RopeConfig
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # Qwen2: bias on q/k/v projections
    qk_norm: bool = False  # Qwen3: RMSNorm over each q/k head
    torch_dtype: str = "float32"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    sliding_window: int | None = None

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ConfigError(
                f"architecture {self.architecture!r} is not supported; "
                f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                     "num_heads", "num_kv_heads", "head_dim"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"config.json: {name} must be > 0, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"config.json: num_attention_heads ({self.num_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})"
            )

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        archs = raw.get("architectures") or []
        if not archs:
            raise ConfigError("config.json has no 'architectures' entry")
        try:
            hidden = int(raw["hidden_size"])
            heads = int(raw["num_attention_heads"])
            eos = raw.get("eos_token_id")
            eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
            arch = archs[0]
            return cls(
                architecture=arch,
                vocab_size=int(raw["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(raw["intermediate_size"]),
                num_layers=int(raw["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(raw.get("num_key_value_heads") or heads),
                head_dim=int(raw.get("head_dim") or hidden // heads),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
                max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
                rope=RopeConfig.from_hf(raw),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                attention_bias=bool(raw.get("attention_bias", arch == "Qwen2ForCausalLM")),
                qk_norm=arch == "Qwen3ForCausalLM",
                torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "float32"),
                bos_token_id=raw.get("bos_token_id"),
                eos_token_ids=eos_ids,
                sliding_window=raw.get("sliding_window") if raw.get("use_sliding_window") else None,
            )
        except KeyError as e:
            raise ConfigError(f"config.json is missing required key {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"config.json has a malformed value: {e}") from None

    @classmethod
    def from_hf(cls, model_dir: str) -> ModelConfig:
        check_model_dir(model_dir)
        path = os.path.join(model_dir, "config.json")
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(raw)


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs besides the weights.

    Names follow the TensorRT-LLM Triton backend parameters where one exists.
    """

    model: str
    tokenizer: str | None = None
    dtype: str = "auto"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    load_format: str = "auto"
    seed: int = 0
    # KV cache
    block_size: int = 16
    max_tokens_in_paged_kv_cache: int | None = None
    kv_cache_free_gpu_mem_fraction: float = 0.9
    enable_kv_cache_reuse: bool = False
    # scheduler
    max_batch_size: int = 256
    max_num_tokens: int = 8192
    max_seq_len: int | None = None  # default: the model's max_position_embeddings
    max_queue_size: int = 0  # 0 = unbounded
    enable_chunked_context: bool = True
    batch_scheduler_policy: str = "guaranteed_no_evict"
    # caps on request multipliers
    max_num_return_sequences: int = 16
    max_logprobs: int = 20
    max_stop_words: int = 64
    max_bad_words: int = 64
    # runner
    attention_backend: str = "auto"  # auto | torch | triton
    enforce_eager: bool = False  # True: no CUDA graphs (GPU only)
    # CUDA graphs also for steps with prefill tokens (mixed prefill + decode), up to this many
    # tokens (at most max_num_tokens) and MIXED_GRAPH_MAX_REQS requests: the first token of a
    # short prompt without ~350 kernel launches from Python (H200, 8B, 128-token prompt: TTFT
    # 15.1 -> 5.8 ms). 0 = off
    cuda_graph_max_tokens: int = 512
    # plan and launch step N+1 before step N's tokens reach the host: auto = on for CUDA
    overlap_scheduler: str = "auto"  # auto | on | off
    # overlapped steps only while at least this many sequences run (0: always); below it a
    # step runs synchronously, so a request that arrives joins the next step's plan instead of
    # waiting for the one already launched (lower TTFT at low load, a host gap per step)
    overlap_min_running: int = 0
    trust_remote_code: bool = False
    # quantization (model/quant): weights/activations format, and the paged KV cache's dtype
    quantization: str = "auto"
    kv_cache_dtype: str = "auto"  # auto | fp8 (TensorRT-LLM's kv_cache_quant_algo=FP8 too)
    # ranks (one process each) the model is split over; TensorRT-LLM's tp_size (docs/parallelism.md)
    tensor_parallel_size: int = 1

    def __post_init__(self) -> None:
        for name in ("quantization", "kv_cache_dtype"):  # FP8 / fp8_e4m3 as TensorRT-LLM writes
            value = str(getattr(self, name)).lower()
            object.__setattr__(self, name, "fp8" if value == "fp8_e4m3" else value)
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be {_one_of(allowed)}, got {getattr(self, name)!r}")
        if not DEVICE_PATTERN.fullmatch(self.device):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.block_size <= 0 or self.block_size & (self.block_size - 1):
            raise ConfigError("block_size (tokens_per_block) must be a power of two > 0, "
                              f"got {self.block_size}")
        if not 0.0 < self.kv_cache_free_gpu_mem_fraction <= 1.0:
            raise ConfigError(
                "kv_cache_free_gpu_mem_fraction must be in (0, 1], "
                f"got {self.kv_cache_free_gpu_mem_fraction}"
            )
        if self.max_tokens_in_paged_kv_cache is not None and self.max_tokens_in_paged_kv_cache < self.block_size:
            raise ConfigError(
                f"max_tokens_in_paged_kv_cache must be >= block_size ({self.block_size}), "
                f"got {self.max_tokens_in_paged_kv_cache}"
            )
        self._check_minimums()
        if 0 < self.cuda_graph_max_tokens < 16:
            raise ConfigError(f"cuda_graph_max_tokens must be 0 (off) or >= 16 (used up to "
                              f"max_num_tokens, {self.max_num_tokens}), got {self.cuda_graph_max_tokens}")

    def _check_minimums(self) -> None:
        for name, low in MINIMUMS.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise ConfigError(f"{name} must be >= {low}, got {value}")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_kwargs(cls, model: str, **kwargs: Any) -> EngineConfig:
        known = sorted(cls.field_names())
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise ConfigError(f"unknown engine parameter {unknown[0]!r}{did_you_mean(unknown[0], known)}")
        return cls(model=model, **kwargs)


def blocks_for(num_tokens: int, block_size: int) -> int:
    return math.ceil(num_tokens / block_size)
