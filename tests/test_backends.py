"""LLM backends against real HTTP servers on 127.0.0.1 (tests/fake_llm.py), through the official
anthropic and openai SDKs: replies, streaming, usage and prompt caching, retries on 429/500/529,
timeouts and malformed bodies, and the error messages users see. Plus scripted, pricing, rate limits."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from fake_llm import FakeLLMServer

from engine.backends import ChatRequest, Message, RenderHints, Sampling, get_backend
from engine.backends.pricing import PRICES_TAKEN, cost, cost_usd, price_for
from engine.backends.retry import RetryPolicy
from engine.errors import BackendResponseError, BackendUnavailableError
from engine.ratelimit import RateLimiter

FAST = RetryPolicy(attempts=4, base_delay=0.01, max_delay=2.0, jitter=0.0)
SYSTEM = "You are a careful travel agent. " * 30  # long enough to be worth caching


def _req(text: str = "Hello there", **kw: object) -> ChatRequest:
    return ChatRequest(system=SYSTEM, messages=[Message(role="user", content=text)], **kw)  # type: ignore[arg-type]


@pytest.fixture
def srv():
    with FakeLLMServer(reply=lambda r: f"Echo: {r.last_user}") as s:
        yield s


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-not-real")
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    monkeypatch.delenv("SUBTERRA_ANTHROPIC_MODEL", raising=False)
    monkeypatch.delenv("SUBTERRA_OPENAI_MODEL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def anthropic_backend(srv: FakeLLMServer, **kw: object):
    opts = {"model": "claude-sonnet-4-5", "base_url": srv.base_url, "retry": FAST} | kw
    return get_backend("anthropic", **opts)


def openai_backend(srv: FakeLLMServer, **kw: object):
    opts = {"model": "fake-model", "base_url": srv.openai_base_url, "retry": FAST} | kw
    return get_backend("openai", **opts)


# -- anthropic ------------------------------------------------------------------------------------


async def test_anthropic_reply_usage_and_prompt_caching(srv: FakeLLMServer) -> None:
    be = anthropic_backend(srv)
    first = await be.complete(_req("one"))
    second = await be.complete(_req("two"))
    await be.aclose()
    assert first.text == "Echo: one" and second.text == "Echo: two"
    assert first.backend == "anthropic" and first.model == "claude-sonnet-4-5"
    # the system prompt went as a cached block; the server billed it as a write, then as a read
    sent = srv.requests[0].body
    assert sent["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert first.usage.cache_write_tokens > 100 and first.usage.cache_read_tokens == 0
    assert second.usage.cache_read_tokens == first.usage.cache_write_tokens and second.usage.cache_write_tokens == 0
    assert second.usage.input_tokens < 10 and second.usage.output_tokens > 0
    # the key reached the server only as the SDK's header, and never appears elsewhere in the request
    h = srv.requests[0].headers
    assert "sk-test-not-real" in h.get("x-api-key", "") + h.get("authorization", "")
    assert "temperature" not in sent and "top_p" not in sent  # the current API version rejects them
    assert "sk-test" not in json.dumps(sent)


async def test_anthropic_no_cache_when_disabled(srv: FakeLLMServer) -> None:
    be = anthropic_backend(srv)
    r = await be.complete(_req(cache_system=False))
    await be.aclose()
    assert "cache_control" not in srv.requests[0].body["system"][0]
    assert r.usage.cache_read_tokens == r.usage.cache_write_tokens == 0


async def test_anthropic_streaming(srv: FakeLLMServer) -> None:
    srv.reply = "The quick brown fox jumps over the lazy dog and keeps running far away"
    be = anthropic_backend(srv)
    deltas, final = [], None
    async for ev in be.stream(_req()):
        if ev.result is not None:
            final = ev.result
        else:
            deltas.append(ev.delta)
    await be.aclose()
    assert len(deltas) > 3 and "".join(deltas) == srv.reply
    assert final is not None and final.text == srv.reply and final.ttft_s is not None
    assert final.usage.output_tokens > 0 and final.usage.cache_write_tokens > 0


async def test_anthropic_first_turn_gets_an_opening_user_message(srv: FakeLLMServer) -> None:
    be = anthropic_backend(srv)
    await be.complete(ChatRequest(system="Be brief.", messages=[]))
    await be.aclose()
    assert srv.requests[0].body["messages"][0]["role"] == "user"


async def test_anthropic_retries_honour_retry_after(srv: FakeLLMServer) -> None:
    srv.inject("429", retry_after=0.6)
    be = anthropic_backend(srv, sdk_retries=0)
    t0 = time.perf_counter()
    r = await be.complete(_req("after the wait"))
    elapsed = time.perf_counter() - t0
    await be.aclose()
    assert r.text == "Echo: after the wait"
    assert elapsed >= 0.55, "the retry must wait for retry-after, not the 10 ms base delay"
    assert [q.fault for q in srv.requests] == ["429", None]


@pytest.mark.parametrize("fault", ["429", "500", "529", "malformed", "empty", "disconnect"])
async def test_anthropic_retries_each_fault(srv: FakeLLMServer, fault: str) -> None:
    srv.inject(fault, retry_after=0.01 if fault in ("429", "529") else None)
    be = anthropic_backend(srv, sdk_retries=0)
    r = await be.complete(_req("x"))
    await be.aclose()
    assert r.text == "Echo: x"
    assert len(srv.requests) == 2


async def test_anthropic_our_retries_come_on_top_of_the_sdks(srv: FakeLLMServer) -> None:
    # the SDK tries 1 + 2 times, then our loop tries again: five overloads in a row still succeed
    srv.inject("529", count=5, retry_after=0.01)
    be = anthropic_backend(srv, sdk_retries=2, retry=RetryPolicy(attempts=3, base_delay=0.01, jitter=0))
    r = await be.complete(_req("persistent"))
    await be.aclose()
    assert r.text == "Echo: persistent" and len(srv.requests) == 6


async def test_anthropic_timeout_is_retried(srv: FakeLLMServer) -> None:
    srv.inject("slow", delay=3.0)
    be = anthropic_backend(srv, sdk_retries=0, timeout=0.5)
    t0 = time.perf_counter()
    r = await be.complete(_req("patience"))
    await be.aclose()
    assert r.text == "Echo: patience"
    assert time.perf_counter() - t0 < 2.5, "the client must give up on the slow reply, not wait it out"


async def test_anthropic_gives_up_with_a_reason(srv: FakeLLMServer) -> None:
    srv.inject("500", count=10)
    be = anthropic_backend(srv, sdk_retries=0, retry=RetryPolicy(attempts=3, base_delay=0.01, jitter=0))
    with pytest.raises(BackendResponseError, match=r"answered 500 .*gave up after 3 tries"):
        await be.complete(_req())
    await be.aclose()
    assert len(srv.requests) == 3


async def test_anthropic_needs_a_model_and_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BackendUnavailableError) as e:
        get_backend("anthropic")
    assert str(e.value) == ("no Anthropic model chosen; pass --model (for example claude-sonnet-4-5) "
                            "or set SUBTERRA_ANTHROPIC_MODEL")
    monkeypatch.setenv("SUBTERRA_ANTHROPIC_MODEL", "claude-haiku-4-5")
    assert get_backend("anthropic").model == "claude-haiku-4-5"
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(BackendUnavailableError, match="set ANTHROPIC_API_KEY"):
        get_backend("anthropic")


async def test_anthropic_base_url_from_env(srv: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.base_url)
    be = get_backend("anthropic", model="claude-sonnet-4-5")
    assert (await be.complete(_req("env"))).text == "Echo: env"
    await be.aclose()


async def test_anthropic_refused_key_and_unreachable_server(srv: FakeLLMServer) -> None:
    be = get_backend("anthropic", model="m", base_url="http://127.0.0.1:9", retry=FAST)
    with pytest.raises(BackendUnavailableError, match=r"cannot reach the Anthropic API at http://127.0.0.1:9"):
        await be.check()
    await be.aclose()
    srv.reply = lambda r: "unused"
    be = anthropic_backend(srv)
    await be.check()  # reachable: fine
    await be.aclose()


# -- openai-compatible ----------------------------------------------------------------------------


async def test_openai_reply_stream_and_usage(srv: FakeLLMServer) -> None:
    be = openai_backend(srv)
    r = await be.complete(_req("hi"))
    assert r.text == "Echo: hi" and r.backend == "openai" and r.usage.output_tokens > 0
    body = srv.requests[-1].body
    assert body["messages"][0] == {"role": "system", "content": SYSTEM}
    parts, final = [], None
    async for ev in be.stream(_req("streamed")):
        parts.append(ev.delta)
        final = ev.result or final
    await be.aclose()
    assert "".join(parts) == "Echo: streamed" and final is not None and final.text == "Echo: streamed"
    assert final.usage.output_tokens > 0 and final.usage.cache_read_tokens > 0  # same system prompt again


@pytest.mark.parametrize("fault", ["429", "500", "malformed", "slow"])
async def test_openai_retries_faults(srv: FakeLLMServer, fault: str) -> None:
    srv.inject(fault, retry_after=0.01 if fault == "429" else None, delay=3.0)
    be = openai_backend(srv, sdk_retries=0, timeout=0.5)
    r = await be.complete(_req("ok"))
    await be.aclose()
    assert r.text == "Echo: ok" and len(srv.requests) == 2


async def test_openai_model_from_server_when_it_serves_one(srv: FakeLLMServer) -> None:
    be = get_backend("openai", base_url=srv.openai_base_url)
    r = await be.complete(_req("which"))
    await be.aclose()
    assert r.text == "Echo: which" and srv.requests[-1].model == "fake-model"
    srv.models.append("second-model")
    be = get_backend("openai", base_url=srv.openai_base_url)
    with pytest.raises(BackendUnavailableError, match="no model chosen; pass --model .*fake-model, second-model"):
        await be.complete(_req())
    await be.aclose()


async def test_openai_needs_key_or_base_url() -> None:
    with pytest.raises(BackendUnavailableError, match="OPENAI_API_KEY, or --base-url"):
        get_backend("openai", model="x")


# -- scripted -------------------------------------------------------------------------------------


async def test_scripted_renders_examples_deterministically() -> None:
    be = get_backend("scripted")
    hints = RenderHints(node_id="ask", examples=["I'd like {city}.", "Take me to {city}!", "{city}, please."],
                        variables={"city": "Kyoto"})
    texts = [(await be.complete(ChatRequest(hints=hints, sampling=Sampling(seed=s)))).text for s in range(30)]
    again = [(await be.complete(ChatRequest(hints=hints, sampling=Sampling(seed=s)))).text for s in range(30)]
    assert texts == again
    assert set(texts) == {"I'd like Kyoto.", "Take me to Kyoto!", "Kyoto, please."}


async def test_scripted_errors_name_the_node() -> None:
    be = get_backend("scripted")
    with pytest.raises(BackendResponseError) as e:
        await be.complete(ChatRequest(hints=RenderHints(node_id="confirm_booking")))
    assert str(e.value).startswith("node 'confirm_booking' has no example utterances; add some to its examples")
    with pytest.raises(BackendResponseError, match=r"node 'n1': example .* uses \{city\}"):
        await be.complete(ChatRequest(hints=RenderHints(node_id="n1", examples=["to {city}"])))


async def test_scripted_falls_back_to_another_backend(srv: FakeLLMServer) -> None:
    be = get_backend("scripted", fallback="openai",
                     fallback_options={"model": "fake-model", "base_url": srv.openai_base_url})
    r = await be.complete(ChatRequest(messages=[Message(role="user", content="no examples")],
                                      hints=RenderHints(node_id="x")))
    await be.aclose()
    assert r.text == "Echo: no examples" and r.backend == "openai"


# -- pricing and rate limits ----------------------------------------------------------------------


def test_pricing_table_prefix_unknown_and_override(subterra_home) -> None:
    from engine.backends import Usage

    u = Usage(input_tokens=1_000_000, output_tokens=1_000_000, cache_read_tokens=1_000_000, cache_write_tokens=0)
    assert PRICES_TAKEN
    assert cost_usd(u, "claude-sonnet-4-5") == pytest.approx(3.0 + 15.0 + 0.3)
    assert price_for("claude-sonnet-4-5-20250929") == price_for("claude-sonnet-4-5")
    unknown = cost(u, "mystery-model")
    assert unknown.usd == 0 and unknown.known is False
    assert cost(u, "whatever", backend="scripted").known
    (subterra_home / "prices.json").write_text(json.dumps({"mystery-model": {"input": 1, "output": 2}}))
    assert cost_usd(u, "mystery-model") == pytest.approx(1 + 2 + 1)  # cache reads default to the input price
    (subterra_home / "prices.json").write_text("{broken")
    from engine.errors import StoreError

    with pytest.raises(StoreError, match="prices.json: cannot read the price overrides"):
        cost_usd(u, "mystery-model")


async def test_rate_limiter_requests_and_tokens() -> None:
    lim = RateLimiter(requests_per_minute=600)  # 10 per second, at most one second's worth at once
    t0 = time.perf_counter()
    await asyncio.gather(*(lim.acquire() for _ in range(20)))
    assert 0.9 <= time.perf_counter() - t0 < 2.0
    lim = RateLimiter(tokens_per_minute=60_000)  # 1,000 tokens per second
    t0 = time.perf_counter()
    for _ in range(4):
        await lim.acquire(500)
    assert 0.9 <= time.perf_counter() - t0 < 2.0
    assert RateLimiter().unlimited
