"""Triton shim: the model lives in the inflight package."""

from inflight.frontends.triton.unary_model import TritonPythonModel  # noqa: F401
