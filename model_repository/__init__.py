"""Triton model-repository templates (config.pbtxt + 1/model.py shims); see inflight.tools.repo."""
