"""The TensorRT-LLM compatibility profile (`inflight repo build --profile trtllm`).

Model names, tensor names, dtypes, dims and parameters of tensorrtllm_backend's
`all_models/inflight_batcher_llm` (the release whose clients and tools this profile is tested
against, see docs/compatibility.md): `preprocessing`, `tensorrt_llm`, `postprocessing`,
`ensemble`, `tensorrt_llm_bls`. The lists below are interface facts written out here (names,
types, shapes), not that project's files. inflight's own extras are marked: they are optional
inputs or additional outputs, so a peer client never notices them.
"""

from __future__ import annotations

from inflight.frontends.triton.contract import Spec

_O = True  # optional
_R = False  # required

# ---- tensorrt_llm (the engine) --------------------------------------------------------------
# Inputs the engine honours.
TRTLLM_ENGINE_IMPLEMENTED: list[Spec] = [
    ("input_ids", "TYPE_INT32", [-1], _O), ("input_lengths", "TYPE_INT32", [1], _R),
    ("request_output_len", "TYPE_INT32", [1], _R), ("num_return_sequences", "TYPE_INT32", [1], _O),
    ("end_id", "TYPE_INT32", [1], _O), ("pad_id", "TYPE_INT32", [1], _O),
    ("stop_words_list", "TYPE_INT32", [2, -1], _O), ("bad_words_list", "TYPE_INT32", [2, -1], _O),
    ("embedding_bias", "TYPE_FP32", [-1], _O), ("beam_width", "TYPE_INT32", [1], _O),
    ("temperature", "TYPE_FP32", [1], _O), ("runtime_top_k", "TYPE_INT32", [1], _O),
    ("runtime_top_p", "TYPE_FP32", [1], _O), ("len_penalty", "TYPE_FP32", [1], _O),
    ("early_stopping", "TYPE_BOOL", [1], _O), ("repetition_penalty", "TYPE_FP32", [1], _O),
    ("min_tokens", "TYPE_INT32", [1], _O), ("presence_penalty", "TYPE_FP32", [1], _O),
    ("frequency_penalty", "TYPE_FP32", [1], _O), ("seed", "TYPE_UINT64", [1], _O),
    ("return_log_probs", "TYPE_BOOL", [1], _O), ("return_context_logits", "TYPE_BOOL", [1], _O),
    ("return_generation_logits", "TYPE_BOOL", [1], _O), ("return_perf_metrics", "TYPE_BOOL", [1], _O),
    ("exclude_input_in_output", "TYPE_BOOL", [1], _O), ("stop", "TYPE_BOOL", [1], _O),
    ("streaming", "TYPE_BOOL", [1], _O),
]
# Inputs of the peer's engine that inflight does not implement: present -> INVALID_ARG naming
# the feature (never "unexpected input"). name -> (dtype, dims, feature).
TRTLLM_ENGINE_UNSUPPORTED: dict[str, tuple[str, list[int], str]] = {
    "encoder_input_features": ("TYPE_FP32", [-1, -1], "encoder-decoder models"),
    "encoder_output_lengths": ("TYPE_INT32", [1], "encoder-decoder models"),
    "draft_input_ids": ("TYPE_INT32", [-1], "speculative decoding (draft tokens)"),
    "decoder_input_ids": ("TYPE_INT32", [-1], "encoder-decoder models"),
    "decoder_input_lengths": ("TYPE_INT32", [1], "encoder-decoder models"),
    "draft_logits": ("TYPE_FP32", [-1, -1], "speculative decoding (draft logits)"),
    "draft_acceptance_threshold": ("TYPE_FP32", [1], "speculative decoding (draft acceptance)"),
    "runtime_top_p_min": ("TYPE_FP32", [1], "top-p decay (runtime_top_p_min/decay/reset_ids)"),
    "runtime_top_p_decay": ("TYPE_FP32", [1], "top-p decay (runtime_top_p_min/decay/reset_ids)"),
    "runtime_top_p_reset_ids": ("TYPE_INT32", [1], "top-p decay (runtime_top_p_min/decay/reset_ids)"),
    "beam_search_diversity_rate": ("TYPE_FP32", [1], "beam search"),
    "prompt_embedding_table": ("TYPE_FP16", [-1, -1], "prompt tables (p-tuning)"),
    "prompt_table_extra_ids": ("TYPE_UINT64", [-1], "prompt tables (p-tuning)"),
    "prompt_vocab_size": ("TYPE_INT32", [1], "prompt tables (p-tuning)"),
    "cross_attention_mask": ("TYPE_BOOL", [-1, -1], "cross attention (multimodal)"),
    "mrope_rotary_cos_sin": ("TYPE_FP32", [-1], "mrope (multimodal)"),
    "mrope_position_deltas": ("TYPE_INT64", [1], "mrope (multimodal)"),
    "lora_task_id": ("TYPE_UINT64", [1], "LoRA"),
    "lora_weights": ("TYPE_FP16", [-1, -1], "LoRA"),
    "lora_config": ("TYPE_INT32", [-1, 3], "LoRA"),
    "context_phase_params": ("TYPE_UINT8", [-1], "disaggregated serving (context phase)"),
    "skip_cross_attn_blocks": ("TYPE_BOOL", [1], "cross attention (multimodal)"),
    "retention_token_range_starts": ("TYPE_INT32", [-1], "KV cache retention priorities"),
    "retention_token_range_ends": ("TYPE_INT32", [-1], "KV cache retention priorities"),
    "retention_token_range_priorities": ("TYPE_INT32", [-1], "KV cache retention priorities"),
    "retention_token_range_durations_ms": ("TYPE_INT32", [-1], "KV cache retention priorities"),
    "retention_decode_priority": ("TYPE_INT32", [1], "KV cache retention priorities"),
    "retention_decode_duration_ms": ("TYPE_INT32", [1], "KV cache retention priorities"),
    "guided_decoding_guide_type": ("TYPE_STRING", [1], "guided decoding"),
    "guided_decoding_guide": ("TYPE_STRING", [1], "guided decoding"),
    "lookahead_window_size": ("TYPE_INT32", [1], "lookahead decoding"),
    "lookahead_ngram_size": ("TYPE_INT32", [1], "lookahead decoding"),
    "lookahead_verification_set_size": ("TYPE_INT32", [1], "lookahead decoding"),
    # front-model inputs (ensemble / tensorrt_llm_bls / preprocessing)
    "decoder_text_input": ("TYPE_STRING", [1], "encoder-decoder models"),
    "DECODER_QUERY": ("TYPE_STRING", [1], "encoder-decoder models"),
    "prompt_table_extra_id": ("TYPE_UINT64", [1], "prompt tables (p-tuning)"),
    "PROMPT_TABLE_EXTRA_ID": ("TYPE_UINT64", [1], "prompt tables (p-tuning)"),
    "image_input": ("TYPE_FP16", [-1, 3, -1, -1], "multimodal inputs"),
    "image_bytes_input": ("TYPE_UINT8", [-1, -1, -1, -1], "multimodal inputs"),
    "image_url_input": ("TYPE_STRING", [1], "multimodal inputs"),
    "video_bytes_input": ("TYPE_UINT8", [-1, -1, -1, -1], "multimodal inputs"),
    "IMAGE_BYTES": ("TYPE_UINT8", [-1, -1, -1, -1], "multimodal inputs"),
    "IMAGE_URL": ("TYPE_STRING", [1], "multimodal inputs"),
    "VIDEO_BYTES": ("TYPE_UINT8", [-1, -1, -1, -1], "multimodal inputs"),
    "num_draft_tokens": ("TYPE_INT32", [1], "speculative decoding (draft tokens)"),
    "use_draft_logits": ("TYPE_BOOL", [1], "speculative decoding (draft logits)"),
}
_ENGINE_UNSUPPORTED_ORDER = [
    "encoder_input_features", "encoder_output_lengths", "draft_input_ids", "decoder_input_ids",
    "decoder_input_lengths", "draft_logits", "draft_acceptance_threshold", "runtime_top_p_min",
    "runtime_top_p_decay", "runtime_top_p_reset_ids", "beam_search_diversity_rate",
    "prompt_embedding_table", "prompt_table_extra_ids", "prompt_vocab_size",
    "cross_attention_mask", "mrope_rotary_cos_sin", "mrope_position_deltas", "lora_task_id",
    "lora_weights", "lora_config", "context_phase_params", "skip_cross_attn_blocks",
    "retention_token_range_starts", "retention_token_range_ends",
    "retention_token_range_priorities", "retention_token_range_durations_ms",
    "retention_decode_priority", "retention_decode_duration_ms", "guided_decoding_guide_type",
    "guided_decoding_guide", "lookahead_window_size", "lookahead_ngram_size",
    "lookahead_verification_set_size",
]


