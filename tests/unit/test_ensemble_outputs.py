"""Issue 13: what one `engine` response carries (no server: a fake pb). Each response holds
the tensors its caller reads and nothing else: the outputs the caller requested (an ensemble
step requests what its output_map routes), optional outputs only when their `return_*` flag
asked, `batch_index` / `sequence_index` only when there is more than one batch item /
sequence (as TensorRT-LLM's backend); and the ensembles route no token ids to
postprocessing, which forwards the engine's `text_delta`."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from inflight.frontends.triton import contract, trtllm_contract
from inflight.frontends.triton.base import read_inputs
from inflight.frontends.triton.engine_model import TritonPythonModel, requested_outputs
from inflight.frontends.triton.serving import ItemStream
from inflight.frontends.triton.text_models import postprocess_outputs
from inflight.outputs import RequestMetrics, SequenceUpdate

ENGINE_OUTPUTS = frozenset(n for n, *_ in contract.ENGINE_OUTPUTS)
TRTLLM_OUTPUTS = frozenset(n for n, *_ in trtllm_contract.TRTLLM_ENGINE_OUTPUTS)


class FakePb:
    @staticmethod
    def Tensor(name: str, arr: np.ndarray) -> tuple[str, np.ndarray]:  # noqa: N802
        return (name, np.asarray(arr))


class FakeTokenizer:
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(f"<{i}>" for i in ids)


def engine_model(declared: frozenset[str] = ENGINE_OUTPUTS) -> TritonPythonModel:
    m = TritonPythonModel.__new__(TritonPythonModel)  # no engine: build_outputs only
    m.pb, m.declared, m.tokenizer = FakePb(), declared, FakeTokenizer()
    m.serving = SimpleNamespace(exclude_input_in_output=True, max_beam_width=1)
    return m


def request_tensors(batch: int = 1, **flags: Any) -> dict[str, np.ndarray]:
    t = {"input_ids": np.array([[5, 6, 7]] * batch, dtype=np.int32),
         "input_lengths": np.full((batch, 1), 3, dtype=np.int32),
         "max_tokens": np.full((batch, 1), 4, dtype=np.int32)}
    for k, v in flags.items():
        t[k] = np.full((batch, 1), v, dtype=np.int32 if isinstance(v, int) and not isinstance(v, bool)
                       else bool)
    return t


def metrics(num_output_tokens: int) -> RequestMetrics:
    return RequestMetrics(arrival_time=1.0, first_scheduled_time=1.5, first_token_time=2.0,
                          finished_time=3.0, num_prompt_tokens=3,
                          num_output_tokens=num_output_tokens, num_cached_tokens=0,
                          num_preemptions=0)


def responses(model: TritonPythonModel, tensors: dict[str, np.ndarray],
              outputs: frozenset[str] | None = None, n_updates: int = 2) -> list[dict[str, np.ndarray]]:
    """Every response of every item of one request: a delta per update, the last one final."""
    out = []
    for key, item in enumerate(model.items(tensors)):
        item.outputs = outputs
        stream = ItemStream(call=None, item=item, engine_id=f"e{key}", key=100 + key,
                            prompt_ids=[5, 6, 7])
        for seq in range(item.params.n):
            for i in range(n_updates):
                last = i == n_updates - 1
                m = SequenceUpdate("r", seq, [40 + i], f"t{i}", logprobs=[{40 + i: -0.5}],
                                   finished=last, finish_reason="length" if last else None,
                                   cumulative_logprob=-0.5 * (i + 1),
                                   metrics=metrics(i + 1) if last else None)
                out.append(dict(model.build_outputs(stream, m)))
                stream.sent_first.add(seq)
    return out


def test_a_plain_streamed_response_carries_only_what_it_needs() -> None:
    rs = responses(engine_model(), request_tensors(stream=True))
    assert [sorted(r) for r in rs] == [
        ["engine_request_key", "output_ids", "sequence_length", "text_delta"],
        ["engine_request_key", "finish_reason", "output_ids", "sequence_length", "text_delta"]]
    assert rs[0]["output_ids"].tolist() == [[[40]]] and rs[0]["sequence_length"].tolist() == [[1]]
    assert rs[1]["text_delta"].tolist() == [[b"t1"]] and rs[1]["engine_request_key"].tolist() == [[100]]
    assert rs[1]["finish_reason"].tolist() == [[b"length"]]


def test_an_optional_output_is_sent_only_when_asked() -> None:
    plain = responses(engine_model(), request_tensors(stream=True))
    asked = responses(engine_model(), request_tensors(stream=True, return_log_probs=True,
                                                      return_num_input_tokens=True,
                                                      return_num_output_tokens=True))
    optional = {"output_log_probs", "cum_log_probs", "num_input_tokens", "num_output_tokens"}
    assert not optional & {n for r in plain for n in r}
    assert {"output_log_probs", "cum_log_probs", "num_input_tokens"} <= set(asked[0])
    assert optional <= set(asked[1])  # num_output_tokens: known on the final response
    assert asked[0]["output_log_probs"].tolist() == [[[-0.5]]]
    assert asked[1]["num_input_tokens"].tolist() == [[3]] and asked[1]["num_output_tokens"].tolist() == [[2]]


def test_batch_and_sequence_index_only_when_there_is_more_than_one() -> None:
    one = responses(engine_model(), request_tensors(stream=True))
    assert not {"batch_index", "sequence_index"} & {n for r in one for n in r}
    batch = responses(engine_model(), request_tensors(batch=2, stream=True))
    assert [int(r["batch_index"][0, 0]) for r in batch] == [0, 0, 1, 1]
    assert not any("sequence_index" in r for r in batch)
    n2 = responses(engine_model(), request_tensors(stream=True, num_return_sequences=2))
    assert [int(r["sequence_index"][0, 0]) for r in n2] == [0, 0, 1, 1]
    assert not any("batch_index" in r for r in n2)


def test_only_the_requested_outputs_are_built() -> None:
    step = frozenset({"text_delta", "engine_request_key", "finish_reason", "cum_log_probs"})
    rs = responses(engine_model(), request_tensors(stream=True, return_log_probs=True), outputs=step)
    assert [sorted(r) for r in rs] == [["cum_log_probs", "engine_request_key", "text_delta"],
                                       ["cum_log_probs", "engine_request_key", "finish_reason",
                                        "text_delta"]]
    # a non-streamed echo (exclude_input_in_output=false) still leads with the prompt
    rs = responses(engine_model(), request_tensors(exclude_input_in_output=False), n_updates=1,
                   outputs=frozenset({"text_delta", "output_ids"}))
    assert rs[0]["text_delta"].tolist() == [[b"<5><6><7>t0"]]
    assert rs[0]["output_ids"].tolist() == [[[5, 6, 7, 40]]]


def test_peer_perf_metrics_follow_the_flag_and_the_request() -> None:
    model = engine_model(TRTLLM_OUTPUTS)
    plain = responses(model, request_tensors(stream=True))
    assert not any("acceptance_rate" in r or "kv_cache_reused_blocks" in r for r in plain)
    asked = responses(model, request_tensors(stream=True, return_perf_metrics=True))
    assert {"acceptance_rate", "kv_cache_reused_blocks", "arrival_time_ns"} <= set(asked[0])
    only = responses(model, request_tensors(stream=True, return_perf_metrics=True),
                     outputs=frozenset({"text_delta", "acceptance_rate"}))
    assert [sorted(r) for r in only] == [["acceptance_rate", "text_delta"]] * 2
    kv = responses(model, request_tensors(stream=True, return_perf_metrics=True),
                   outputs=frozenset({"kv_cache_reused_blocks"}))
    assert [sorted(r) for r in kv] == [["kv_cache_reused_blocks"]] * 2


def test_requested_outputs_of_a_request() -> None:
    class Req:
        def __init__(self, names: list[str]) -> None:
            self.names = names

        def requested_output_names(self) -> list[str]:
            return self.names

    assert requested_outputs(Req(["text_delta", "engine_request_key"])) == {"text_delta",
                                                                          "engine_request_key"}
    assert requested_outputs(Req([])) is None  # nothing named: every declared output
    assert requested_outputs(object()) is None


def test_read_inputs_takes_the_declared_inputs_in_one_pass() -> None:
    class T:
        def __init__(self, name: str, arr: np.ndarray) -> None:
            self._name, self._arr = name, arr

        def name(self) -> str:
            return self._name

        def as_numpy(self) -> np.ndarray:
            return self._arr

    class Req:
        calls = 0

        def inputs(self) -> list[T]:
            Req.calls += 1
            return [T("text_delta", np.array([[b"x"]], dtype=object)),
                    T("engine_request_key", np.array([[3]], dtype=np.uint64))]

    got = read_inputs(None, Req(), ["text_delta", "finish_reason"])
    assert list(got) == ["text_delta"] and Req.calls == 1


def _maps(text: str, model: str, kind: str) -> dict[str, str]:
    step = re.search(rf'model_name: "{model}"\n(.*?)\n    }}', text, re.S)
    assert step is not None, model
    return dict(re.findall(rf'{kind} {{ key: "(\w+)" value: "(\w+)" }}', step.group(1)))


@pytest.mark.parametrize("profile", ["inflight", "trtllm"])
def test_the_ensemble_routes_no_token_ids_and_postprocessing_gets_what_it_reads(profile: str) -> None:
    if profile == "inflight":
        text, engine = contract.templates()["ensemble"], "engine"
    else:
        text, engine = trtllm_contract.templates()["ensemble"], "tensorrt_llm"
    produced = _maps(text, engine, "output_map")
    assert not {"output_ids", "sequence_length"} & set(produced)
    assert {"text_delta", "engine_request_key", "finish_reason", "batch_index",
            "sequence_index"} <= set(produced)
    post = _maps(text, "postprocessing", "input_map")
    assert set(post.values()) <= set(produced.values())  # every routed tensor has a producer
    assert post["text_delta"] == produced["text_delta"]
    assert post["engine_request_key"] == produced["engine_request_key"]
    # what postprocessing forwards from a minimal response: the text, and the final's reason
    final = {"text_delta": np.array([[b"hi"]], dtype=object),
             "engine_request_key": np.array([[1]], dtype=np.uint64),
             "finish_reason": np.array([[b"stop"]], dtype=object)}
    assert [n for n, _ in postprocess_outputs(None, final)] == ["text_output", "finish_reason"]
