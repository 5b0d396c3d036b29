"""``inflight openai``: run the OpenAI-compatible server against a running Triton.

``inflight serve REPO --openai-port 9000`` starts the same server (as a child process,
``python -m inflight.frontends.openai``) once tritonserver is ready.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from inflight import env
from inflight.frontends.openai.config import TOOL_CALL_PARSERS, OpenAIConfig

DESCRIPTION = """\
Serve the OpenAI API (/v1/models, /v1/completions, /v1/chat/completions, /health) in front
of a running Triton server, talking to its `llm`-contract models over gRPC streaming. Works
with `inflight serve` and with an NGC tritonserver serving an inflight repository.
"""

EPILOG = """\
examples:
  inflight openai --triton-url localhost:8001 --port 9000
  inflight openai --triton-url triton:8001 --tokenizer /models/Qwen2.5-7B-Instruct \\
      --tool-call-parser hermes --api-key-env MY_KEY_VAR
  curl localhost:9000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"model": "llm", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 32}'
The API key may also come from $INFLIGHT_OPENAI_API_KEY (kept out of the process list).
"""


def add_frontend_options(g: Any, *, port_flag: str) -> None:
    """Options shared by ``inflight openai`` and ``inflight serve --openai-port``."""
    g.add_argument(port_flag, dest="openai_port", type=int,
                   default=9000 if port_flag == "--port" else None, metavar="PORT",
                   help="port of the OpenAI-compatible HTTP server"
                   + (" (default: %(default)s)" if port_flag == "--port" else
                      " (unset: no OpenAI server)"))
    g.add_argument("--served-model", action="append", default=[], metavar="TRITON_MODEL[=NAME]",
                   help="serve this Triton model, optionally under another name (repeatable; "
                   "default: every ready model taking text_input + sampling_parameters)")
    g.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="tokenizer directory (default: the model config's tokenizer_dir; needed "
                   "when Triton runs on another machine)")
    g.add_argument("--chat-template", default=None, metavar="FILE",
                   help="Jinja chat template overriding the checkpoint's")
    g.add_argument("--tool-call-parser", default=None, choices=TOOL_CALL_PARSERS,
                   help="parse tool calls in chat output: hermes (<tool_call>{json}</tool_call>, "
                   "Hermes/Qwen) or llama3 (Llama 3.1+ JSON); unset: tools are refused")
    g.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1 (else 401); visible in the "
                   "process list: prefer --api-key-env or $INFLIGHT_OPENAI_API_KEY")
    g.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="like --api-key, the key read from $VAR")
    g.add_argument("--max-body-bytes", type=int, default=8 << 20, metavar="N",
                   help="largest request body accepted, else 413 (default: %(default)s)")
    g.add_argument("--max-n", type=int, default=16, metavar="N",
                   help="largest n (choices per prompt) accepted (default: %(default)s)")
    workers = ["--workers", "--openai-workers"] if port_flag == "--port" else ["--openai-workers"]
    g.add_argument(*workers, dest="openai_workers", type=int, default=None, metavar="N",
                   help="HTTP server processes sharing the port, each with its own gRPC "
                   "channels to Triton (default: a quarter of the usable cores, 1 to 4)")


def config_from_args(a: argparse.Namespace, triton_url: str, host: str) -> OpenAIConfig:
    models: dict[str, str] = {}
    for spec in a.served_model:
        triton, _, name = spec.partition("=")
        models[triton] = name or triton
    key = a.api_key or (os.environ.get(a.api_key_env, "") if a.api_key_env
                        else env.openai_api_key())
    if a.api_key_env and not key:
        from inflight.errors import ConfigError

        raise ConfigError(f"--api-key-env {a.api_key_env}: that variable is not set")
    from inflight.frontends.openai.workers import default_workers

    workers = default_workers() if a.openai_workers is None else a.openai_workers
    return OpenAIConfig(triton_url=triton_url, host=host, port=a.openai_port, models=models,
                        tokenizer=a.tokenizer, chat_template=a.chat_template,
                        tool_call_parser=a.tool_call_parser, api_key=key or None,
                        max_body_bytes=a.max_body_bytes, max_n=a.max_n, workers=workers)


def frontend_argv(a: argparse.Namespace) -> list[str]:
    """The options above as ``inflight openai`` arguments (for the launcher's child; an
    ``--api-key`` travels in the child's environment instead, see `child_env`)."""
    out: list[str] = []
    for spec in a.served_model:
        out += ["--served-model", spec]
    for flag, value in (("--tokenizer", a.tokenizer), ("--chat-template", a.chat_template),
                        ("--tool-call-parser", a.tool_call_parser),
                        ("--api-key-env", a.api_key_env)):
        if value is not None:
            out += [flag, value]
    if a.openai_workers is not None:
        out += ["--workers", str(a.openai_workers)]
    return out + ["--max-body-bytes", str(a.max_body_bytes), "--max-n", str(a.max_n)]


def child_env(a: argparse.Namespace) -> dict[str, str]:
    return {"INFLIGHT_OPENAI_API_KEY": a.api_key} if a.api_key else {}


def run(cfg: OpenAIConfig) -> int:
    try:
        import uvicorn  # noqa: F401

        import inflight.frontends.openai.app  # noqa: F401
    except ImportError as e:
        from inflight.errors import ConfigError

        raise ConfigError(f"the OpenAI server needs the 'openai' extra ({e.name} is missing): "
                          "pip install 'inflight[openai]'") from None
    from inflight.frontends.openai.workers import serve

    serve(cfg)
    return 0


def _cmd_openai(a: argparse.Namespace) -> int:
    cfg = config_from_args(a, a.triton_url, a.host)
    return run(cfg)


def add_openai_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("openai", help="OpenAI-compatible HTTP server in front of Triton",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=_cmd_openai)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--triton-url", default="localhost:8001", metavar="HOST:PORT",
                   help="Triton gRPC endpoint (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s; 0.0.0.0 for other hosts)")
    add_frontend_options(p, port_flag="--port")


def main(argv: list[str] | None = None) -> int:
    from inflight.errors import InflightError

    logging.basicConfig(level=env.log_level(), format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="inflight openai", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    a = p.parse_args(argv)
    try:
        return _cmd_openai(a)
    except InflightError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
