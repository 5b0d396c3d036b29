"""Front ends in front of the engine core: the OpenAI-compatible HTTP server (`openai/`)."""
