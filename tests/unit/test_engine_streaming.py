"""Streaming: deltas concatenate exactly to the non-streamed output (multi-byte characters
included), the asyncio interface yields the same, and aborting frees everything."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from inflight.sampling_params import SamplingParams

PROMPTS = [
    "Hello world",
    "你好，世界。今天天气很好。こんにちは、東京。",
    "emoji 😀🚀 👩\u200d💻 🇯🇵 ❤️",
    "def add(a, b):\n    return a + b\n",
    "안녕하세요. rare: ∑ Ωµ",
]
PARAMS = [
    SamplingParams(temperature=0.0, max_tokens=48, ignore_eos=True),
    SamplingParams(temperature=0.9, seed=17, max_tokens=48, ignore_eos=True, logprobs=1),
]


def _multibyte(text: str) -> bool:
    return any(ord(ch) > 0x7F and ch != "\ufffd" for ch in text)


@pytest.fixture(scope="module")
def reference(llm: Any) -> dict[tuple[int, int], Any]:
    """(prompt index, params index) -> the non-streamed CompletionOutput."""
    return {(i, k): llm.generate(p, sp)[0].outputs[0]
            for i, p in enumerate(PROMPTS) for k, sp in enumerate(PARAMS)}


def test_stream_deltas_concatenate_to_generate(llm: Any, reference: dict[tuple[int, int], Any]) -> None:
    multibyte = 0
    for (i, k), ref in reference.items():
        ups = list(llm.stream(PROMPTS[i], PARAMS[k]))
        assert [u.finished for u in ups] == [False] * (len(ups) - 1) + [True]
        assert len(ups) > 10  # really streamed, not one final blob
        text = "".join(u.text for u in ups)
        assert text == ref.text
        assert [t for u in ups for t in u.token_ids] == ref.token_ids
        assert text == llm.tokenizer.decode(ref.token_ids, skip_special_tokens=True)
        if PARAMS[k].logprobs is not None:
            assert sum(len(u.logprobs) for u in ups) == len(ref.token_ids)
        assert ups[-1].finish_reason == "length"
        multibyte += _multibyte(text)
    assert multibyte >= 3, "expected outputs with multi-byte characters"


def test_no_delta_splits_a_character(llm: Any, reference: dict[tuple[int, int], Any]) -> None:
    """A delta may hold U+FFFD only where the final text holds one at the same place."""
    for (i, k), ref in reference.items():
        pos = 0
        for u in llm.stream(PROMPTS[i], PARAMS[k]):
            assert ref.text[pos:pos + len(u.text)] == u.text
            pos += len(u.text)


def test_stream_with_stop_string_never_emits_it(llm: Any,
                                                reference: dict[tuple[int, int], Any]) -> None:
    ref = reference[(0, 0)].text
    stop = next(ref[a:a + 3] for a in range(8, len(ref) - 10)
                if "\ufffd" not in ref[a:a + 3] and ref.find(ref[a:a + 3]) == a)
    at = ref.find(stop)
    emitted = ""
    for u in llm.stream(PROMPTS[0], SamplingParams(temperature=0.0, max_tokens=48,
                                                   ignore_eos=True, stop=[stop])):
        emitted += u.text
        assert ref[:at].startswith(emitted)  # never beyond the cut, never a partial stop
    assert emitted == ref[:at]
    assert (u.finish_reason, u.stop_reason) == ("stop", stop)


def test_generate_async_matches_generate(llm: Any, reference: dict[tuple[int, int], Any]) -> None:
    async def one(i: int, k: int) -> tuple[str, list[int], str | None]:
        text, ids, reason = "", [], None
        async for u in llm.generate_async(PROMPTS[i], PARAMS[k]):
            text += u.text
            ids += u.token_ids
            reason = u.finish_reason if u.finished else reason
        return text, ids, reason

    async def main() -> list[tuple[str, list[int], str | None]]:
        return await asyncio.gather(*(one(i, k) for i, k in reference))

    for (key, ref), (text, ids, reason) in zip(reference.items(), asyncio.run(main()), strict=True):
        assert (text, ids, reason) == (ref.text, ref.token_ids, "length"), key


def test_abort_mid_stream_gives_final_abort_update(llm: Any,
                                                   assert_no_leak: Callable[..., None]) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
    full = llm.generate(PROMPTS[0], params)[0].outputs[0].token_ids
    ups = []
    for u in llm.stream(PROMPTS[0], params, request_id="to-abort"):
        ups.append(u)
        if len(ups) == 3:
            llm.abort("to-abort")
    last = ups[-1]
    assert last.finished and last.finish_reason == "abort"
    assert all(not u.finished for u in ups[:-1])
    ids = [t for u in ups for t in u.token_ids]
    assert 3 <= len(ids) < 200
    assert ids == full[:len(ids)]
    assert "".join(u.text for u in ups) == llm.tokenizer.decode(ids, skip_special_tokens=True)
    assert last.metrics is not None and last.metrics.num_output_tokens == len(ids)
    assert_no_leak(llm)
    # the id is free again
    again = list(llm.stream(PROMPTS[0], SamplingParams(max_tokens=2), request_id="to-abort"))
    assert again[-1].finish_reason == "length"


def test_breaking_out_of_a_stream_aborts(llm: Any, assert_no_leak: Callable[..., None]) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
    n = 0
    for _u in llm.stream(PROMPTS[1], params, request_id="to-break"):
        n += 1
        if n == 2:
            break
    assert_no_leak(llm)
    stream = llm.stream(PROMPTS[1], params, request_id="to-close")
    next(stream)
    stream.close()
    assert_no_leak(llm)


def test_abort_of_an_n_request_ends_every_sequence(llm: Any,
                                                   assert_no_leak: Callable[..., None]) -> None:
    params = SamplingParams(n=3, temperature=0.9, max_tokens=200, ignore_eos=True)
    finals = {}
    for u in llm.stream(PROMPTS[0], params, request_id="n-abort"):
        if not finals and not u.finished:
            llm.abort("n-abort")
        if u.finished:
            finals[u.index] = u.finish_reason
    assert finals == {0: "abort", 1: "abort", 2: "abort"}
    assert_no_leak(llm)


def test_async_close_and_cancel_abort(llm: Any, assert_no_leak: Callable[..., None]) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)

    async def close_early() -> int:
        agen = llm.generate_async(PROMPTS[2], params)
        n = 0
        async for _u in agen:
            n += 1
            if n == 2:
                break
        await agen.aclose()
        # let the abort's final update land while this event loop still runs
        await asyncio.to_thread(llm.loop.wait_idle)
        return n

    async def cancel_task() -> None:
        started = asyncio.Event()

        async def consume() -> None:
            async for _u in llm.generate_async(PROMPTS[3], params):
                started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.to_thread(llm.loop.wait_idle)

    assert asyncio.run(close_early()) == 2
    assert_no_leak(llm)
    asyncio.run(cancel_task())
    assert_no_leak(llm)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_async_consumer_whose_loop_closed_does_not_kill_the_engine(
        tiny_model_dir: Callable[[str], str]) -> None:
    from inflight.llm import LLM

    llm = LLM(model=tiny_model_dir("llama"), max_tokens_in_paged_kv_cache=1024, block_size=8,
              max_seq_len=256)
    try:
        async def leave_early() -> None:
            agen = llm.generate_async(PROMPTS[0], SamplingParams(max_tokens=200, ignore_eos=True))
            async for _u in agen:
                break
            # hold the engine between steps until this event loop is closed, as when a client
            # task ends and its loop goes away before the engine processes the abort
            llm.loop._cv.acquire()
            await agen.aclose()

        try:
            asyncio.run(leave_early())
        finally:
            llm.loop._cv.release()
        while llm.loop.alive and not llm.loop.wait_idle(0.05):
            pass
        assert llm.loop.alive, llm.loop.dead_reason
        out = llm.generate(PROMPTS[0], SamplingParams(max_tokens=2))[0].outputs[0]
        assert out.finish_reason == "length"
    finally:
        llm.shutdown()
