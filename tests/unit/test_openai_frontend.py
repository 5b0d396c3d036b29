"""The OpenAI front end's pieces without a server: tool parsers, request checks, sampling
mapping, error mapping, logprobs, chat templates, response parsing, the guard middleware."""

from __future__ import annotations

import asyncio
import json
import struct

import pytest

pytest.importorskip("uvicorn")

from inflight.frontends.openai.app import GuardMiddleware  # noqa: E402
from inflight.frontends.openai.chat_template import ChatTemplate  # noqa: E402
from inflight.frontends.openai.errors import OpenAIError, from_triton  # noqa: E402
from inflight.frontends.openai.logprobs import (  # noqa: E402
    CompletionLogprobs,
    TokenTexts,
    chat_logprobs,
)
from inflight.frontends.openai.protocol import ChatCompletionRequest, CompletionRequest  # noqa: E402
from inflight.frontends.openai.sampling import (  # noqa: E402
    check_chat,
    check_completion,
    sampling_parameters,
)
from inflight.frontends.openai.streaming import fan_in  # noqa: E402
from inflight.frontends.openai.tool_parsers import HermesParser, Llama3JsonParser  # noqa: E402
from inflight.frontends.openai.triton_client import build_request, parse_response  # noqa: E402
from inflight.frontends.openai.workers import default_workers  # noqa: E402
from pydantic import ValidationError  # noqa: E402

CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'


def _stream(parser_cls, text: str, step: int):
    p = parser_cls()
    events = []
    for i in range(0, len(text), step):
        events += p.feed(text[i:i + step])
    events += p.finish()
    content = "".join(e for e in events if isinstance(e, str))
    calls = [(e.name, json.loads(e.arguments)) for e in events if not isinstance(e, str)]
    return content, calls


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_hermes_streamed_in_any_split_equals_whole(step: int) -> None:
    text = f"Let me check. <tool_call>\n{CALL}\n</tool_call><tool_call>{CALL}</tool_call>"
    content, calls = _stream(HermesParser, text, step)
    assert content == "Let me check. "
    assert calls == [("get_weather", {"city": "Paris"})] * 2
    whole_content, whole_calls = HermesParser().parse(text)
    assert whole_content == content and len(whole_calls) == 2


def test_hermes_edge_cases() -> None:
    assert HermesParser().parse("no tools here <tool") == ("no tools here <tool", [])
    content, calls = HermesParser().parse("<tool_call>{not json}</tool_call>")
    assert calls == [] and content == "<tool_call>{not json}</tool_call>"
    content, calls = HermesParser().parse(f"<tool_call>{CALL}")  # eos before the close tag
    assert content is None and calls[0].name == "get_weather"
    _, calls = HermesParser().parse('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}'
                                    '</tool_call>')
    assert json.loads(calls[0].arguments) == {"a": 1}
    assert calls[0].to_openai()["type"] == "function" and calls[0].id.startswith("call_")


@pytest.mark.parametrize("step", [1, 4, 1000])
def test_llama3_json(step: int) -> None:
    text = ' <|python_tag|>{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {}}'
    content, calls = _stream(Llama3JsonParser, text, step)
    assert content == "" and calls == [("a", {"x": 1}), ("b", {})]
    assert _stream(Llama3JsonParser, "Hello {world}", step) == ("Hello {world}", [])
    assert _stream(Llama3JsonParser, '{"no": "name"}', step) == ('{"no": "name"}', [])


def test_request_validation() -> None:
    with pytest.raises(ValidationError):
        CompletionRequest(model="m", prompt="x", max_tokens=-1)
    with pytest.raises(ValidationError):
        ChatCompletionRequest(model="m", messages=[])
    with pytest.raises(ValidationError):
        CompletionRequest(model="m", prompt="x", stop=["ok", ""])
    req = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}], unknown_field=1)
    assert req.messages[0].for_template()["content"] == "ab"


def _err(fn, *args) -> OpenAIError:
    with pytest.raises(OpenAIError) as e:
        fn(*args)
    return e.value