def unsupported(names: list[str]) -> list[Spec]:
    return [(n, TRTLLM_ENGINE_UNSUPPORTED[n][0], TRTLLM_ENGINE_UNSUPPORTED[n][1], _O) for n in names]


# inflight extras on the engine: strings for stop/bad words (matched on text, exact across
# token boundaries) and the key that lets postprocessing / bls stop exactly one request.
ENGINE_EXTRA_INPUTS: list[Spec] = [
    ("stop_words", "TYPE_STRING", [-1], _O), ("bad_words", "TYPE_STRING", [-1], _O),
    ("engine_request_key", "TYPE_UINT64", [1], _O), ("min_p", "TYPE_FP32", [1], _O),
    ("ignore_eos", "TYPE_BOOL", [1], _O), ("return_num_input_tokens", "TYPE_BOOL", [1], _O),
    ("return_num_output_tokens", "TYPE_BOOL", [1], _O),
]
TRTLLM_ENGINE_INPUTS: list[Spec] = (TRTLLM_ENGINE_IMPLEMENTED + unsupported(_ENGINE_UNSUPPORTED_ORDER)
                                    + ENGINE_EXTRA_INPUTS)
PERF_OUTPUTS: list[Spec] = [
    ("kv_cache_alloc_new_blocks", "TYPE_INT32", [1], _R), ("kv_cache_reused_blocks", "TYPE_INT32", [1], _R),
    ("kv_cache_alloc_total_blocks", "TYPE_INT32", [1], _R), ("arrival_time_ns", "TYPE_INT64", [1], _R),
    ("first_scheduled_time_ns", "TYPE_INT64", [1], _R), ("first_token_time_ns", "TYPE_INT64", [1], _R),
    ("last_token_time_ns", "TYPE_INT64", [1], _R), ("acceptance_rate", "TYPE_FP32", [1], _R),
    ("total_accepted_draft_tokens", "TYPE_INT32", [1], _R), ("total_draft_tokens", "TYPE_INT32", [1], _R),
]
RESULT_OUTPUTS: list[Spec] = [
    ("cum_log_probs", "TYPE_FP32", [-1], _R), ("output_log_probs", "TYPE_FP32", [-1, -1], _R),
    ("context_logits", "TYPE_FP32", [-1, -1], _R), ("generation_logits", "TYPE_FP32", [-1, -1, -1], _R),
    ("batch_index", "TYPE_INT32", [1], _R), ("sequence_index", "TYPE_INT32", [1], _R),
]
# additional outputs of inflight (a peer client never asks for them)
EXTRA_OUTPUTS: list[Spec] = [
    ("finish_reason", "TYPE_STRING", [1], _R), ("num_input_tokens", "TYPE_INT32", [1], _R),
    ("num_output_tokens", "TYPE_INT32", [1], _R),
]
TRTLLM_ENGINE_OUTPUTS: list[Spec] = (
    [("output_ids", "TYPE_INT32", [-1, -1], _R), ("sequence_length", "TYPE_INT32", [-1], _R)]
    + RESULT_OUTPUTS + [("context_phase_params", "TYPE_UINT8", [-1], _R)] + PERF_OUTPUTS
    + [("text_delta", "TYPE_STRING", [1], _R), ("engine_request_key", "TYPE_UINT64", [1], _R)]
    + EXTRA_OUTPUTS)

