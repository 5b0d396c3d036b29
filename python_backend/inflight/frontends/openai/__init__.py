"""OpenAI-compatible HTTP server in front of a Triton model repository.

FastAPI + uvicorn on one asyncio event loop; each request becomes one gRPC stream to
Triton's `llm` model (vLLM contract) through ``tritonclient.grpc.aio``. Chat templates are
rendered here with the checkpoint's tokenizer; tool calls are parsed here.

Modules: ``config`` (options), ``protocol`` (request models), ``errors`` (OpenAI error
shape), ``registry`` (served models, tokenizers), ``chat_template``, ``tool_parsers``,
``triton_client`` (the gRPC bridge), ``sampling`` (request -> sampling_parameters),
``logprobs``, ``streaming`` (SSE), ``completions`` / ``chat`` (handlers), ``app`` (routes,
middleware), ``server`` (CLI, uvicorn).
"""
