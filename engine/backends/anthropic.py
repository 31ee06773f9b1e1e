"""The `anthropic` backend: Claude through the official SDK's async client.

The model comes from `--model` or `SUBTERRA_ANTHROPIC_MODEL`; there is deliberately no default
(models retire, and a silent default would bill the user for a model they never chose). The
key comes only from `ANTHROPIC_API_KEY` and is handed straight to the SDK: it is never stored,
logged or exported. The endpoint is `base_url` or `ANTHROPIC_BASE_URL` (the SDK reads it).
The system prompt is sent as a block with `cache_control`, so the stable prefix is cached.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from engine.backends.base import ChatRequest, ChatResult, StreamEvent, Usage, register
from engine.backends.retry import RetryPolicy, SDKErrors, with_retries
from engine.errors import BackendResponseError, BackendUnavailableError

if TYPE_CHECKING:
    pass


def _sdk() -> Any:
    # Imported on first use: the SDK takes seconds to import, and every `subterra` command
    # imports the backend registry. (Absolute import: this module is engine.backends.anthropic.)
    import anthropic

    return anthropic


MODEL_ENV = "SUBTERRA_ANTHROPIC_MODEL"
# Claude refuses a conversation that does not start with a user turn; an agent that speaks
# first (empty history) gets this neutral opener instead.
OPENING = "(The conversation begins. Write the first message.)"


@register("anthropic")
class AnthropicBackend(SDKErrors):
    service = "the Anthropic API"
    key_env = "ANTHROPIC_API_KEY"
    load_sdk = staticmethod(_sdk)
    name = "anthropic"

    def status_message(self, e: Any) -> str:
        return _message(e)

    def __init__(self, model: str | None = None, base_url: str | None = None, timeout: float = 120.0,
                 sdk_retries: int = 2, retry: RetryPolicy | None = None, **_: Any):
        self.model = model or os.environ.get(MODEL_ENV) or ""
        if not self.model:
            raise BackendUnavailableError(
                f"no Anthropic model chosen; pass --model (for example claude-sonnet-4-5) or set {MODEL_ENV}"
            )
        if not os.environ.get("ANTHROPIC_API_KEY"):
            raise BackendUnavailableError("the anthropic backend needs an API key; set ANTHROPIC_API_KEY")
        self.base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        self.retry = retry or RetryPolicy()
        self.client = _sdk().AsyncAnthropic(base_url=self.base_url, timeout=timeout, max_retries=sdk_retries)

    async def complete(self, request: ChatRequest) -> ChatResult:
        async def once() -> ChatResult:
            t0 = time.perf_counter()
            msg = await self.client.messages.create(**self._kwargs(request))
            text = "".join(getattr(b, "text", "") for b in msg.content)
            if not text.strip():
                raise BackendResponseError(f"{self.model} returned an empty reply (stop reason {msg.stop_reason})")
            return ChatResult(text=text, usage=_usage(msg.usage), model=msg.model or self.model, backend=self.name,
                              latency_s=time.perf_counter() - t0, finish_reason=msg.stop_reason)

        return await with_retries(once, self.classify, self.retry, translate=self.translate)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        # Retry only until the response starts: after the first delta the caller has shown text.
        t0 = time.perf_counter()
        ttft: float | None = None
        parts: list[str] = []
        usage, stop, model = Usage(), None, self.model
        kw = self._kwargs(request) | {"stream": True}
        events = await with_retries(lambda: self.client.messages.create(**kw), self.classify, self.retry,
                                    translate=self.translate)
        async for ev in events:
            if ev.type == "message_start":
                usage, model = _usage(ev.message.usage), ev.message.model or model
            elif ev.type == "content_block_delta" and getattr(ev.delta, "type", "") == "text_delta":
                ttft = ttft if ttft is not None else time.perf_counter() - t0
                parts.append(ev.delta.text)
                yield StreamEvent(delta=ev.delta.text)
            elif ev.type == "message_delta":
                stop = ev.delta.stop_reason or stop
                usage = usage.model_copy(update={"output_tokens": ev.usage.output_tokens or usage.output_tokens})
        yield StreamEvent(result=ChatResult(
            text="".join(parts), usage=usage, model=model, backend=self.name,
            latency_s=time.perf_counter() - t0, ttft_s=ttft, finish_reason=stop))

    async def aclose(self) -> None:
        await self.client.close()

    def _kwargs(self, request: ChatRequest) -> dict[str, Any]:
        s = request.sampling
        messages = [{"role": m.role, "content": m.content} for m in request.messages if m.role != "system"]
        if not messages or messages[0]["role"] != "user":
            messages.insert(0, {"role": "user", "content": OPENING})
        # No temperature / top_p: the API version the SDK speaks (2026-10-21) rejects sampling
        # parameters, and SDK 2.x dropped them. Variety comes from the prompt and the scenario.
        kw: dict[str, Any] = {"model": self.model, "max_tokens": s.max_tokens, "messages": messages}
        system = "\n\n".join([request.system] + [m.content for m in request.messages if m.role == "system"]).strip()
        if system:
            block: dict[str, Any] = {"type": "text", "text": system}
            if request.cache_system:
                block["cache_control"] = {"type": "ephemeral"}
            kw["system"] = [block]
        if s.stop:
            kw["stop_sequences"] = s.stop
        return kw


def _usage(u: Any) -> Usage:
    return Usage(input_tokens=u.input_tokens or 0, output_tokens=u.output_tokens or 0,
                 cache_read_tokens=getattr(u, "cache_read_input_tokens", None) or 0,
                 cache_write_tokens=getattr(u, "cache_creation_input_tokens", None) or 0)


def _message(e: Any) -> str:
    body = e.body if isinstance(e.body, dict) else {}
    err = body.get("error")
    err = err if isinstance(err, dict) else {}
    return str(err.get("message") or err.get("type") or e.message)[:200]