# ---- preprocessing / postprocessing ---------------------------------------------------------
TRTLLM_PRE_INPUTS: list[Spec] = [
    ("QUERY", "TYPE_STRING", [1], _O),  # required by the peer; optional so a missing one is named
    ("DECODER_QUERY", "TYPE_STRING", [1], _O),
    ("IMAGE_BYTES", "TYPE_UINT8", [-1, -1, -1, -1], _O), ("IMAGE_URL", "TYPE_STRING", [1], _O),
    ("VIDEO_BYTES", "TYPE_UINT8", [-1, -1, -1, -1], _O),
    ("REQUEST_OUTPUT_LEN", "TYPE_INT32", [1], _O),
    ("BAD_WORDS_DICT", "TYPE_STRING", [-1], _O), ("STOP_WORDS_DICT", "TYPE_STRING", [-1], _O),
    ("EMBEDDING_BIAS_WORDS", "TYPE_STRING", [-1], _O), ("EMBEDDING_BIAS_WEIGHTS", "TYPE_FP32", [-1], _O),
    ("END_ID", "TYPE_INT32", [1], _O), ("PAD_ID", "TYPE_INT32", [1], _O),
    ("PROMPT_TABLE_EXTRA_ID", "TYPE_UINT64", [1], _O),
]
TRTLLM_PRE_OUTPUTS: list[Spec] = [
    ("INPUT_ID", "TYPE_INT32", [-1], _R), ("REQUEST_INPUT_LEN", "TYPE_INT32", [1], _R),
    ("DECODER_INPUT_ID", "TYPE_INT32", [-1], _R), ("REQUEST_DECODER_INPUT_LEN", "TYPE_INT32", [1], _R),
    ("BAD_WORDS_IDS", "TYPE_INT32", [2, -1], _R), ("STOP_WORDS_IDS", "TYPE_INT32", [2, -1], _R),
    ("EMBEDDING_BIAS", "TYPE_FP32", [-1], _R), ("REQUEST_OUTPUT_LEN", "TYPE_INT32", [-1], _R),
    ("OUT_END_ID", "TYPE_INT32", [1], _R), ("OUT_PAD_ID", "TYPE_INT32", [1], _R),
    ("OUT_PROMPT_TABLE_EXTRA_IDS", "TYPE_UINT64", [-1], _R),
    ("PIXEL_VALUES", "TYPE_FP16", [-1, -1, -1, -1], _R), ("ASPECT_RATIO_IDS", "TYPE_INT64", [-1], _R),
    ("ASPECT_RATIO_MASK", "TYPE_INT64", [-1, -1], _R), ("CROSS_ATTENTION_MASK", "TYPE_INT64", [-1, -1, -1], _R),
    ("IMAGE_SIZES", "TYPE_INT64", [2], _R), ("IS_VIDEO_INPUT", "TYPE_BOOL", [1], _R),
    ("ATTENTION_MASK", "TYPE_INT64", [-1], _R), ("IMAGE_GRID_THW", "TYPE_INT64", [3], _R),
    ("VISION_INPUT_ID", "TYPE_INT32", [-1], _R),
]
# postprocessing: the peer's two inputs, plus (optional) the engine's exact text delta, its
# request key (cancel forwarding) and every engine output it passes on to the ensemble
_PASS = RESULT_OUTPUTS + PERF_OUTPUTS + EXTRA_OUTPUTS
TRTLLM_POST_INPUTS: list[Spec] = (
    [("TOKENS_BATCH", "TYPE_INT32", [-1, -1], _O), ("SEQUENCE_LENGTH", "TYPE_INT32", [-1], _O),
     ("text_delta", "TYPE_STRING", [1], _O), ("engine_request_key", "TYPE_UINT64", [1], _O)]
    + [(n, t, d, _O) for n, t, d, _ in _PASS])
