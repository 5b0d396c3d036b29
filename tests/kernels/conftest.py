"""Kernel tests run on the GPU when there is one, else in Triton's numpy interpreter on CPU.

Triton reads TRITON_INTERPRET when ``@triton.jit`` decorates a kernel, i.e. when
``inflight.kernels`` is first imported, so it must be set here, before any test module
imports the kernels. Tests marked ``gpu`` (realistic shapes) are skipped without CUDA.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
    if "inflight.kernels" in sys.modules:  # imported before this conftest: not interpreted
        from inflight.kernels._common import is_interpreted
        from inflight.kernels.silu_and_mul import _silu_and_mul_kernel

        if not is_interpreted(_silu_and_mul_kernel):
            raise pytest.UsageError(
                "inflight.kernels was imported before tests/kernels/conftest.py could set "
                "TRITON_INTERPRET=1; run with TRITON_INTERPRET=1 in the environment")

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and _HERE in Path(str(item.fspath)).parents:
            item.add_marker(skip)


@pytest.fixture
def device() -> torch.device:
    """CUDA when present, else CPU (kernels then run in the interpreter)."""
    return torch.device("cuda" if HAS_CUDA else "cpu")
