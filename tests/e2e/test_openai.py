"""The OpenAI front end (`inflight openai`) against a real tritonserver, with the official
`openai` client.

One module-scoped tritonserver serves two `llm`-contract models: `llm` (tiny random Llama;
its steps slowed by STEP_DELAY_MS so a cancel always lands mid-generation) and `tool_llm`
(a scripted bigram checkpoint whose greedy answer to any chat is a Hermes tool call). One
front end process runs against it with an API key and the hermes tool-call parser.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

pytestmark = pytest.mark.e2e
pytest.importorskip("tritonclient.grpc")
openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")

from inflight.testing.procs import children, gone  # noqa: E402
from inflight.testing.repos import add_parameter  # noqa: E402
from inflight.testing.scripted import build_scripted_model  # noqa: E402
from inflight.testing.streams import metric, run_stream, wait_kv_idle, wait_metric_above  # noqa: E402
from inflight.testing.tiny import BOS, tiny_model_dir  # noqa: E402
from inflight.tools.repo import build  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

API_KEY = "test-key-123"
STEP_DELAY_MS = 3
TOOL_BODY = json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})
SCRIPT = ["<|assistant|>\n", "<tool_call>", TOOL_BODY, "</tool_call>"]
PROMPT = "The capital of France is"
MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Tell me about the sea"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _copy_llm_model(src_repo: Path, dst_repo: Path, name: str) -> None:
    shutil.copytree(src_repo / "llm", dst_repo / name)
    cfg = dst_repo / name / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace('name: "llm"', f'name: "{name}"', 1))


@pytest.fixture(scope="module")
def triton(triton_server_factory, tmp_path_factory):
    repo = tmp_path_factory.mktemp("openai_repo")
    opts = {"max_tokens_in_paged_kv_cache": "4096", "max_seq_len": "512"}
    build(tiny_model_dir("llama"), str(repo), "llm", opts)
    add_parameter(repo / "llm" / "config.pbtxt", "fault_injection_step_delay_ms",
                  str(STEP_DELAY_MS))
    scripted = tmp_path_factory.mktemp("scripted")
    build_scripted_model(str(scripted), SCRIPT, words=["Tell", "me", "about", "the", "sea"])
    tool_repo = tmp_path_factory.mktemp("tool_repo")
    build(str(scripted), str(tool_repo), "llm", opts)
    _copy_llm_model(tool_repo, repo, "tool_llm")
    running = triton_server_factory(repo, ready_timeout=240,
                                    env={"INFLIGHT_ALLOW_FAULT_INJECTION": "1"})
    yield running
    running.stop()


def _start_frontend(triton, log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """`python -m inflight.frontends.openai` on a free port, ready (/health 200)."""
    port = _free_port()
    env = {**os.environ, "OPENAI_TEST_KEY": API_KEY}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "inflight.frontends.openai", "--triton-url", triton.grpc_url,
             "--port", str(port), "--api-key-env", "OPENAI_TEST_KEY",
             "--tool-call-parser", "hermes", "--max-body-bytes", "65536", *extra],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, url


def _stop_frontend(proc: subprocess.Popen, log: Path) -> None:
    proc.terminate()
    try:  # uvicorn re-raises the SIGTERM it handled once it shut down cleanly
        assert proc.wait(30) in (0, -15), log.read_text()
        assert "Traceback" not in log.read_text(), log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()


def _workers_of(pid: int) -> list[int]:
    """The uvicorn worker processes of ``pid`` (multiprocessing's resource tracker is not one)."""
    return sorted(c for c, p in children(pid).items() if "spawn_main" in p.cmdline)


@pytest.fixture(scope="module")
def frontend(triton, tmp_path_factory):
    """One front end process (--workers 1); yields its base URL."""
    log = tmp_path_factory.mktemp("openai_log") / "openai.log"
    proc, url = _start_frontend(triton, log, "--workers", "1")
    yield url
    _stop_frontend(proc, log)


@pytest.fixture(scope="module")
def frontend_workers(triton, tmp_path_factory):
    """The front end with 2 worker processes; yields its base URL."""
    log = tmp_path_factory.mktemp("openai_log") / "openai-workers.log"
    proc, url = _start_frontend(triton, log, "--workers", "2")
    assert len(_workers_of(proc.pid)) == 2, log.read_text()
    yield url
    _stop_frontend(proc, log)


@pytest.fixture(scope="module")
def client(frontend):
    return openai.OpenAI(base_url=f"{frontend}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(tiny_model_dir("llama"))


def _direct(triton, prompt: str, params: dict) -> tuple[str, int, int]:
    """The same request straight to the `llm` model over gRPC: (text, input, output tokens)."""
    inputs = {"text_input": np.array([prompt.encode()], dtype=object),
              "sampling_parameters": np.array([json.dumps(params).encode()], dtype=object),
              "stream": np.array([False]), "return_num_input_tokens": np.array([True]),
              "return_num_output_tokens": np.array([True])}
    out = run_stream(triton.grpc_url, "llm", inputs, quiet=0.0)
    out.check()
    last = out.outputs[-1]
    return (out.text, int(last["num_input_tokens"].reshape(-1)[0]),
            int(last["num_output_tokens"].reshape(-1)[0]))


def _post(url: str, path: str, body: bytes, key: str | None = API_KEY,
          ctype: str = "application/json") -> tuple[int, dict]:
    headers = {"Content-Type": ctype}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _alive(client) -> None:
    """The server still answers a normal request."""
    r = client.completions.create(model="llm", prompt=PROMPT, max_tokens=2, temperature=0)
    assert r.usage.completion_tokens >= 1


# ------------------------------------------------------------------------ models, health


def test_models_and_health(client, frontend) -> None:
    ids = {m.id for m in client.models.list().data}
    assert {"llm", "tool_llm"} <= ids
    assert client.models.retrieve("llm").id == "llm"
    with urllib.request.urlopen(f"{frontend}/health", timeout=5) as r:
        assert r.status == 200


# ------------------------------------------------------------------------ completions


def test_completion_matches_the_engine(client, triton) -> None:
    r = client.completions.create(model="llm", prompt=PROMPT, max_tokens=12, temperature=0)
    text, n_in, n_out = _direct(triton, PROMPT, {"max_tokens": 12, "temperature": 0})
    assert r.choices[0].text == text
    assert r.usage.prompt_tokens == n_in and r.usage.completion_tokens == n_out
    assert r.usage.total_tokens == n_in + n_out
    assert r.choices[0].finish_reason in ("length", "stop")
    assert r.object == "text_completion" and r.id.startswith("cmpl-")


def test_completion_stream_equals_non_stream(client) -> None:
    kw = {"model": "llm", "prompt": PROMPT, "max_tokens": 16, "temperature": 0}
    full = client.completions.create(**kw)
    chunks = list(client.completions.create(**kw, stream=True,
                                            stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full.choices[0].text
    assert len(chunks) >= 3  # really streamed
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == \
        full.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == \
        full.choices[0].finish_reason


def test_completion_echo_and_logprobs(client) -> None:
    r = client.completions.create(model="llm", prompt=PROMPT, max_tokens=6, temperature=0,
                                  echo=True)
    assert r.choices[0].text.startswith(PROMPT) and len(r.choices[0].text) > len(PROMPT)
    r = client.completions.create(model="llm", prompt=PROMPT, max_tokens=6, temperature=0,
                                  logprobs=2, extra_body={"ignore_eos": True})
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == r.usage.completion_tokens == 6
    for lp_tok, tops in zip(lp.token_logprobs, lp.top_logprobs):
        # 2 entries, fewer when two tokens decode to the same text (OpenAI keys them by text)
        assert 1 <= len(tops) <= 2 and lp_tok == pytest.approx(max(tops.values()))  # greedy
    assert lp.text_offset == sorted(lp.text_offset)


def test_stop_strings(client) -> None:
    base = client.completions.create(model="llm", prompt=PROMPT, max_tokens=24, temperature=0)
    text = base.choices[0].text
    stop = next(text[i:i + 3] for i in range(2, len(text) - 3)
                if text[i:i + 3].strip() == text[i:i + 3] and text.find(text[i:i + 3]) == i)
    for s in (stop, [stop, "\u2603never"]):
        r = client.completions.create(model="llm", prompt=PROMPT, max_tokens=24,
                                      temperature=0, stop=s)
        assert r.choices[0].text == text[:text.find(stop)]
        assert r.choices[0].finish_reason == "stop"


def test_n_and_seed(client) -> None:
    kw = {"model": "llm", "prompt": PROMPT, "max_tokens": 10, "temperature": 1.0, "seed": 7,
          "n": 2, "extra_body": {"ignore_eos": True}}
    a = client.completions.create(**kw)
    b = client.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.text for c in a.choices] == [c.text for c in b.choices]  # seeded: reproducible
    assert a.usage.completion_tokens == 20  # both choices counted
    one = client.completions.create(**{**kw, "n": 1})
    assert one.choices[0].text == a.choices[0].text  # choice j uses seed + j
    streamed: dict[int, str] = {0: "", 1: ""}
    for c in client.completions.create(**kw, stream=True):
        for ch in c.choices:
            streamed[ch.index] += ch.text
    assert [streamed[0], streamed[1]] == [c.text for c in a.choices]


def test_batch_of_prompts(client) -> None:
    r = client.completions.create(model="llm", prompt=[PROMPT, "Once upon"], max_tokens=4,
                                  temperature=0, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text and r.choices[2].text == r.choices[3].text


# ------------------------------------------------------------------------ chat


def test_chat_template_and_usage(client, tokenizer) -> None:
    r = client.chat.completions.create(model="llm", messages=MESSAGES, max_tokens=10,
                                       temperature=0)
    rendered = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert rendered.startswith(BOS)
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id
    assert r.usage.prompt_tokens == len(ids)  # exactly one BOS: the template's
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("length", "stop")
    assert r.object == "chat.completion"


def test_chat_stream_equals_non_stream(client) -> None:
    kw = {"model": "llm", "messages": MESSAGES, "max_completion_tokens": 16, "temperature": 0}
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_logprobs(client) -> None:
    r = client.chat.completions.create(model="llm", messages=MESSAGES, max_tokens=5,
                                       temperature=0, logprobs=True, top_logprobs=3,
                                       extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 5
    for t in content:
        assert len(t.top_logprobs) == 3
        assert t.logprob == pytest.approx(t.top_logprobs[0].logprob)  # greedy: the best
        assert t.top_logprobs[0].token == t.token
    streamed = [t for c in client.chat.completions.create(
        model="llm", messages=MESSAGES, max_tokens=5, temperature=0, logprobs=True,
        top_logprobs=3, stream=True) if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]


def test_chat_seed_and_n(client) -> None:
    kw = {"model": "llm", "messages": MESSAGES, "max_tokens": 8, "temperature": 0.9,
          "seed": 11, "n": 2}
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1]


# ------------------------------------------------------------------------ tool calls


def _check_call(call) -> None:
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_tool_call_round_trip(client) -> None:
    msgs = [{"role": "user", "content": "Tell me about the sea"}]
    r = client.chat.completions.create(model="tool_llm", messages=msgs, tools=TOOLS,
                                       max_tokens=10, temperature=0)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert len(choice.message.tool_calls) == 1
    _check_call(choice.message.tool_calls[0])
    # the tool's answer goes back; the template renders the assistant's call and the result
    call = choice.message.tool_calls[0]
    msgs += [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
             {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    again = client.chat.completions.create(model="tool_llm", messages=msgs, tools=TOOLS,
                                           max_tokens=10, temperature=0)
    assert again.usage.prompt_tokens > r.usage.prompt_tokens
    _check_call(again.choices[0].message.tool_calls[0])


def test_tool_call_streamed(client) -> None:
    chunks = list(client.chat.completions.create(
        model="tool_llm", messages=[{"role": "user", "content": "the sea"}], tools=TOOLS,
        max_tokens=10, temperature=0, stream=True))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(deltas) == 1 and deltas[0].index == 0
    _check_call(deltas[0])
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_tools_without_parsing_when_tool_choice_none(client) -> None:
    r = client.chat.completions.create(model="tool_llm", messages=[{"role": "user",
                                       "content": "sea"}], tools=TOOLS, tool_choice="none",
                                       max_tokens=10, temperature=0)
    assert r.choices[0].message.tool_calls is None
    assert "<tool_call>" in r.choices[0].message.content  # the raw text, unparsed


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("case", ["malformed-json", "unknown-model", "negative-max-tokens",
                                  "n-above-cap", "response-format", "no-api-key",
                                  "oversized-body", "missing-messages"])
def test_bad_input(frontend, client, case: str) -> None:
    good = {"model": "llm", "messages": MESSAGES, "max_tokens": 2}
    path, key = "/v1/chat/completions", API_KEY
    body = json.dumps(good).encode()
    want_status, want_param = 400, None
    if case == "malformed-json":
        body = b'{"model": "llm", "messages": ['
    elif case == "unknown-model":
        body, want_status, want_param = json.dumps({**good, "model": "gpt-9"}).encode(), 404, \
            "model"
    elif case == "negative-max-tokens":
        body, want_param = json.dumps({**good, "max_tokens": -1}).encode(), "max_tokens"
    elif case == "n-above-cap":
        body, want_param = json.dumps({**good, "n": 17}).encode(), "n"
    elif case == "response-format":
        body = json.dumps({**good, "response_format": {"type": "json_object"}}).encode()
        want_param = "response_format"
    elif case == "no-api-key":
        key, want_status = None, 401
    elif case == "oversized-body":
        body = json.dumps({**good, "messages": [{"role": "user", "content": "x" * 70000}]}).encode()
        want_status = 413
    elif case == "missing-messages":
        body, want_param = json.dumps({"model": "llm"}).encode(), "messages"
    status, err = _post(frontend, path, body, key)
    assert status == want_status, err
    assert set(err["error"]) >= {"message", "type", "param", "code"}, err
    assert err["error"]["message"]
    if want_param:
        assert err["error"]["param"] == want_param, err
    _alive(client)


def test_engine_error_names_the_param(frontend, client) -> None:
    """A check only the engine makes (min_tokens <= max_tokens) comes back as a 400 naming
    the field."""
    status, err = _post(frontend, "/v1/completions", json.dumps(
        {"model": "llm", "prompt": PROMPT, "max_tokens": 2, "min_tokens": 5}).encode())
    assert status == 400 and err["error"]["param"] == "min_tokens", err
    _alive(client)


# ------------------------------------------------------------------------ disconnect, load


@pytest.mark.parametrize("front", ["frontend", "frontend_workers"])
def test_disconnect_mid_stream_frees_kv(front: str, triton, request) -> None:
    frontend = request.getfixturevalue(front)
    wait_kv_idle(triton.metrics_url)
    def count(reason: str) -> float:
        return metric(triton.metrics_url, "inflight_request_success_total",
                      finish_reason=reason, model="llm")

    before, length_before = count("abort"), count("length")
    host = urlsplit(frontend)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
    body = json.dumps({"model": "llm", "prompt": PROMPT, "max_tokens": 400, "ignore_eos": True,
                       "stream": True})
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json",
                                                   "Authorization": f"Bearer {API_KEY}"})
    resp = conn.getresponse()
    assert resp.status == 200
    events = 0
    while events < 3:
        line = resp.readline()
        assert line, "the stream ended early"
        events += line.startswith(b"data: {")
    conn.sock.shutdown(socket.SHUT_RDWR)  # the client goes away mid-stream
    conn.close()
    wait_metric_above(triton.metrics_url, "inflight_request_success_total", before,
                      timeout=30, finish_reason="abort", model="llm")
    wait_kv_idle(triton.metrics_url)  # every KV block freed, no request active
    assert count("abort") == before + 1
    assert count("length") == length_before, "the request ran to its end"


def test_many_concurrent_streams(frontend) -> None:
    async def run() -> list[str]:
        c = openai.AsyncOpenAI(base_url=f"{frontend}/v1", api_key=API_KEY, max_retries=0,
                               timeout=300)

        async def one() -> str:
            text = ""
            async for ch in await c.completions.create(model="llm", prompt=PROMPT, max_tokens=8,
                                                       temperature=0, stream=True):
                text += ch.choices[0].text if ch.choices else ""
            return text

        try:
            return await asyncio.gather(*[one() for _ in range(48)])
        finally:
            await c.close()

    texts = asyncio.run(run())
    assert len(set(texts)) == 1 and texts[0]


def _load(url: str, n: int, max_tokens: int) -> list:
    from inflight.client.openai_load import run_openai

    traces, _ = asyncio.run(run_openai(url, "llm", [PROMPT] * n, [max_tokens] * n,
                                       concurrency=n, api_key=API_KEY))
    return traces


def test_load_generator_against_the_front_end(frontend) -> None:
    """bench serve --endpoint openai's generator: every request complete with the engine's
    token count, at least one chunk and at most one per token (how many exactly depends on
    the `llm` model coalescing responses under load; exact counting is tested in
    tests/unit/test_openai_load.py against a scripted server)."""
    traces = _load(frontend, 6, 12)
    assert [(t.error, t.done, t.output_tokens) for t in traces] == [(None, True, 12)] * 6
    assert all(1 <= len(t.times) <= 12 for t in traces), [len(t.times) for t in traces]
    assert all(t.sent < t.times[0] and t.times == sorted(t.times) for t in traces)


def test_workers_serve_requests(frontend_workers) -> None:
    traces = _load(frontend_workers, 24, 8)
    assert [(t.error, t.done, t.output_tokens) for t in traces] == [(None, True, 8)] * 24
    c = openai.OpenAI(base_url=f"{frontend_workers}/v1", api_key=API_KEY, max_retries=0)
    r = c.chat.completions.create(model="llm", messages=MESSAGES, max_tokens=4, temperature=0)
    assert r.usage.completion_tokens == 4


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_die_with_the_parent(triton, tmp_path, sig) -> None:
    """No worker outlives the parent, whatever ends it; their requests leave nothing in the
    engine."""
    log = tmp_path / "openai.log"
    proc, url = _start_frontend(triton, log, "--workers", "2")
    try:
        workers = _workers_of(proc.pid)
        assert len(workers) == 2, log.read_text()
        assert [t.error for t in _load(url, 4, 4)] == [None] * 4
        proc.send_signal(sig)
        deadline = time.monotonic() + 60
        while not all(gone(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(gone(w) for w in workers), log.read_text()
        assert proc.wait(30) in ((0, -15) if sig == signal.SIGTERM else (-9,)), log.read_text()
        wait_kv_idle(triton.metrics_url)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


LAUNCHER = """
import sys
from inflight.frontends.openai.child import OpenAIChild
from inflight.tools.serve.launcher import build_argparser
args = build_argparser().parse_args(["/unused", "--openai-port", sys.argv[2], "--openai-workers", "2"])
child = OpenAIChild(args, sys.argv[1])
assert child.wait_ready(), "front end not ready"
print(child.proc.pid, flush=True)
sys.stdin.read()  # until killed
"""


def test_front_end_dies_with_a_killed_launcher(triton, tmp_path) -> None:
    """`inflight serve --openai-port`: a SIGKILLed launcher leaves no front end (its supervisor
    and workers), like its tritonserver; the requests leave nothing in the engine."""
    port = _free_port()
    log = tmp_path / "launcher.log"
    with open(log, "wb") as err:
        launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, triton.grpc_url, str(port)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
    front, workers = None, []
    try:
        line = launcher.stdout.readline()
        assert line.strip().isdigit(), log.read_text()
        front = int(line)
        workers = _workers_of(front)
        assert len(workers) == 2, log.read_text()
        assert [t.error for t in _load(f"http://127.0.0.1:{port}", 4, 4)] == [None] * 4
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 60
        while not all(gone(p) for p in [front, *workers]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert all(gone(p) for p in [front, *workers]), log.read_text()
        wait_kv_idle(triton.metrics_url)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        for pid in [p for p in (front, *workers) if p is not None and not gone(p)]:
            os.kill(pid, signal.SIGKILL)  # a failed run leaves no orphan behind either
