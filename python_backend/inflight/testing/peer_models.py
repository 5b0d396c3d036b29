"""Checkpoints for running the peers' own tests (docs/compatibility.md).

``build_sentence_model``: a scripted bigram checkpoint (testing/scripted.py) whose greedy
answer to vllm_backend's test prompt "In this example," is a plain 30-word sentence, with a
logit scale that leaves the chosen token's logprob near -0.06 (not 0.0): vllm_backend's
additional-outputs test checks that the output is a sentence (spaces) and that the
cumulative logprob changes on every response, which a random tiny model cannot satisfy.

    python -m inflight.testing.peer_models OUT_DIR
"""

from __future__ import annotations

import sys

from inflight.testing import scripted

SENTENCE = ("we show how a served model answers with one plain sentence that has many words and "
            "spaces so clients can read it back later while further text follows here").split()


def build_sentence_model(out_dir: str) -> str:
    old = scripted.LOGIT
    scripted.LOGIT = 1.0  # x the RMS-normed one-hot (~6): chosen logprob about -0.06
    try:
        return scripted.build_scripted_model(out_dir, ["example,", *SENTENCE], words=["In", "this"])
    finally:
        scripted.LOGIT = old


if __name__ == "__main__":
    print(build_sentence_model(sys.argv[1]))
