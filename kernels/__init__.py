"""OpenAI-Triton GPU kernels, each a bundle of kernel, checked launcher and torch reference.

The launchers take CUDA tensors; with ``TRITON_INTERPRET=1`` set before this package is
imported they also take CPU tensors and run in Triton's numpy interpreter (tests).
``python -m inflight.kernels.bench`` times each kernel against its reference on a GPU.
"""

from __future__ import annotations

from .fp8_gemv import fp8_gemv, fp8_gemv_ref
from .fp8_quant import per_token_quant_fp8, per_token_quant_fp8_ref
from .fp8_skinny_mm import fp8_skinny_mm, fp8_skinny_mm_ref
from .gemv import gemv, gemv_ref
from .kv_cache_write import kv_cache_write, kv_cache_write_ref
from .paged_decode_attention import paged_decode_attention, paged_decode_attention_ref
from .paged_prefill_attention import attention_ref, paged_prefill_attention
from .rms_norm import (
    add_rms_norm,
    add_rms_norm_fp8,
    add_rms_norm_ref,
    rms_norm,
    rms_norm_fp8,
    rms_norm_ref,
)
from .rotary_embedding import rotary_embedding, rotary_embedding_ref
from .silu_and_mul import silu_and_mul, silu_and_mul_fp8, silu_and_mul_ref
from .w4a16 import w4a16_dense, w4a16_dequantize, w4a16_matmul, w4a16_ref

__all__ = [
    "add_rms_norm",
    "add_rms_norm_fp8",
    "add_rms_norm_ref",
    "attention_ref",
    "fp8_gemv",
    "fp8_gemv_ref",
    "fp8_skinny_mm",
    "fp8_skinny_mm_ref",
    "gemv",
    "gemv_ref",
    "kv_cache_write",
    "kv_cache_write_ref",
    "paged_decode_attention",
    "paged_decode_attention_ref",
    "paged_prefill_attention",
    "per_token_quant_fp8",
    "per_token_quant_fp8_ref",
    "rms_norm",
    "rms_norm_fp8",
    "rms_norm_ref",
    "rotary_embedding",
    "rotary_embedding_ref",
    "silu_and_mul",
    "silu_and_mul_fp8",
    "silu_and_mul_ref",
    "w4a16_dense",
    "w4a16_dequantize",
    "w4a16_matmul",
    "w4a16_ref",
]
