"""The tensor contracts of every model, in one place: the config.pbtxt templates in
`model_repository/` are generated from these (`python -m inflight.frontends.triton.contract`) and a
test checks they agree."""

from __future__ import annotations

import os
import sys

from inflight.frontends.triton.params import template_keys

# (name, data_type, dims, optional)
Spec = tuple[str, str, list[int], bool]

SAMPLING_INPUTS: list[Spec] = [
    ("max_tokens", "TYPE_INT32", [1], True), ("request_output_len", "TYPE_INT32", [1], True),
    ("bad_words", "TYPE_STRING", [-1], True), ("stop_words", "TYPE_STRING", [-1], True),
    ("end_id", "TYPE_INT32", [1], True), ("pad_id", "TYPE_INT32", [1], True),
    ("top_k", "TYPE_INT32", [1], True), ("top_p", "TYPE_FP32", [1], True),
    ("min_p", "TYPE_FP32", [1], True),
    ("temperature", "TYPE_FP32", [1], True), ("length_penalty", "TYPE_FP32", [1], True),
    ("repetition_penalty", "TYPE_FP32", [1], True), ("min_tokens", "TYPE_INT32", [1], True),
    ("min_length", "TYPE_INT32", [1], True),
    ("presence_penalty", "TYPE_FP32", [1], True), ("frequency_penalty", "TYPE_FP32", [1], True),
    ("seed", "TYPE_UINT64", [1], True), ("random_seed", "TYPE_UINT64", [1], True),
    ("return_log_probs", "TYPE_BOOL", [1], True), ("return_context_logits", "TYPE_BOOL", [1], True),
    ("return_generation_logits", "TYPE_BOOL", [1], True), ("beam_width", "TYPE_INT32", [1], True),
    ("stream", "TYPE_BOOL", [1], True), ("exclude_input_in_output", "TYPE_BOOL", [1], True),
    ("num_return_sequences", "TYPE_INT32", [1], True),
    ("return_num_input_tokens", "TYPE_BOOL", [1], True),
    ("return_num_output_tokens", "TYPE_BOOL", [1], True),
    ("return_perf_metrics", "TYPE_BOOL", [1], True),
    ("return_kv_cache_reuse_stats", "TYPE_BOOL", [1], True),
    ("ignore_eos", "TYPE_BOOL", [1], True),
]
RESULT_OUTPUTS: list[Spec] = [
    ("cum_log_probs", "TYPE_FP32", [-1], False), ("output_log_probs", "TYPE_FP32", [-1, -1], False),
    ("context_logits", "TYPE_FP32", [-1, -1], False),
    ("generation_logits", "TYPE_FP32", [-1, -1, -1], False),
    ("batch_index", "TYPE_INT32", [1], False), ("sequence_index", "TYPE_INT32", [1], False),
    ("finish_reason", "TYPE_STRING", [1], False),
    ("num_input_tokens", "TYPE_INT32", [1], False), ("num_output_tokens", "TYPE_INT32", [1], False),
    ("kv_cache_reused_blocks", "TYPE_INT32", [1], False),
    ("kv_cache_alloc_new_blocks", "TYPE_INT32", [1], False),
    ("kv_cache_alloc_total_blocks", "TYPE_INT32", [1], False),
    ("arrival_time_ns", "TYPE_INT64", [1], False), ("first_scheduled_time_ns", "TYPE_INT64", [1], False),
    ("first_token_time_ns", "TYPE_INT64", [1], False), ("last_token_time_ns", "TYPE_INT64", [1], False),
]
# The engine's id of one in-flight request (one batch item): on every engine response, so that
# postprocessing can stop exactly that request when the ensemble above it was cancelled (Triton
# does not cancel an ensemble's running steps); with `stop` it cancels that request alone.
ENGINE_REQUEST_KEY: Spec = ("engine_request_key", "TYPE_UINT64", [1], True)
ENGINE_INPUTS: list[Spec] = [
    ("input_ids", "TYPE_INT32", [-1], False), ("input_lengths", "TYPE_INT32", [1], True),
    ("stop", "TYPE_BOOL", [1], True), ("streaming", "TYPE_BOOL", [1], True), ENGINE_REQUEST_KEY,
] + SAMPLING_INPUTS
ENGINE_OUTPUTS: list[Spec] = [
    ("output_ids", "TYPE_INT32", [-1, -1], False), ("sequence_length", "TYPE_INT32", [-1], False),
    ("text_delta", "TYPE_STRING", [1], False), ("engine_request_key", "TYPE_UINT64", [1], False),
] + RESULT_OUTPUTS
# text_input is required, but declared optional where a missing one must reach our code: an
# ensemble does not check required inputs (Triton answers an empty HTTP 200), so preprocessing
# does, and also takes max_tokens so that it still runs, and names text_input, when only
# text_input is missing.
ENSEMBLE_INPUTS: list[Spec] = [("text_input", "TYPE_STRING", [1], True)] + SAMPLING_INPUTS
ENSEMBLE_OUTPUTS: list[Spec] = [("text_output", "TYPE_STRING", [-1], False)] + RESULT_OUTPUTS
PRE_INPUTS: list[Spec] = [("text_input", "TYPE_STRING", [1], True),
                          ("max_tokens", "TYPE_INT32", [1], True)]