TRTLLM_POST_OUTPUTS: list[Spec] = [("OUTPUT", "TYPE_STRING", [-1], _R)] + _PASS

# ---- ensemble / tensorrt_llm_bls ------------------------------------------------------------
FRONT_SAMPLING: list[Spec] = [
    ("max_tokens", "TYPE_INT32", [1], _O),  # required by the peer; optional so a missing one is named
    ("num_return_sequences", "TYPE_INT32", [1], _O),
    ("bad_words", "TYPE_STRING", [-1], _O), ("stop_words", "TYPE_STRING", [-1], _O),
    ("exclude_input_in_output", "TYPE_BOOL", [1], _O), ("end_id", "TYPE_INT32", [1], _O),
    ("pad_id", "TYPE_INT32", [1], _O), ("top_k", "TYPE_INT32", [1], _O), ("top_p", "TYPE_FP32", [1], _O),
    ("temperature", "TYPE_FP32", [1], _O), ("length_penalty", "TYPE_FP32", [1], _O),
    ("repetition_penalty", "TYPE_FP32", [1], _O), ("min_tokens", "TYPE_INT32", [1], _O),
    ("presence_penalty", "TYPE_FP32", [1], _O), ("frequency_penalty", "TYPE_FP32", [1], _O),
    ("seed", "TYPE_UINT64", [1], _O), ("return_log_probs", "TYPE_BOOL", [1], _O),
    ("return_context_logits", "TYPE_BOOL", [1], _O), ("return_generation_logits", "TYPE_BOOL", [1], _O),
    ("return_perf_metrics", "TYPE_BOOL", [1], _O), ("beam_width", "TYPE_INT32", [1], _O),
    ("stream", "TYPE_BOOL", [1], _O),
    ("embedding_bias_words", "TYPE_STRING", [-1], _O), ("embedding_bias_weights", "TYPE_FP32", [-1], _O),
]
FRONT_UNSUPPORTED = ["decoder_text_input", "prompt_embedding_table", "prompt_table_extra_id",
                     "prompt_vocab_size", "lora_task_id", "lora_weights", "lora_config",
                     "guided_decoding_guide_type", "guided_decoding_guide"]