def test_checks_name_the_param() -> None:
    assert _err(check_completion, CompletionRequest(model="m", prompt="x", n=5), 4, 8).param == "n"
    assert _err(check_completion, CompletionRequest(model="m", prompt=[1, 2]), 4, 8).param == "prompt"
    assert _err(check_completion, CompletionRequest(model="m", prompt="x", echo=True,
                                                    logprobs=1), 4, 8).param == "logprobs"
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    e = _err(check_chat, ChatCompletionRequest(**chat, response_format={"type": "json_object"}),
             4, True)
    assert e.status == 400 and e.param == "response_format" and "guided decoding" in e.message
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert _err(check_chat, ChatCompletionRequest(**chat, tools=tools), 4, False).param == \
        "tool_choice"
    assert _err(check_chat, ChatCompletionRequest(**chat, tools=tools, tool_choice="required"),
                4, True).param == "tool_choice"
    assert check_chat(ChatCompletionRequest(**chat, tools=tools), 4, True) is True
    assert check_chat(ChatCompletionRequest(**chat, tools=tools, tool_choice="none"), 4,
                      False) is False


def test_sampling_parameters() -> None:
    req = CompletionRequest(model="m", prompt="x", temperature=0.5, stop="END", seed=3,
                            top_k=4, ignore_eos=True, presence_penalty=0.1)
    sp = sampling_parameters(req, 7, logprobs=2, seed_offset=1)
    assert sp == {"temperature": 0.5, "presence_penalty": 0.1, "top_k": 4, "ignore_eos": True,
                  "max_tokens": 7, "stop": ["END"], "seed": 4, "logprobs": 2}
    chat = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}],
                                 max_completion_tokens=5)
    sp = sampling_parameters(chat, chat.output_limit(), logprobs=None, chat=True)
    assert sp == {"max_tokens": 5, "add_special_tokens": False}


def test_triton_errors() -> None:
    e = from_triton("sampling_parameters.min_tokens: must be <= max_tokens (2), got 5")
    assert (e.status, e.param) == (400, "min_tokens")
    e = from_triton("[StatusCode.INVALID_ARGUMENT] text_input: is empty; send a non-empty prompt")
    assert (e.status, e.param) == (400, "prompt") and e.message.startswith("text_input")
    assert from_triton("engine queue: exceeds maximum queue size 4").status == 503
    assert from_triton("RuntimeError: boom").status == 500
    body = OpenAIError(404, "no", param="model").body()["error"]
    assert body == {"message": "no", "type": "not_found_error", "param": "model", "code": None}


class _Tok:
    chat_template = None

    def decode(self, ids, skip_special_tokens=False):
        return {1: "a", 2: "b", 3: "c"}[ids[0]]


def test_logprobs_shapes() -> None:
    steps = [{"2": {"logprob": -0.5}, "1": {"logprob": -0.1}, "3": {"logprob": -2.0}}]
    texts = TokenTexts(_Tok())
    out = chat_logprobs(steps, 2, texts)
    assert out[0]["token"] == "b" and out[0]["logprob"] == -0.5 and out[0]["bytes"] == [98]
    assert [t["token"] for t in out[0]["top_logprobs"]] == ["a", "b"]
    acc = CompletionLogprobs(1, texts)
    first, second = acc.piece(steps), acc.piece([{"1": {"logprob": -0.2}}])
    assert first == {"tokens": ["b"], "token_logprobs": [-0.5], "top_logprobs": [{"a": -0.1}],
                     "text_offset": [0]}
    assert second["text_offset"] == [1]
    assert TokenTexts(None).get(5)[0] == "token_id:5"


def test_chat_template_errors() -> None:
    e = _err(lambda: ChatTemplate(_Tok(), "m").render([{"role": "user", "content": "x"}],
                                                       tools=None))
    assert e.param == "messages" and "--chat-template" in e.message

    class Tok(_Tok):
        def apply_chat_template(self, messages, **kw):
            assert kw["chat_template"] == "T" and kw["tokenize"] is False
            return "<s>" + messages[0]["content"]

    assert ChatTemplate(Tok(), "m", override="T").render(
        [{"role": "user", "content": "x"}], tools=None) == "<s>x"


