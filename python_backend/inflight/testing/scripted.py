"""A tiny Llama checkpoint that is an exact bigram machine: greedy decoding follows a script.

The tokenizer is word-level; every script piece (``<tool_call>``, a whole JSON body, ...)
is one added token. The weights make the residual stream the token's embedding: embeddings
are one-hot, every ``o_proj`` and ``down_proj`` is zero (attention and MLP add nothing),
and ``lm_head`` maps each token's one-hot to a large logit on its successor in the script.
So from the prompt's last token the model emits the rest of the script, then EOS. Tests use
it to get a real, parseable answer (a tool call) out of a served model without any
test-only code path in the server.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import transformers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import GenerationConfig, PreTrainedTokenizerFast

from inflight.testing.tiny import CHAT_TEMPLATE, _patch_tokenizer_config, _save_model

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
LOGIT = 30.0


def build_scripted_model(out_dir: str, script: Sequence[str], *, words: Sequence[str] = (),
                         chat_template: str | None = CHAT_TEMPLATE) -> str:
    """Write the checkpoint to ``out_dir``: after ``script[i]`` greedy decoding emits
    ``script[i + 1]``; after the last piece (and after any other token) EOS. ``words``
    are plain vocabulary for prompts (anything else is ``<unk>``). Returns ``out_dir``."""
    if len(set(script)) != len(script):
        raise ValueError("script pieces must be distinct (a bigram machine has one successor)")
    specials = [BOS, EOS, PAD, UNK]
    vocab = {t: i for i, t in enumerate(specials)}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.add_tokens([AddedToken(p, special=False, normalized=False) for p in script])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD, unk_token=UNK,
                                   clean_up_tokenization_spaces=False, model_max_length=512)
    if chat_template is not None:
        fast.chat_template = chat_template
    os.makedirs(out_dir, exist_ok=True)
    fast.save_pretrained(out_dir)
    _patch_tokenizer_config(out_dir)
    ids = [fast.convert_tokens_to_ids(p) for p in script]
    model = _bigram_model(len(fast), ids, fast.eos_token_id, fast.bos_token_id, fast.pad_token_id)
    model.generation_config = GenerationConfig(bos_token_id=fast.bos_token_id,
                                               eos_token_id=fast.eos_token_id,
                                               pad_token_id=fast.pad_token_id)
    _save_model(model, out_dir, None)
    return out_dir


@torch.no_grad()
def _bigram_model(vocab: int, chain: list[int], eos: int, bos: int, pad: int) -> torch.nn.Module:
    hidden = max(16, (vocab + 7) // 8 * 8)  # one-hot embeddings need hidden >= vocab
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        rms_norm_eps=1e-6, tie_word_embeddings=False, bos_token_id=bos, eos_token_id=eos,
        pad_token_id=pad, architectures=["LlamaForCausalLM"])
    model = transformers.LlamaForCausalLM(config).to(torch.float32)
    for p in model.parameters():
        p.zero_()
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
    model.model.embed_tokens.weight[:, :vocab].copy_(torch.eye(vocab))
    succ = {a: b for a, b in zip(chain, chain[1:])}
    head = model.lm_head.weight  # [vocab, hidden]: row j scores token j
    for i in range(vocab):
        head[succ.get(i, eos), i] = LOGIT
    # q/k/v stay non-zero so attention is well defined; o_proj = 0 drops its output
    for layer in model.model.layers:
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                     layer.mlp.gate_proj, layer.mlp.up_proj):
            proj.weight.normal_(0, 0.02)
    model.eval()
    return model
