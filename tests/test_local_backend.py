"""The `local` backend on a real (tiny, random) transformers model: caching, streaming, KV prefix reuse,
stop strings, seeds, usage, cancellation, and that generation never blocks the event loop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from engine.backends.base import ChatRequest, Message, Sampling, get_backend
from engine.backends.local import LocalBackend
from engine.errors import BackendUnavailableError


def _req(*texts: str, max_tokens: int = 12, temperature: float = 0.0, seed: int | None = None,
         stop: list[str] | None = None) -> ChatRequest:
    roles = ["user", "assistant"]
    return ChatRequest(system="You are a helpful travel booking assistant.",
                       messages=[Message(role=roles[i % 2], content=t) for i, t in enumerate(texts)],  # type: ignore[misc]
                       sampling=Sampling(temperature=temperature, max_tokens=max_tokens, seed=seed, stop=stop))


@pytest.fixture
def backend(tiny_model_dir: Path) -> LocalBackend:
    b = get_backend("local", model=str(tiny_model_dir))
    assert isinstance(b, LocalBackend)
    b.loaded().prefixes.clear()
    return b


def test_model_is_loaded_once_per_path_device_dtype(tiny_model_dir: Path) -> None:
    a = LocalBackend(model=str(tiny_model_dir)).loaded()
    b = LocalBackend(model=str(tiny_model_dir) + "/").loaded()
    c = LocalBackend(model=str(tiny_model_dir), dtype="bfloat16").loaded()
    assert a is b and a is not c
    assert str(c.model.dtype) == "torch.bfloat16"


async def test_complete_counts_tokens(backend: LocalBackend) -> None:
    req = _req("I want to go to Lisbon", max_tokens=7)
    r = await backend.complete(req)
    assert r.backend == "local" and r.latency_s > 0
    assert r.usage.input_tokens == len(backend.render_prompt(req)) and 0 < r.usage.output_tokens <= 7
    assert r.finish_reason in ("stop", "length")
    assert (await backend.complete(req)).text == r.text  # greedy is deterministic


async def test_stream_yields_tokens_then_the_result(backend: LocalBackend) -> None:
    req = _req("Book me a hotel in Rome", max_tokens=16)
    events = [e async for e in backend.stream(req)]
    deltas = [e.delta for e in events if e.delta]
    result = events[-1].result
    assert result is not None and len(deltas) >= 2
    assert "".join(deltas).strip() == result.text
    assert result.ttft_s is not None and 0 < result.ttft_s <= result.latency_s
    assert result.text == (await backend.complete(req)).text


async def test_kv_prefix_reuse_gives_the_same_reply(backend: LocalBackend, tiny_model_dir: Path) -> None:
    """A later turn reuses the earlier turn's KV cache, and the reply is exactly the uncached one."""
    first = _req("Hi, I'd like to plan a trip to Kyoto in October.", max_tokens=10)
    r1 = await backend.complete(first)
    assert backend.last_prefix_hit == 0
    second = _req("Hi, I'd like to plan a trip to Kyoto in October.", r1.text or "Sure.", "Two people, 3000 dollars.",
                  max_tokens=10)
    r2 = await backend.complete(second)
    assert backend.last_prefix_hit >= len(backend.render_prompt(first)) - 2  # the whole first prompt, or nearly
    uncached = LocalBackend(model=str(tiny_model_dir), prefix_cache=False)
    assert (await uncached.complete(second)).text == r2.text
    assert uncached.last_prefix_hit == 0


async def test_stop_strings_cut_the_reply(backend: LocalBackend) -> None:
    full = (await backend.complete(_req("Tell me about Bali", max_tokens=24, temperature=1.0, seed=3))).text
    assert len(full) >= 8, full
    stop = full[len(full) // 2: len(full) // 2 + 3]
    cut = await backend.complete(_req("Tell me about Bali", max_tokens=24, temperature=1.0, seed=3, stop=[stop]))
    assert cut.text == full[: full.find(stop)].strip() and cut.finish_reason == "stop"
    assert cut.usage.output_tokens < 24


async def test_sampling_seed_is_reproducible(backend: LocalBackend) -> None:
    a = await backend.complete(_req("Surprise me", max_tokens=12, temperature=1.0, seed=7))
    b = await backend.complete(_req("Surprise me", max_tokens=12, temperature=1.0, seed=7))
    assert a.text == b.text


async def test_generation_runs_off_the_event_loop(backend: LocalBackend) -> None:
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    t0 = time.perf_counter()
    await backend.complete(_req("A long answer please", max_tokens=60))
    elapsed = time.perf_counter() - t0
    stop.set()
    await task
    assert ticks >= max(3, int(elapsed / 0.005 * 0.2))  # the loop kept running while the model worked


async def test_leaving_a_stream_stops_generation(backend: LocalBackend) -> None:
    loaded = backend.loaded()
    agen = backend.stream(_req("Write a very long story", max_tokens=2000))
    async for e in agen:
        if e.delta:
            break
    await agen.aclose()
    t0 = time.perf_counter()
    got = loaded.lock.acquire(timeout=20)  # the worker finishes at the next token and releases the model
    assert got and time.perf_counter() - t0 < 20
    loaded.lock.release()


def test_missing_model_dir_says_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError, match="is not a model directory; give a directory with config.json"):
        LocalBackend(model=str(tmp_path / "nope")).loaded()
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackendUnavailableError, match=r"cannot load model .* give a local directory with config.json"):
        LocalBackend(model=str(tmp_path / "empty")).loaded()


@pytest.mark.slow
async def test_bundled_smollm2_answers(smollm2_dir: Path) -> None:
    b = LocalBackend(model="smollm2-135m")
    r = await b.complete(_req("Hi! Where could I travel in Europe in May?", max_tokens=30))
    assert len(r.text.split()) >= 5 and r.usage.output_tokens > 5
