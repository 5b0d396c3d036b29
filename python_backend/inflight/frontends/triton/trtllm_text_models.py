"""`preprocessing` and `postprocessing` of the TensorRT-LLM profile: the peer's tensor names.

preprocessing: `QUERY` [B, 1] -> `INPUT_ID` [B, L] + `REQUEST_INPUT_LEN` [B, 1];
`BAD_WORDS_DICT` / `STOP_WORDS_DICT` -> `*_WORDS_IDS` [B, 2, N] (row 0 the concatenated ids,
row 1 the end offsets, -1 padded); `EMBEDDING_BIAS_WORDS` + `EMBEDDING_BIAS_WEIGHTS` ->
`EMBEDDING_BIAS` [B, V]; `REQUEST_OUTPUT_LEN`, `END_ID`, `PAD_ID` passed on (END_ID/PAD_ID
default to the tokenizer's).

postprocessing: `TOKENS_BATCH` [B, beam, L] + `SEQUENCE_LENGTH` [B, beam] -> `OUTPUT`
[B * beam] (1-D, as the peer shapes it). Inside the profile's ensemble it also gets the
engine's exact incremental `text_delta` (spaces and multi-byte characters survive streaming)
and forwards client cancellation (as the inflight profile's postprocessing does).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from inflight.errors import InvalidRequestError
from inflight.frontends.triton.convert import batch_size, prompt_text, word_list
from inflight.frontends.triton.front import embedding_bias_from_words, pad_ids
from inflight.frontends.triton.params import param_bool, raw_parameters
from inflight.frontends.triton.text_models import PostprocessingModel as _InflightPost
from inflight.frontends.triton.text_models import _TokenizerModel


def words_to_ids(tokenizer: Any, words: list[list[str]]) -> np.ndarray:
    """Per batch item a list of words -> [B, 2, N] int32 (the TensorRT-LLM word-list format)."""
    rows = []
    for item in words:
        ids: list[int] = []
        offsets: list[int] = []
        for w in item:
            toks = tokenizer(w, add_special_tokens=False)["input_ids"]
            if toks:
                ids += toks
                offsets.append(len(ids))
        rows.append((ids, offsets))
    width = max([1] + [max(len(i), len(o)) for i, o in rows])
    out = np.zeros((len(rows), 2, width), dtype=np.int32)
    out[:, 1, :] = -1
    for b, (ids, offsets) in enumerate(rows):
        out[b, 0, : len(ids)] = ids
        out[b, 1, : len(offsets)] = offsets
    return out


class PreprocessingModel(_TokenizerModel):
    def initialize(self, args: dict[str, Any]) -> None:
        super().initialize(args)
        params = raw_parameters(self.model_config)
        self.add_special_tokens = param_bool(params, "add_special_tokens", True)

    def convert(self, tensors: dict[str, np.ndarray]) -> list[Any]:
        from inflight.frontends.triton.convert import refuse_unsupported

        refuse_unsupported(tensors)
        if "QUERY" not in tensors:
            raise InvalidRequestError("text_input (QUERY)", "is required")
        if "REQUEST_OUTPUT_LEN" not in tensors:
            raise InvalidRequestError("max_tokens (REQUEST_OUTPUT_LEN)",
                                      "is required (an INT32 >= 1); there is no default")
        n = batch_size(tensors, "QUERY")
        tok = self.tokenizer
        ids = []
        for i in range(n):
            text = prompt_text(tensors, "QUERY", i)
            item = list(tok(text, add_special_tokens=self.add_special_tokens)["input_ids"])
            if not item:
                raise InvalidRequestError("QUERY", "tokenizes to no tokens; send a non-empty prompt")
            ids.append(item)
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        input_ids, lens = pad_ids(ids, pad)
        t = self.pb.Tensor
        renamed = {k.replace("EMBEDDING_BIAS_WORDS", "embedding_bias_words")
                   .replace("EMBEDDING_BIAS_WEIGHTS", "embedding_bias_weights"): v for k, v in tensors.items()}
        bias = embedding_bias_from_words(tok, renamed, n, len(tok))
        if bias is None:  # zeros = no bias; never a zero-size tensor (see serving.py)
            bias = np.zeros((n, 1), dtype=np.float32)
        out_len = tensors["REQUEST_OUTPUT_LEN"].reshape(n if tensors["REQUEST_OUTPUT_LEN"].size == n else 1, -1)
        end = tensors.get("END_ID")
        padt = tensors.get("PAD_ID")
        eos = tok.eos_token_id if tok.eos_token_id is not None else 0
        return [
            t("INPUT_ID", input_ids), t("REQUEST_INPUT_LEN", lens),
            t("DECODER_INPUT_ID", np.zeros((n, 1), dtype=np.int32)),
            t("REQUEST_DECODER_INPUT_LEN", np.zeros((n, 1), dtype=np.int32)),
            t("BAD_WORDS_IDS", words_to_ids(tok, [word_list(tensors, "BAD_WORDS_DICT", i) for i in range(n)])),
            t("STOP_WORDS_IDS", words_to_ids(tok, [word_list(tensors, "STOP_WORDS_DICT", i) for i in range(n)])),
            t("EMBEDDING_BIAS", bias),
            t("REQUEST_OUTPUT_LEN", np.broadcast_to(out_len[:, :1], (n, 1)).astype(np.int32)),
            t("OUT_END_ID", (end.reshape(-1, 1) if end is not None
                             else np.full((n, 1), eos)).astype(np.int32)),
            t("OUT_PAD_ID", (padt.reshape(-1, 1) if padt is not None
                             else np.full((n, 1), pad)).astype(np.int32)),
        ]


def decode_tokens_batch(tokenizer: Any, tokens: np.ndarray, lengths: np.ndarray | None,
                        skip_special_tokens: bool = True) -> np.ndarray:
    """TOKENS_BATCH [B, beam, L] (+ SEQUENCE_LENGTH [B, beam]) -> OUTPUT [B * beam] bytes."""
    a = tokens.reshape((1,) * (3 - tokens.ndim) + tokens.shape) if tokens.ndim < 3 else tokens
    lens = None if lengths is None else lengths.reshape(a.shape[0], -1)
    out = []
    for b in range(a.shape[0]):
        for k in range(a.shape[1]):
            n = int(lens[b, k]) if lens is not None else a.shape[2]
            out.append(tokenizer.decode(a[b, k, :n].tolist(), skip_special_tokens=skip_special_tokens)
                       .encode("utf-8"))
    return np.array(out, dtype=object)


class PostprocessingModel(_InflightPost):
    def initialize(self, args: dict[str, Any]) -> None:
        super().initialize(args)
        params = raw_parameters(self.model_config)
        self.skip_special_tokens = param_bool(params, "skip_special_tokens", True)

    def convert(self, tensors: dict[str, np.ndarray]) -> list[Any]:
        t = self.pb.Tensor
        if "text_delta" in tensors:  # inside the ensemble: the engine's exact text
            text = np.asarray(tensors["text_delta"], dtype=object).reshape(-1)
        elif "TOKENS_BATCH" in tensors:
            text = decode_tokens_batch(self.tokenizer, tensors["TOKENS_BATCH"],
                                       tensors.get("SEQUENCE_LENGTH"), self.skip_special_tokens)
        else:
            raise InvalidRequestError("TOKENS_BATCH", "is required")
        out = [t("OUTPUT", text)]
        for name in self.inputs:
            if name in tensors and name not in ("TOKENS_BATCH", "SEQUENCE_LENGTH", "text_delta",
                                                "engine_request_key"):
                out.append(t(name, tensors[name]))
        return out
