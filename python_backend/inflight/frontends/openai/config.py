"""Options of the OpenAI front end (one frozen object, validated at construction)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from inflight.errors import ConfigError

TOOL_CALL_PARSERS = ("hermes", "llama3")


@dataclass(frozen=True)
class OpenAIConfig:
    """What ``inflight openai`` / ``inflight serve --openai-port`` run with."""

    triton_url: str = "localhost:8001"  # Triton gRPC host:port
    host: str = "127.0.0.1"
    port: int = 9000
    # Triton model -> served name; empty: every ready model that speaks the `llm` contract
    models: dict[str, str] = field(default_factory=dict)
    tokenizer: str | None = None  # overrides the tokenizer_dir read from the model config
    chat_template: str | None = None  # file whose text overrides the checkpoint's template
    tool_call_parser: str | None = None  # hermes | llama3; None: tool calls are not parsed
    api_key: str | None = None
    max_body_bytes: int = 8 << 20
    max_n: int = 16  # cap on n (choices per prompt)
    max_prompts: int = 64  # cap on a completions request's list of prompts
    grpc_channels: int = 4  # TCP connections to Triton per worker; streams spread over them
    workers: int = 1  # server processes sharing the port (see server.default_workers)
    log_level: str = "info"

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"--openai-port must be in [0, 65535], got {self.port}")
        if self.tool_call_parser not in (None, *TOOL_CALL_PARSERS):
            raise ConfigError(f"--tool-call-parser must be one of {', '.join(TOOL_CALL_PARSERS)}, "
                              f"got {self.tool_call_parser!r}")
        if self.chat_template is not None and not os.path.isfile(self.chat_template):
            raise ConfigError(f"--chat-template {self.chat_template!r} is not a file")
        if self.tokenizer is not None and not os.path.isdir(self.tokenizer):
            raise ConfigError(f"--tokenizer {self.tokenizer!r} is not a directory")
        for name, lo in (("max_body_bytes", 1024), ("max_n", 1), ("max_prompts", 1),
                         ("grpc_channels", 1), ("workers", 1)):
            if getattr(self, name) < lo:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= {lo}, "
                                  f"got {getattr(self, name)}")

    def chat_template_text(self) -> str | None:
        if self.chat_template is None:
            return None
        with open(self.chat_template, encoding="utf-8") as f:
            return f.read()
