"""OpenAI request fields -> the `llm` model's ``sampling_parameters`` JSON, and the checks
that need no engine (the engine validates ranges too and names the field in its errors)."""

from __future__ import annotations

from typing import Any

from inflight.frontends.openai.errors import bad_request
from inflight.frontends.openai.protocol import ChatCompletionRequest, CompletionRequest, _Request

# request field -> sampling_parameters key, copied when set
_PASS = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "top_k", "min_p",
         "min_tokens", "repetition_penalty", "ignore_eos", "skip_special_tokens")


def check_common(req: _Request, max_n: int) -> None:
    if req.n > max_n:
        raise bad_request(f"n must be <= {max_n} (the server's --max-n), got {req.n}", param="n")
    if req.logit_bias:
        raise bad_request("logit_bias is not supported", param="logit_bias")


def check_completion(req: CompletionRequest, max_n: int, max_prompts: int) -> list[str]:
    """-> the prompts (a string or a list of strings)."""
    check_common(req, max_n)
    if req.suffix:
        raise bad_request("suffix is not supported", param="suffix")
    if req.best_of is not None and req.best_of != req.n:
        raise bad_request("best_of other than n is not supported", param="best_of")
    if req.echo and req.logprobs is not None:
        raise bad_request("echo with logprobs needs prompt logprobs, which the `llm` model does "
                          "not return", param="logprobs")
    prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise bad_request("prompt must be a string or a list of strings (token-id prompts are "
                          "not supported by the `llm` contract)", param="prompt")
    if any(not p for p in prompts):  # type: ignore[union-attr]
        raise bad_request("prompt must not be empty", param="prompt")
    if len(prompts) > max_prompts:
        raise bad_request(f"at most {max_prompts} prompts per request, got {len(prompts)}",
                          param="prompt")
    return list(prompts)  # type: ignore[arg-type]


def check_chat(req: ChatCompletionRequest, max_n: int, has_parser: bool) -> bool:
    """-> whether tool calls are parsed from the output."""
    check_common(req, max_n)
    if req.response_format is not None and req.response_format.type != "text":
        raise bad_request(f"response_format {req.response_format.type!r} needs guided decoding, "
                          "which inflight does not have yet; only 'text' is accepted",
                          param="response_format")
    if req.top_logprobs and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs: true", param="top_logprobs")
    choice = req.tool_choice
    if not req.tools:
        if choice not in (None, "none"):
            raise bad_request("tool_choice needs tools", param="tool_choice")
        return False
    if choice == "none":
        return False
    if choice not in (None, "auto"):
        raise bad_request("tool_choice 'required' or a named function needs guided decoding, "
                          "which inflight does not have yet; use 'auto' or 'none'",
                          param="tool_choice")
    if not has_parser:
        raise bad_request("tools with tool_choice 'auto' need the server started with "
                          "--tool-call-parser hermes|llama3", param="tool_choice")
    return True


def sampling_parameters(req: _Request, max_tokens: int | None, *, logprobs: int | None,
                        seed_offset: int = 0, chat: bool = False) -> dict[str, Any]:
    """One choice's sampling_parameters; choice j of a seeded request uses seed + j."""
    out: dict[str, Any] = {}
    for name in _PASS:
        v = getattr(req, name)
        if v is not None:
            out[name] = v
    if max_tokens is not None:
        out["max_tokens"] = max_tokens
    stops = req.stop_list()
    if stops:
        out["stop"] = stops
    if req.seed is not None:
        out["seed"] = (req.seed + seed_offset) % 2**64
    if logprobs is not None:
        out["logprobs"] = logprobs
    if chat:  # the rendered template holds its own BOS
        out["add_special_tokens"] = False
    return out
