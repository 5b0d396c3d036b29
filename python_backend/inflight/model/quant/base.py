"""The linear-method contract: one object per weight format, chosen at load.

A :class:`~inflight.model.layers.Linear` either holds a plain ``weight`` (method ``None``:
``F.linear`` / the GEMV kernel) or a quantized method that owns the layer's tensors. The
loader collects a layer's checkpoint tensors per part (``q``/``k``/``v`` of a fused qkv,
``None`` for an unfused layer) and hands them over once they are all there; the method
checks every shape, converts them to its one runtime layout and registers them on the layer
as buffers. Dummy weights and on-load quantization go through :meth:`from_float`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

import torch
from torch import nn

from inflight.errors import ConfigError

if TYPE_CHECKING:
    from inflight.model.quant.fp8_activation import Fp8Activation, Fp8Quantizer

Parts = dict[str | None, dict[str, torch.Tensor]]  # part id -> {checkpoint suffix: tensor}
T = TypeVar("T")
log = logging.getLogger(__name__)


class LinearMethod(Protocol):
    name: str  # what error messages call the format, e.g. "compressed-tensors fp8"

    def required(self) -> tuple[str, ...]:
        """Checkpoint suffixes every part must have (e.g. ``("weight", "weight_scale")``)."""

    def optional(self) -> tuple[str, ...]:
        """Suffixes a part may have."""

    def load(self, layer: nn.Module, parts: Parts, names: dict[str | None, str]) -> None:
        """Build the layer's runtime tensors from its parts (``names``: part -> checkpoint
        prefix, for error messages). Raises ConfigError naming a tensor whose shape or dtype
        does not fit the format."""

    def from_float(self, layer: nn.Module, weight: torch.Tensor) -> None:
        """Quantize a float weight [out, in] (on-load quantization, dummy weights)."""

    def input_quantizer(self, layer: nn.Module, m: int, dtype: torch.dtype, device: torch.device,
                        ) -> Fp8Quantizer | None:
        """How the layer wants its next input (m rows of ``dtype`` on ``device``) handed over:
        None (the tensor itself) or, for a W8A8 layer, the quantization its producer applies
        in its own launch (model/quant/fp8_activation.py)."""

    def apply(self, layer: nn.Module, x: torch.Tensor | Fp8Activation,
              bias: torch.Tensor | None) -> torch.Tensor:
        """x [..., in] (or the Fp8Activation :meth:`input_quantizer` asked for) -> [..., out]
        in x.dtype."""


def set_buffer(layer: nn.Module, name: str, t: torch.Tensor | None) -> None:
    """Register (or replace) a non-persistent buffer: ``model.to(dtype)`` ran before loading,
    so nothing casts these again."""
    layer.register_buffer(name, t, persistent=False)


def expect(name: str, t: torch.Tensor, shape: tuple[int, ...], fmt: str,
           dtypes: tuple[torch.dtype, ...] | None = None) -> None:
    """ConfigError naming the checkpoint tensor unless it has ``shape`` (and a dtype in ``dtypes``)."""
    if tuple(t.shape) != tuple(shape):
        raise ConfigError(f"checkpoint tensor {name!r} has shape {tuple(t.shape)}; the {fmt} "
                          f"format needs {tuple(shape)} for this layer (config.json)")
    if dtypes is not None and t.dtype not in dtypes:
        raise ConfigError(f"checkpoint tensor {name!r} has dtype {t.dtype}; the {fmt} format "
                          f"stores it as {' or '.join(str(d) for d in dtypes)}")


def part_sizes(layer: nn.Module) -> dict[str | None, int]:
    """Output rows of each part of ``layer``, in the fused order."""
    parts: dict[str | None, tuple[int, int]] = getattr(layer, "parts", None) or {
        None: (0, layer.out_features)}
    return {k: size for k, (_start, size) in sorted(parts.items(), key=lambda kv: kv[1][0])}


def concat_parts(parts: Parts, order: dict[str | None, int], key: str, dim: int = 0) -> torch.Tensor:
    return torch.cat([parts[p][key] for p in order], dim=dim)


class KernelGuard:
    """Triton kernels that failed on this GPU (e.g. do not compile with its Triton): the first
    failure of a kernel logs an error naming it and the fallback, later calls go straight to
    the fallback (torch ops: slower, same result). The warm-up runs every shape before CUDA
    graphs are captured, so a failure shows there, never inside a capture (re-raised if it
    did). ``ValueError`` is a launcher's argument check, a bug of the caller: re-raised."""

    failed: dict[str, str] = {}  # kernel name -> the error it raised

    @classmethod
    def run(cls, name: str, kernel: Callable[[], T], fallback: Callable[[], T]) -> T:
        if name in cls.failed:
            return fallback()
        try:
            return kernel()
        except ValueError:
            raise
        except Exception as e:
            if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                raise
            cls.failed[name] = f"{type(e).__name__}: {e}"
            log.error("Triton kernel %s failed on this device (%s); using its torch fallback "
                      "from now on (slower)", name, cls.failed[name].splitlines()[0][:500])
            return fallback()
