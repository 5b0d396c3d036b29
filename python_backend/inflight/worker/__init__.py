"""The worker: runs a StepPlan on the device and samples.

``model_runner`` (loads the model, owns the KV tensor, plan -> logits), ``cuda_graphs``,
``sampler`` (plan rows -> tokens), ``loader`` (checkpoint weights).
"""
