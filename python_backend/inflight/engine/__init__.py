"""The engine: the step loop and its core.

``loop`` (EngineLoop: the engine thread), ``core`` (LLMEngine: admission and one step),
``scheduler`` + ``kv_cache`` (wrappers of the C++ core that owns request state and KV
blocks), ``step_plan`` (the typed boundary to the worker), ``request`` (the handle on one
sequence), ``output_processor`` + ``detokenizer`` (events -> deltas, front-end side).
"""