FRONT_INPUTS: list[Spec] = ([("text_input", "TYPE_STRING", [1], _O)] + FRONT_SAMPLING
                            + unsupported(FRONT_UNSUPPORTED))
BLS_INPUTS: list[Spec] = FRONT_INPUTS + unsupported(
    ["image_input", "image_bytes_input", "image_url_input", "video_bytes_input",
     "num_draft_tokens", "use_draft_logits"])
FRONT_OUTPUTS: list[Spec] = [("text_output", "TYPE_STRING", [-1], _R)] + _PASS

# ---- parameters -----------------------------------------------------------------------------
# The peer's tensorrt_llm parameters inflight reads under the same name come from
# contract.ENGINE_PARAMS; these are the peer's parameters kept in the config for tools that
# fill them (inflight ignores them: see triton/params.py IGNORED_KEYS).
PEER_ONLY_ENGINE_PARAMS = [
    "FORCE_CPU_ONLY_INPUT_TENSORS", "gpt_model_type", "encoder_model_path",
    "max_attention_window_size", "sink_token_length", "cross_kv_cache_fraction",
    "kv_cache_host_memory_bytes", "kv_cache_onboard_blocks", "cancellation_check_period_ms",
    "stats_check_period_ms", "iter_stats_max_iterations", "request_stats_max_iterations",
    "normalize_log_probs", "gpu_device_ids", "participant_ids", "num_nodes",
    "lora_cache_optimal_adapter_size", "lora_cache_max_adapter_size",
    "lora_cache_gpu_memory_fraction", "lora_cache_host_memory_bytes", "lora_prefetch_dir",
    "decoding_mode", "executor_worker_path", "lookahead_window_size", "lookahead_ngram_size",
    "lookahead_verification_set_size", "medusa_choices", "eagle_choices", "gpu_weights_percent",
    "enable_context_fmha_fp32_acc", "multi_block_mode", "cuda_graph_mode",
    "cuda_graph_cache_size", "speculative_decoding_fast_logits", "guided_decoding_backend",
    "xgrammar_tokenizer_info_path",
]