PRE_OUTPUTS: list[Spec] = [("input_ids", "TYPE_INT32", [-1], False), ("input_lengths", "TYPE_INT32", [1], False)]
POST_INPUTS: list[Spec] = [
    ("output_ids", "TYPE_INT32", [-1, -1], True), ("sequence_length", "TYPE_INT32", [-1], True),
    ("text_delta", "TYPE_STRING", [1], True), ENGINE_REQUEST_KEY,
] + [(n, t, d, True) for n, t, d, _ in RESULT_OUTPUTS]
POST_OUTPUTS: list[Spec] = ENSEMBLE_OUTPUTS
LLM_INPUTS: list[Spec] = [
    ("text_input", "TYPE_STRING", [1], False), ("stream", "TYPE_BOOL", [1], True),
    ("sampling_parameters", "TYPE_STRING", [1], True),
    ("exclude_input_in_output", "TYPE_BOOL", [1], True),
    ("return_finish_reason", "TYPE_BOOL", [1], True),
    ("return_cumulative_logprob", "TYPE_BOOL", [1], True),
    ("return_logprobs", "TYPE_BOOL", [1], True),
    ("return_num_input_tokens", "TYPE_BOOL", [1], True),
    ("return_num_output_tokens", "TYPE_BOOL", [1], True),
]
LLM_OUTPUTS: list[Spec] = [
    ("text_output", "TYPE_STRING", [-1], False), ("finish_reason", "TYPE_STRING", [-1], False),
    ("cumulative_logprob", "TYPE_FP32", [-1], False), ("logprobs", "TYPE_STRING", [-1], False),
    ("num_input_tokens", "TYPE_UINT32", [1], False), ("num_output_tokens", "TYPE_UINT32", [1], False),
]

# The vLLM profile's `llm` (vllm_backend's contract: its `image` input is declared and refused
# by name; num_output_tokens is [-1] as there)
VLLM_INPUTS: list[Spec] = LLM_INPUTS[:1] + [("image", "TYPE_STRING", [-1], True)] + LLM_INPUTS[1:]
VLLM_OUTPUTS: list[Spec] = [s if s[0] != "num_output_tokens" else (s[0], s[1], [-1], s[3])
                            for s in LLM_OUTPUTS]

# derived from EngineConfig and ServingConfig (params.template_keys): config keys live once
ENGINE_PARAMS = template_keys() + ["decoupled_mode"]


def _io(kind: str, specs: list[Spec]) -> str:
    rows = []
    for name, dtype, dims, optional in specs:
        opt = "\n    optional: true" if optional else ""
        rows.append(f'  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: {dims}{opt}\n  }}')
    return f"{kind} [\n" + ",\n".join(rows) + "\n]\n"


def _params(keys: list[str]) -> str:
    return "".join(f'parameters {{\n  key: "{k}"\n  value: {{ string_value: "${{{k}}}" }}\n}}\n'
                   for k in keys)


def _python_model(name: str, inputs: list[Spec], outputs: list[Spec], params: list[str],
                  decoupled: bool, batch: str = "${triton_max_batch_size}",
                  count: str = "${instance_count}") -> str:
    policy = "model_transaction_policy {\n  decoupled: true\n}\n" if decoupled else ""
    return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: {batch}\n{policy}'
            + _io("input", inputs) + _io("output", outputs)
            + f"instance_group [\n  {{\n    count: {count}\n    kind: KIND_CPU\n  }}\n]\n"
            + _params(params))


# Engine outputs the ensemble does not route to postprocessing: `text_delta` carries the
# response's text, so the token ids would be built, copied by tritonserver and dropped unread
# on every response. The engine builds only the outputs its step requests (issue 13).
ENSEMBLE_UNMAPPED = frozenset({"output_ids", "sequence_length"})


