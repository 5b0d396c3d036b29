"""OpenAI-compatible HTTP server in front of a Triton model repository.

A plain ASGI app on uvicorn, one asyncio event loop per worker process (``--workers``);
each request becomes one gRPC stream to Triton's `llm` model (vLLM contract) through
``grpc.aio``. Chat templates are rendered here with the checkpoint's tokenizer; tool calls
are parsed here.

Modules: ``config`` (options), ``protocol`` (request models), ``errors`` (OpenAI error
shape), ``registry`` (served models, tokenizers), ``chat_template``, ``tool_parsers``,
``triton_client`` (the gRPC bridge), ``sampling`` (request -> sampling_parameters),
``logprobs``, ``streaming`` (SSE), ``completions`` / ``chat`` (handlers), ``app`` (routes,
API key, body limit), ``server`` (CLI), ``workers`` (uvicorn, worker processes).
"""
