"""Shared launcher checks for the Triton kernels.

Every launcher validates its inputs with these helpers before it launches: a wrong shape,
dtype, device or stride raises ``ValueError`` naming the argument, instead of a silent
out-of-bounds read on the GPU.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
CACHE_DTYPES = (*FLOAT_DTYPES, torch.float8_e4m3fn)  # paged KV caches (fp8: kv_cache_dtype=fp8)


def check(cond: bool, msg: str) -> None:
    """Raise ``ValueError(msg)`` unless ``cond`` (unlike ``assert``, survives ``python -O``)."""
    if not cond:
        raise ValueError(msg)


def is_interpreted(kernel: object) -> bool:
    """True when ``kernel`` was decorated under ``TRITON_INTERPRET=1`` (runs on CPU via numpy).

    Triton reads ``TRITON_INTERPRET`` when ``@triton.jit`` runs, i.e. when the kernel module
    is imported, so the kernel object itself is the reliable witness.
    """
    return type(kernel).__name__ == "InterpretedFunction"


def check_devices(kernel: object, **tensors: torch.Tensor) -> torch.device:
    """All tensors on one device: CUDA, or CPU when the kernel runs in the interpreter."""
    first = next(iter(tensors.values())).device
    for name, t in tensors.items():
        if t.device != first:
            raise ValueError(f"{name} is on {t.device}, expected {first} like the other inputs")
    if first.type != "cuda" and not (first.type == "cpu" and is_interpreted(kernel)):
        raise ValueError(
            f"tensors are on {first}; these kernels need CUDA tensors "
            "(or CPU tensors with TRITON_INTERPRET=1 set before inflight.kernels is imported)")
    return first


def check_tensor(
    name: str,
    t: torch.Tensor,
    shape: Sequence[int | None],
    dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
    last_contiguous: bool = True,
) -> None:
    """Check rank, sizes (None = any), dtype and a unit stride in the last dimension.

    Runs on every launch, so messages are only formatted on failure.
    """
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != len(shape):
        raise ValueError(f"{name} must be {len(shape)}-D, got shape {tuple(t.shape)}")
    for i, (got, want) in enumerate(zip(t.shape, shape, strict=True)):
        if want is not None and got != want:
            raise ValueError(f"{name} dim {i} must be {want}, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name} dtype must be one of {list(dtypes)}, got {t.dtype}")
    if last_contiguous and t.stride(-1) != 1 and t.numel() > 0:
        raise ValueError(f"{name} must have stride 1 in its last dim, got {t.stride()}")


@functools.lru_cache(maxsize=8)
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (a fixed 16 for the CPU interpreter)."""
    if device.type != "cuda":
        return 16
    return torch.cuda.get_device_properties(device).multi_processor_count