# ---- templates ------------------------------------------------------------------------------
_ENGINE_RENAMES = {"max_tokens": "request_output_len", "top_k": "runtime_top_k", "top_p": "runtime_top_p",
                   "length_penalty": "len_penalty", "stream": "streaming"}
_ENGINE_NAMES = {n for n, *_ in TRTLLM_ENGINE_INPUTS}


def _maps(pairs: list[tuple[str, str]], kind: str) -> str:
    return "".join(f'      {kind} {{ key: "{k}" value: "{v}" }}\n' for k, v in pairs)


def _ensemble(engine: str) -> str:
    from inflight.frontends.triton.contract import ENSEMBLE_UNMAPPED, _io

    pre_in = [("QUERY", "text_input"), ("REQUEST_OUTPUT_LEN", "max_tokens"),
              ("EMBEDDING_BIAS_WORDS", "embedding_bias_words"),
              ("EMBEDDING_BIAS_WEIGHTS", "embedding_bias_weights"),
              ("DECODER_QUERY", "decoder_text_input"), ("PROMPT_TABLE_EXTRA_ID", "prompt_table_extra_id")]
    pre_out = [("INPUT_ID", "_INPUT_ID"), ("REQUEST_INPUT_LEN", "_REQUEST_INPUT_LEN"),
               ("REQUEST_OUTPUT_LEN", "_REQUEST_OUTPUT_LEN"), ("EMBEDDING_BIAS", "_EMBEDDING_BIAS")]
    eng_in = [("input_ids", "_INPUT_ID"), ("input_lengths", "_REQUEST_INPUT_LEN"),
              ("request_output_len", "_REQUEST_OUTPUT_LEN"), ("embedding_bias", "_EMBEDDING_BIAS")]
    skip = {"text_input", "max_tokens", "embedding_bias_words", "embedding_bias_weights",
            "decoder_text_input", "prompt_table_extra_id"}
    for name, *_ in FRONT_INPUTS:
        if name not in skip:
            target = _ENGINE_RENAMES.get(name, name)
            assert target in _ENGINE_NAMES, target
            eng_in.append((target, name))
    # the peer maps output_ids / sequence_length to TOKENS_BATCH / SEQUENCE_LENGTH; here
    # postprocessing reads the engine's text_delta, so the ensemble routes no token ids
    # (contract.ENSEMBLE_UNMAPPED; TOKENS_BATCH stays for postprocessing called on its own)
    eng_out = [(n, f"_{n}") for n, *_ in TRTLLM_ENGINE_OUTPUTS
               if n != "context_phase_params" and n not in ENSEMBLE_UNMAPPED]
    post_in = [(n, f"_{n}") for n, *_ in TRTLLM_POST_INPUTS[2:]]
    post_out = [("OUTPUT", "text_output")] + [(n, n) for n, *_ in TRTLLM_POST_OUTPUTS[1:]]
    steps = ('    {\n      model_name: "preprocessing"\n      model_version: -1\n'
             + _maps(pre_in, "input_map") + _maps(pre_out, "output_map")
             + f'    }},\n    {{\n      model_name: "{engine}"\n      model_version: -1\n'
             + _maps(eng_in, "input_map") + _maps(eng_out, "output_map")
             + '    },\n    {\n      model_name: "postprocessing"\n      model_version: -1\n'
             + _maps(post_in, "input_map") + _maps(post_out, "output_map") + "    }\n")
    return ('name: "ensemble"\nplatform: "ensemble"\nmax_batch_size: ${triton_max_batch_size}\n'
            + _io("input", FRONT_INPUTS) + _io("output", FRONT_OUTPUTS)
            + "ensemble_scheduling {\n  step [\n" + steps + "  ]\n}\n")


