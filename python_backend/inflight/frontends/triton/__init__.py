"""Triton python-backend models: each `model_repository/*/1/model.py` is a shim over these."""
