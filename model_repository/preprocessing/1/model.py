"""Triton shim: the model lives in the inflight package."""

from inflight.frontends.triton.text_models import PreprocessingModel as TritonPythonModel  # noqa: F401