# Triton's dynamic batcher with its queue policy, where the peer has it (tensorrt_llm and
# preprocessing): Triton refuses a request over the cap on its own queue ("Exceeds maximum
# queue size"); the engine holds its waiting requests to the same cap.
DYNAMIC_BATCHING = ("dynamic_batching {\n  preferred_batch_size: [ ${triton_max_batch_size} ]\n"
                    "  max_queue_delay_microseconds: ${max_queue_delay_microseconds}\n"
                    "  default_queue_policy: { max_queue_size: ${max_queue_size} }\n}\n")


def _queued(config: str) -> str:
    """Insert DYNAMIC_BATCHING before the model's inputs."""
    return config.replace("input [\n", DYNAMIC_BATCHING + "input [\n", 1)


def templates() -> dict[str, str]:
    """The TensorRT-LLM profile's models (decoupled ones say `decoupled: true`; repo build
    turns that off for decoupled_mode=false)."""
    from inflight.frontends.triton.contract import (
        ENGINE_PARAMS,
        TOKENIZER_PARAMS,
        UNARY_PARAMS,
        _python_model,
    )

    # the queue cap lives in the queue policy only (params.raw_parameters hands it to the engine)
    engine_params = [k for k in ENGINE_PARAMS if k != "max_queue_size"] + PEER_ONLY_ENGINE_PARAMS
    return {
        "preprocessing": _queued(_python_model("preprocessing", TRTLLM_PRE_INPUTS, TRTLLM_PRE_OUTPUTS,
                                               TOKENIZER_PARAMS + ["add_special_tokens"], False)),
        "postprocessing": _python_model("postprocessing", TRTLLM_POST_INPUTS, TRTLLM_POST_OUTPUTS,
                                        TOKENIZER_PARAMS + ["engine_model", "skip_special_tokens"], False),
        "tensorrt_llm": _queued(_python_model("tensorrt_llm", TRTLLM_ENGINE_INPUTS, TRTLLM_ENGINE_OUTPUTS,
                                              engine_params, True, count="1")),
        "ensemble": _ensemble("tensorrt_llm"),
        "tensorrt_llm_bls": _python_model("tensorrt_llm_bls", BLS_INPUTS, FRONT_OUTPUTS,
                                          ["preprocessing_model", "engine_model", "postprocessing_model",
                                           "profile"] + TOKENIZER_PARAMS + ["decoupled_mode"], True),
        "ensemble_unary": _python_model("ensemble_unary", FRONT_INPUTS, FRONT_OUTPUTS,
                                        UNARY_PARAMS, False, count="1"),
    }


SHIMS = {
    "preprocessing": "from inflight.frontends.triton.trtllm_text_models import PreprocessingModel as TritonPythonModel",
    "postprocessing": "from inflight.frontends.triton.trtllm_text_models import PostprocessingModel as TritonPythonModel",
    "tensorrt_llm": "from inflight.frontends.triton.engine_model import TritonPythonModel",
    "tensorrt_llm_bls": "from inflight.frontends.triton.bls_model import TritonPythonModel",
    "ensemble_unary": "from inflight.frontends.triton.unary_model import TritonPythonModel",
}
