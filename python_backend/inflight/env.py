"""Every environment variable inflight reads, in one place, all prefixed ``INFLIGHT_``."""

from __future__ import annotations

import os


def _get(name: str, default: str = "") -> str:
    return os.environ.get(f"INFLIGHT_{name}", default)


def cache_dir() -> str:
    """Where tiny test/demo checkpoints and build artefacts are cached."""
    return _get("CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "inflight"))


def attention_backend() -> str:
    """Force an attention backend: ``torch`` (reference) or ``triton``; empty means auto."""
    return _get("ATTENTION_BACKEND")


def log_level() -> str:
    return _get("LOG_LEVEL", "WARNING")


def disable_progress() -> bool:
    return _get("NO_PROGRESS", "0") not in ("", "0", "false", "False")


def fp8_gemv_max_m() -> int:
    """FP8 linears with at most this many input rows (<= 16) use the decode kernel
    (``fp8_decode_kernel``) instead of per-token quantization + ``torch._scaled_mm``
    (docs/quantization.md); 0 turns it off. Default 16 with the tensor-core kernels (they beat
    ``_scaled_mm`` on every Llama-3.1-8B layer at M = 1, 4 and 16 on the H200), 4 with
    ``gemv`` (the register GEMV won at M = 1 and lost at M = 16)."""
    default = "4" if fp8_decode_kernel() == "gemv" else "16"
    return int(_get("FP8_GEMV_MAX_M", default) or default)


FP8_DECODE_KERNELS = ("gemv", "tc-w8a16", "tc-w8a8")


def fp8_decode_kernel() -> str:
    """The FP8 linear kernel for at most ``INFLIGHT_FP8_GEMV_MAX_M`` input rows: ``gemv`` (the
    W8A16 register GEMV, kernels/fp8_gemv.py), ``tc-w8a16`` or ``tc-w8a8`` (the tensor-core
    kernel of kernels/fp8_skinny_mm.py without / with per-token activation quantization).
    Default ``tc-w8a8``: the fastest on the H200 (8B FP8 batch-1 decode 226.7 tok/s with
    ``gemv``, 224.7 with ``tc-w8a16``, 254.9 with ``tc-w8a8`` before its configs were tuned)."""
    v = _get("FP8_DECODE_KERNEL", "tc-w8a8") or "tc-w8a8"
    if v not in FP8_DECODE_KERNELS:
        raise ValueError(f"INFLIGHT_FP8_DECODE_KERNEL must be one of {FP8_DECODE_KERNELS}, got {v!r}")
    return v


def fp8_fused_quant() -> bool:
    """FP8 W8A8 linears (``tc-w8a8``, ``_scaled_mm``) take their input quantized by the RMSNorm
    or SiLU-and-mul kernel that produces it, in that kernel's launch (default on); 0 turns it
    off: the 16-bit output, then the separate ``per_token_quant_fp8`` launch, as before."""
    from inflight.config import parse_bool

    return parse_bool(_get("FP8_FUSED_QUANT", "1") or "1", "INFLIGHT_FP8_FUSED_QUANT",
                      "environment variable")


def fp8_kv_dots() -> str:
    """How the attention kernels read an FP8 KV cache with bf16 queries: ``fp16-pairs``
    (default; decode only: the cache read as int16 pairs, one conversion per pair, no
    byte-wise shared-memory loads; the prefill kernel keeps bf16 dots), ``bf16`` (e4m3 ->
    bf16, bf16 dots), ``fp16`` (fp16 dots: one conversion instruction per two values instead
    of four; kernels/_paged.py ``dot_operand_q``) or ``fp16-vt`` (also V loaded transposed;
    ``load_v``). Measured on the H200 (docs/quantization.md): fp16-pairs cut the batch-256
    decode attention from 2.84 to 1.73 ms a step and raised FP8 1000/1000 from 9,198 to
    10,783 tok/s; fp16 and fp16-vt were slower end to end than bf16."""
    from inflight.kernels._paged import FP8_KV_DOTS

    v = _get("FP8_KV_DOTS", "fp16-pairs") or "fp16-pairs"
    if v not in FP8_KV_DOTS:
        raise ValueError(f"INFLIGHT_FP8_KV_DOTS must be one of {', '.join(FP8_KV_DOTS)}, got {v!r}")
    return v


def int4_gemm() -> str:
    """INT4 linears of more than 4 rows on the GPU: ``dense`` (default: dequantize the layer
    in one Triton launch, then cuBLAS) or ``triton`` (the w4a16 tl.dot kernel)."""
    v = _get("INT4_GEMM", "dense") or "dense"
    if v not in ("dense", "triton"):
        raise ValueError(f"INFLIGHT_INT4_GEMM must be 'dense' or 'triton', got {v!r}")
    return v


def tritonserver_path() -> str:
    """Explicit tritonserver binary; otherwise PATH, then the nvidia-pytriton wheel."""
    return _get("TRITONSERVER", "")


def allow_fault_injection() -> bool:
    """Tests only: lets config.pbtxt's ``fault_injection_step`` make the engine raise.

    Unset in production, so a repository parameter alone can never break a live engine.
    """
    return _get("ALLOW_FAULT_INJECTION", "0") == "1"


def openai_api_key() -> str:
    """The OpenAI front end's API key (``inflight openai``), kept out of the process list."""
    return _get("OPENAI_API_KEY")


# ---- tensor parallelism (docs/parallelism.md) ------------------------------------------------
# The torchrun-style rendezvous variables keep their standard names (no INFLIGHT_ prefix): the
# same environment a torchrun launch gives each process.


def tp_master() -> tuple[str, int]:
    """MASTER_ADDR / MASTER_PORT of rank 0's store; defaults: loopback, any free port."""
    return os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "0") or 0)


def tp_local_ranks(world: int) -> int:
    """How many ranks run on the engine's machine (ranks 0 .. k-1, spawned by the engine);
    LOCAL_WORLD_SIZE as torchrun names it; default: all of them."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", str(world)) or world)


def tp_rank_env() -> dict[str, int]:
    """RANK, LOCAL_RANK, WORLD_SIZE of a worker started by hand or by a launcher."""
    return {k: int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}


def tp_timeout_s() -> float:
    """Seconds a collective or a start-up step may take before the rank gives up."""
    return float(_get("TP_TIMEOUT_S", "300"))


def tp_all_reduce() -> str:
    """How GPU ranks sum small tensors (decode steps): ``symm`` (torch symmetric memory's
    one-shot kernel over NVLink peer access, never multicast) or ``nccl``. Rank 0 decides and
    tells the other ranks."""
    mode = _get("TP_ALLREDUCE", "nccl").lower()
    if mode not in ("nccl", "symm"):
        from inflight.errors import ConfigError

        raise ConfigError(f"INFLIGHT_TP_ALLREDUCE must be nccl or symm, got {mode!r}")
    return mode


def tp_fail_rank() -> int:
    """Tests only (with INFLIGHT_ALLOW_FAULT_INJECTION=1): this worker rank fails at start-up."""
    return int(_get("TP_FAIL_RANK", "0") or 0) if allow_fault_injection() else 0
