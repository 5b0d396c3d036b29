"""Tiny checkpoints trained for a few hundred steps on the tokenizer corpus (CPU, seconds).

Random tiny models (:mod:`inflight.testing.tiny`) are chaotic: their logits move a lot under
any perturbation of the weights, so they say little about quantization error. A briefly
trained model has the smoother structure of a real one, so quantization accuracy tests
(prompt-logit cosine, greedy agreement) measure the format, not the noise. Cached like the
tiny models under ``inflight.env.cache_dir()/trained``.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import torch

from inflight import env
from inflight.testing import tiny

STEPS = 120
SEQ = 48
BATCH = 8
LR = 3e-3
HELD_OUT = "the scheduler reads the prompt again before noon. the kernel frees some memory at once."


def _batches(tok, seed: int) -> torch.Tensor:  # type: ignore[no-untyped-def]
    text = "\n".join(tiny.tokenizer_corpus.corpus(num_lines=800, seed=seed))
    ids = torch.tensor(tok(text)["input_ids"])
    n = (ids.numel() - 1) // SEQ
    return ids[: n * SEQ + 1]


def train_tiny_model(family: str, out_dir: str, seed: int = 0) -> str:
    """Build the tiny ``family`` model at ``out_dir`` and train it (next-token loss)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tiny.build_tiny_model(family, out_dir, seed)
    tok = AutoTokenizer.from_pretrained(out_dir)
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    with torch.no_grad():  # start from the usual small init, not the tiny models' wide one
        init = torch.Generator().manual_seed(seed)
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.normal_(0.0, 0.05, generator=init)
    ids = _batches(tok, 99 + seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(STEPS):
            starts = torch.randint(0, ids.numel() - SEQ - 1, (BATCH,), generator=gen)
            x = torch.stack([ids[s: s + SEQ] for s in starts.tolist()])
            loss = model(input_ids=x, labels=x).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    tiny._save_model(model, out_dir, None)
    return out_dir


def trained_model_dir(family: str = "llama", seed: int = 0) -> str:
    """Path of a cached trained tiny ``family`` checkpoint, training it on first use."""
    tiny.check_family(family)
    root = os.path.join(env.cache_dir(), "trained")
    final = os.path.join(root, f"{family}-{seed}-{STEPS}-{tiny.builder_version()}")
    if os.path.isdir(final):
        return final
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{family}-{seed}-", dir=root)
    try:
        train_tiny_model(family, tmp, seed)
        tiny._make_readable(tmp)
        os.replace(tmp, final)
    except OSError:
        if not os.path.isdir(final):
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