def _bytes(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def test_parse_response() -> None:
    from tritonclient.grpc import service_pb2

    r = service_pb2.ModelInferResponse()
    for name in ("text_output", "finish_reason", "num_output_tokens", "logprobs"):
        r.outputs.add().name = name
    r.raw_output_contents.extend([_bytes("héllo".encode()), _bytes(b"length"),
                                  struct.pack("<I", 7), _bytes(b'[{"5": {"logprob": -1.0}}]')])
    r.parameters["triton_final_response"].bool_param = True
    p = parse_response(r)
    assert (p.text, p.finish_reason, p.num_output_tokens, p.final) == ("héllo", "length", 7, True)
    assert p.logprobs == [{"5": {"logprob": -1.0}}] and p.num_input_tokens is None


@pytest.mark.parametrize("logprobs", [False, True])
def test_build_request_equals_tritonclients(logprobs: bool) -> None:
    """The request protobuf built directly is the one tritonclient builds from InferInputs."""
    import numpy as np
    from tritonclient.grpc import InferInput
    from tritonclient.grpc._utils import _get_inference_request

    def tensor(name, value):
        dtype = "BOOL" if isinstance(value, bool) else "BYTES"
        x = InferInput(name, [1], dtype)
        x.set_data_from_numpy(np.array([value], dtype=bool) if dtype == "BOOL"
                              else np.array([value.encode()], dtype=object))
        return x

    sp = json.dumps({"max_tokens": 3, "stop": ["é"]})
    values = {"text_input": "héllo", "stream": True, "sampling_parameters": sp,
              "exclude_input_in_output": True, "return_finish_reason": True,
              "return_num_input_tokens": True, "return_num_output_tokens": True}
    if logprobs:
        values["return_logprobs"] = True
    ref = _get_inference_request(
        model_name="llm", inputs=[tensor(k, v) for k, v in values.items()], model_version="",
        request_id="cmpl-1", outputs=None, sequence_id=0, sequence_start=False,
        sequence_end=False, priority=0, timeout=None, parameters=None)
    built = build_request("llm", "héllo", sp, stream=True, logprobs=logprobs,
                          request_id="cmpl-1")
    assert built == ref
    assert build_request("llm", "x", "{}", stream=False, logprobs=False) \
        .raw_input_contents[1] == b"\x00"


def test_default_workers() -> None:
    assert [default_workers(c) for c in (1, 2, 7, 8, 16, 64)] == [1, 1, 1, 2, 4, 4]


def test_workers_option_reaches_the_serve_child() -> None:
    from inflight.frontends.openai.server import config_from_args, frontend_argv
    from inflight.tools.serve.launcher import build_argparser as build_parser

    a = build_parser().parse_args(["/repo", "--openai-port", "9000", "--openai-workers", "3"])
    assert frontend_argv(a)[-6:] == ["--workers", "3", "--max-body-bytes", str(8 << 20),
                                     "--max-n", "16"]
    assert config_from_args(a, "h:1", "127.0.0.1").workers == 3
    unset = build_parser().parse_args(["/repo", "--openai-port", "9000"])
    assert "--workers" not in frontend_argv(unset)  # the child picks its default
    assert config_from_args(unset, "h:1", "127.0.0.1").workers == default_workers()
    with pytest.raises(Exception, match="workers"):
        config_from_args(build_parser().parse_args(
            ["/repo", "--openai-port", "9000", "--openai-workers", "0"]), "h:1", "127.0.0.1")


def _call(app, headers: list[tuple[bytes, bytes]], body: bytes, path: str = "/v1/models"):
    sent: list[dict] = []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(m):
        sent.append(m)

    asyncio.run(GuardMiddleware(app, "k", 10)({"type": "http", "path": path, "headers": headers},
                                              receive, send))
    return sent


def test_guard_middleware() -> None:
    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})

    assert _call(app, [], b"")[0]["status"] == 401
    assert _call(app, [(b"authorization", b"Bearer nope")], b"")[0]["status"] == 401
    ok = [(b"authorization", b"Bearer k")]
    assert _call(app, ok, b"")[0]["status"] == 200
    assert _call(app, [], b"", path="/health")[0]["status"] == 200  # no key on /health
    assert _call(app, ok + [(b"content-length", b"11")], b"x" * 11)[0]["status"] == 413
    with pytest.raises(OpenAIError):  # chunked: counted while read, the route answers 413
        _call(app, ok, b"x" * 11)


def test_fan_in_interleaves_and_raises() -> None:
    async def gen(items, fail=False):
        for x in items:
            yield x
            await asyncio.sleep(0)
        if fail:
            raise OpenAIError(400, "bad")

    async def run(fail: bool):
        return [x async for x in fan_in([gen([1, 2]), gen([3], fail)])]

    assert sorted(asyncio.run(run(False))) == [(0, 1), (0, 2), (1, 3)]
    with pytest.raises(OpenAIError):
        asyncio.run(run(True))
