"""One LLM call turned into an agent reply (or a stream of deltas), with usage and timing kept.

Every agent makes its turn from one or more backend calls: the compiled and in-context agents one,
the orchestrators a routing call or two and then the generation. These helpers add the calls up so
that each turn reports tokens in/out, the number of calls and its latency.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from engine.agents.base import AgentDelta, AgentReply
from engine.backends.base import Backend, ChatRequest, Usage
from engine.errors import BackendResponseError


async def call_reply(backend: Backend, request: ChatRequest, usage: Usage | None = None, calls: int = 0,
                     t0: float | None = None, **fields: object) -> AgentReply:
    """One completion; `usage`/`calls`/`t0` carry what earlier calls of the same turn cost."""
    t0 = time.perf_counter() if t0 is None else t0
    result = await backend.complete(request)
    return AgentReply(text=result.text, usage=(usage or Usage()) + result.usage, calls=calls + 1,
                      latency_s=time.perf_counter() - t0, ttft_s=result.ttft_s, **fields)  # type: ignore[arg-type]


async def call_stream(backend: Backend, request: ChatRequest, usage: Usage | None = None, calls: int = 0,
                      t0: float | None = None, **fields: object) -> AsyncIterator[AgentDelta]:
    """Stream one completion as agent deltas; the last delta carries the whole reply."""
    t0 = time.perf_counter() if t0 is None else t0
    ttft: float | None = None
    async for event in backend.stream(request):
        if event.delta:
            if ttft is None:
                ttft = time.perf_counter() - t0
            yield AgentDelta(delta=event.delta)
        if event.result is not None:
            r = event.result
            yield AgentDelta(reply=AgentReply(
                text=r.text, usage=(usage or Usage()) + r.usage, calls=calls + 1,
                latency_s=time.perf_counter() - t0, ttft_s=ttft, **fields))  # type: ignore[arg-type]
            return
    raise BackendResponseError(f"{backend.name} ended its stream without a result")


async def stream_as_reply(stream: AsyncIterator[AgentDelta]) -> AgentReply:
    """Drain a delta stream and return its final reply."""
    async for d in stream:
        if d.reply is not None:
            return d.reply
    raise BackendResponseError("the agent ended its stream without a reply")