def _ensemble() -> str:
    def maps(specs: list[Spec], kind: str) -> str:
        return "".join(f'      {kind} {{ key: "{n}" value: "{n}" }}\n' for n, *_ in specs)

    sampling = [s for s in SAMPLING_INPUTS]
    steps = (
        '    {\n      model_name: "preprocessing"\n      model_version: -1\n'
        + maps(PRE_INPUTS, "input_map") + maps(PRE_OUTPUTS, "output_map")
        + '    },\n    {\n      model_name: "engine"\n      model_version: -1\n'
        + maps(PRE_OUTPUTS + sampling, "input_map")
        + "".join(f'      output_map {{ key: "{n}" value: "_engine_{n}" }}\n'
                  for n, *_ in ENGINE_OUTPUTS if n not in ENSEMBLE_UNMAPPED)
        + '    },\n    {\n      model_name: "postprocessing"\n      model_version: -1\n'
        + "".join(f'      input_map {{ key: "{n}" value: "_engine_{n}" }}\n'
                  for n, *_ in POST_INPUTS if n not in ENSEMBLE_UNMAPPED)
        + maps(POST_OUTPUTS, "output_map") + "    }\n")
    return ('name: "ensemble"\nplatform: "ensemble"\nmax_batch_size: ${triton_max_batch_size}\n'
            + _io("input", ENSEMBLE_INPUTS) + _io("output", ENSEMBLE_OUTPUTS)
            + "ensemble_scheduling {\n  step [\n" + steps + "  ]\n}\n")


TOKENIZER_PARAMS = ["tokenizer_dir", "trust_remote_code", "allow_trust_remote_code"]
# the unary front model (triton/unary_model.py): the ensemble contract, non-decoupled
UNARY_PARAMS = TOKENIZER_PARAMS + ["engine_model", "profile", "decoupled_mode"]


def templates() -> dict[str, str]:
    tok = TOKENIZER_PARAMS
    return {
        "preprocessing": _python_model("preprocessing", PRE_INPUTS, PRE_OUTPUTS, tok, False),
        "postprocessing": _python_model("postprocessing", POST_INPUTS, POST_OUTPUTS,
                                        tok + ["engine_model"], False),
        "engine": _python_model("engine", ENGINE_INPUTS, ENGINE_OUTPUTS, ENGINE_PARAMS, True, count="1"),
        "ensemble": _ensemble(),
        "bls": _python_model("bls", ENSEMBLE_INPUTS, ENSEMBLE_OUTPUTS,
                             ["preprocessing_model", "engine_model", "postprocessing_model"]
                             + UNARY_PARAMS, True),
        "llm": _python_model("llm", LLM_INPUTS, LLM_OUTPUTS, ENGINE_PARAMS, True, batch="0", count="1"),
        "ensemble_unary": _python_model("ensemble_unary", ENSEMBLE_INPUTS, ENSEMBLE_OUTPUTS,
                                        UNARY_PARAMS, False, count="1"),
    }


def vllm_template() -> str:
    """`llm` of the vLLM profile (`inflight repo build --layout llm --profile vllm`)."""
    return _python_model("llm", VLLM_INPUTS, VLLM_OUTPUTS,
                         ENGINE_PARAMS + ["profile", "REPORT_CUSTOM_METRICS"], True, batch="0", count="1")


VLLM_SHIM = "from inflight.frontends.triton.vllm_model import TritonPythonModel"
SHIMS = {
    "preprocessing": "from inflight.frontends.triton.text_models import PreprocessingModel as TritonPythonModel",
    "postprocessing": "from inflight.frontends.triton.text_models import PostprocessingModel as TritonPythonModel",
    "engine": "from inflight.frontends.triton.engine_model import TritonPythonModel",
    "bls": "from inflight.frontends.triton.bls_model import TritonPythonModel",
    "llm": "from inflight.frontends.triton.llm_model import TritonPythonModel",
    "ensemble_unary": "from inflight.frontends.triton.unary_model import TritonPythonModel",
}


def shim_text(line: str) -> str:
    return f'"""Triton shim: the model lives in the inflight package."""\n\n{line}  # noqa: F401\n'


def write_templates(root: str) -> None:
    for name, text in templates().items():
        os.makedirs(os.path.join(root, name, "1"), exist_ok=True)
        with open(os.path.join(root, name, "config.pbtxt"), "w", encoding="utf-8") as f:
            f.write(text)
        if name in SHIMS:
            with open(os.path.join(root, name, "1", "model.py"), "w", encoding="utf-8") as f:
                f.write(shim_text(SHIMS[name]))


if __name__ == "__main__":
    write_templates(sys.argv[1] if len(sys.argv) > 1 else "model_repository")
