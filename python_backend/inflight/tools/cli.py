"""`inflight` command line: generate, serve, repo, bench.

Run ``inflight COMMAND --help`` for each command's options.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from inflight.model_source import resolve_model  # noqa: F401 - re-exported for commands

EPILOG = """examples:
  inflight generate --model tiny:llama "The capital of France is"
  inflight generate --model /models/Llama-3.1-8B-Instruct --temperature 0.7 --max-tokens 200 "Hi"
  inflight repo build --model tiny:llama --out /tmp/repo && inflight serve /tmp/repo
"""


def add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--model", default="tiny:llama",
                   help="Hugging Face checkpoint directory, or tiny:FAMILY for a locally built "
                        "tiny model (default: %(default)s)")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--load-format", default="auto", choices=["auto", "safetensors", "dummy"],
                   help="dummy: random weights from config.json alone (benchmarks)")
    g.add_argument("--max-seq-len", type=int, default=None)
    g.add_argument("--max-tokens-in-paged-kv-cache", type=int, default=None,
                   help="KV pool size in tokens (default: from free memory)")
    g.add_argument("--attention-backend", default="auto", choices=["auto", "torch", "triton"])
    g.add_argument("--quantization", default="auto", help="auto (from the checkpoint) | none | fp8 | awq"
                   " | compressed-tensors | modelopt (docs/quantization.md)")
    g.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8"])
    g.add_argument("--tensor-parallel-size", "--tp", type=int, default=1,
                   help="ranks (GPUs) the model is split over (docs/parallelism.md)")


def engine_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    return {"dtype": a.dtype, "device": a.device, "load_format": a.load_format,
            "max_seq_len": a.max_seq_len, "attention_backend": a.attention_backend,
            "max_tokens_in_paged_kv_cache": a.max_tokens_in_paged_kv_cache,
            "quantization": a.quantization, "kv_cache_dtype": a.kv_cache_dtype,
            "tensor_parallel_size": a.tensor_parallel_size}


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=64, help="tokens to generate at most")
    g.add_argument("--min-tokens", type=int, default=0)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--min-p", type=float, default=0.0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--ignore-eos", action="store_true")


def _cmd_generate(a: argparse.Namespace) -> int:
    from inflight import LLM, SamplingParams
    from inflight.errors import InflightError

    try:
        params = SamplingParams(
            max_tokens=a.max_tokens, min_tokens=a.min_tokens, temperature=a.temperature,
            top_k=a.top_k, top_p=a.top_p, min_p=a.min_p, repetition_penalty=a.repetition_penalty,
            seed=a.seed, stop=a.stop, ignore_eos=a.ignore_eos)
        llm = LLM(a.model, **engine_kwargs(a))
    except InflightError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        for prompt in a.prompt:
            sys.stdout.write(prompt if a.echo else "")
            final = None
            for u in llm.stream(prompt, params):
                sys.stdout.write(u.text)
                sys.stdout.flush()
                final = u
            sys.stdout.write("\n")
            if final is not None and final.metrics is not None and a.verbose:
                m = final.metrics
                print(f"[{m.num_prompt_tokens} prompt + {m.num_output_tokens} generated tokens, "
                      f"finish_reason={final.finish_reason}, ttft={m.ttft or 0:.3f}s, "
                      f"total={m.e2e or 0:.3f}s]", file=sys.stderr)
    except InflightError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        llm.shutdown()
    return 0


def _add_generate(sub: Any) -> None:
    p = sub.add_parser("generate", help="stream a completion to the terminal",
                       description="Generate text for one or more prompts and stream it to stdout.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", nargs="+", help="prompt text (several prompts run one after another)")
    p.add_argument("--echo", action="store_true", help="print the prompt before the completion")
    p.add_argument("-v", "--verbose", action="store_true", help="print token counts and timings")
    add_engine_args(p)
    add_sampling_args(p)
    p.set_defaults(func=_cmd_generate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="inflight", description="inflight: LLM serving for NVIDIA Triton Inference Server",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_generate(sub)
    for mod, fn in (("tools.serve.launcher", "add_serve_parser"), ("tools.repo", "add_repo_parser"),
                    ("tools.demo", "add_demo_parser"), ("tools.bench.cli", "add_bench_parser"),
                    ("tools.soak", "add_soak_parser"), ("tools.quantize", "add_quantize_parser"),
                    ("frontends.openai.server", "add_openai_parser")):
        try:  # a command whose optional extras are missing is left out, not fatal
            register = getattr(importlib.import_module(f"inflight.{mod}"), fn)
        except ImportError:
            continue
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    import logging

    from inflight import env

    logging.basicConfig(level=env.log_level(), format="%(levelname)s %(name)s: %(message)s")
    from inflight.errors import InflightError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except InflightError as e:  # a bad option or model: one line saying what, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
