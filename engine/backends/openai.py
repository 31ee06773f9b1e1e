"""The `openai` backend: any OpenAI-compatible chat completions endpoint (OpenAI, vLLM,
llama.cpp server, Ollama) through the official SDK's async client, chosen by base URL.

The model comes from `--model` or `SUBTERRA_OPENAI_MODEL`; with neither, a server that serves
exactly one model (vLLM, llama.cpp) is asked which. The key is `OPENAI_API_KEY`, or a
placeholder for local servers that need none; it is never stored or logged.
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
    # imports the backend registry. (Absolute import: this module is engine.backends.openai.)
    import openai

    return openai


MODEL_ENV = "SUBTERRA_OPENAI_MODEL"


@register("openai")
class OpenAIBackend(SDKErrors):
    service = "the OpenAI-compatible server"
    key_env = "OPENAI_API_KEY"
    load_sdk = staticmethod(_sdk)
    name = "openai"

    def __init__(self, model: str | None = None, base_url: str | None = None, timeout: float = 120.0,
                 sdk_retries: int = 2, retry: RetryPolicy | None = None, **_: Any):
        self.model = model or os.environ.get(MODEL_ENV) or ""
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = os.environ.get("OPENAI_API_KEY")
        if not key and not self.base_url:
            raise BackendUnavailableError(
                "the openai backend needs OPENAI_API_KEY, or --base-url pointing at a local OpenAI-compatible server"
            )
        self.retry = retry or RetryPolicy()
        self.client = _sdk().AsyncOpenAI(api_key=key or "not-needed", base_url=self.base_url, timeout=timeout,
                                         max_retries=sdk_retries)

    async def complete(self, request: ChatRequest) -> ChatResult:
        await self._resolve_model()

        async def once() -> ChatResult:
            t0 = time.perf_counter()
            r = await self.client.chat.completions.create(**self._kwargs(request))
            if not r.choices or not (r.choices[0].message.content or "").strip():
                raise BackendResponseError(f"{self.model} returned an empty reply")
            return ChatResult(text=r.choices[0].message.content or "", usage=_usage(r.usage),
                              model=r.model or self.model,
                              backend=self.name, latency_s=time.perf_counter() - t0,
                              finish_reason=r.choices[0].finish_reason)

        return await with_retries(once, self.classify, self.retry, translate=self.translate)

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        await self._resolve_model()
        t0 = time.perf_counter()
        ttft: float | None = None
        parts: list[str] = []
        usage, finish, model = Usage(), None, self.model
        kw = self._kwargs(request) | {"stream": True, "stream_options": {"include_usage": True}}
        chunks = await with_retries(lambda: self.client.chat.completions.create(**kw), self.classify, self.retry,
                                    translate=self.translate)
        async for c in chunks:
            model = c.model or model
            if c.usage:
                usage = _usage(c.usage)
            if c.choices:
                finish = c.choices[0].finish_reason or finish
                piece = c.choices[0].delta.content or ""
                if piece:
                    ttft = ttft if ttft is not None else time.perf_counter() - t0
                    parts.append(piece)
                    yield StreamEvent(delta=piece)
        yield StreamEvent(result=ChatResult(text="".join(parts), usage=usage, model=model, backend=self.name,
                                            latency_s=time.perf_counter() - t0, ttft_s=ttft, finish_reason=finish))

    async def aclose(self) -> None:
        await self.client.close()

    async def _resolve_model(self) -> None:
        if self.model:
            return
        try:
            served = [m.id async for m in self.client.models.list()]
        except _sdk().OpenAIError as e:
            raise BackendUnavailableError(
                f"cannot reach the OpenAI-compatible server at {self.base_url} ({e})") from None
        if len(served) != 1:
            raise BackendUnavailableError(
                f"no model chosen; pass --model or set {MODEL_ENV} (the server offers: {', '.join(served) or 'none'})"
            )
        self.model = served[0]

    def _kwargs(self, request: ChatRequest) -> dict[str, Any]:
        s = request.sampling
        messages = ([{"role": "system", "content": request.system}] if request.system else []) + [
            {"role": m.role, "content": m.content} for m in request.messages
        ]
        kw: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": s.max_tokens,
                              "temperature": s.temperature, "top_p": s.top_p}
        if s.seed is not None:
            kw["seed"] = s.seed
        if s.stop:
            kw["stop"] = s.stop
        return kw


def _usage(u: Any) -> Usage:
    if u is None:
        return Usage()
    details = getattr(u, "prompt_tokens_details", None)
    cached = (getattr(details, "cached_tokens", None) or 0) if details else 0
    return Usage(input_tokens=(u.prompt_tokens or 0) - cached, output_tokens=u.completion_tokens or 0,
                 cache_read_tokens=cached)


