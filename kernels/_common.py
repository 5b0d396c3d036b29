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
    devices = {name: t.device for name, t in tensors.items()}
    first = next(iter(devices.values()))
    for name, dev in devices.items():
        check(dev == first, f"{name} is on {dev}, expected {first} like the other inputs")
    if first.type != "cuda":
        check(
            first.type == "cpu" and is_interpreted(kernel),
            f"tensors are on {first}; these kernels need CUDA tensors "
            "(or CPU tensors with TRITON_INTERPRET=1 set before inflight.kernels is imported)",
        )
    return first


def check_tensor(
    name: str,
    t: torch.Tensor,
    shape: Sequence[int | None],
    dtypes: Sequence[torch.dtype] = FLOAT_DTYPES,
    last_contiguous: bool = True,
) -> None:
    """Check rank, sizes (None = any), dtype and a unit stride in the last dimension."""
    check(isinstance(t, torch.Tensor), f"{name} must be a torch.Tensor, got {type(t).__name__}")
    check(t.dim() == len(shape), f"{name} must be {len(shape)}-D, got shape {tuple(t.shape)}")
    for i, (got, want) in enumerate(zip(t.shape, shape)):
        check(want is None or got == want,
              f"{name} dim {i} must be {want}, got shape {tuple(t.shape)}")
    check(t.dtype in dtypes, f"{name} dtype must be one of {list(dtypes)}, got {t.dtype}")
    if last_contiguous and t.numel() > 0:
        check(t.stride(-1) == 1, f"{name} must have stride 1 in its last dim, got {t.stride()}")


@functools.lru_cache(maxsize=8)
def num_sms(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (a fixed 16 for the CPU interpreter)."""
    if device.type != "cuda":
        return 16
    return torch.cuda.get_device_properties(device).multi_processor_count
