"""The `scripted` backend: no model at all. It renders the example utterances a flow author
wrote for each node with the scenario's values, choosing among them with a seeded RNG.

It is the offline default for generation: instant, free, and faithful to the procedure by
construction. A turn whose node has no examples is an error naming the node, unless the
backend was built with `fallback="local"` (or another backend name), which then writes it.
"""

from __future__ import annotations

import hashlib
import random
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from engine.backends.base import Backend, ChatRequest, ChatResult, StreamEvent, Usage, get_backend, register
from engine.errors import BackendResponseError
from engine.flow import placeholders, render_template

_WORD = re.compile(r"\S+")


@register("scripted", local=True)
class ScriptedBackend:
    name = "scripted"

    def __init__(self, model: str | None = None, fallback: str | None = None,
                 fallback_options: dict[str, Any] | None = None, **_: Any):
        self.model = "scripted"
        self.fallback_name = fallback
        self.fallback_options = dict(fallback_options or {}) | ({"model": model} if model else {})
        self._fallback: Backend | None = None

    async def complete(self, request: ChatRequest) -> ChatResult:
        t0 = time.perf_counter()
        hints = request.hints
        if hints is None or not hints.examples:
            if self.fallback_name:
                return await self._delegate().complete(request)
            node = hints.node_id if hints and hints.node_id else "?"
            raise BackendResponseError(
                f"node '{node}' has no example utterances; add some to its examples, "
                "or generate with a model (--backend local, or --fallback local to use one only for such nodes)"
            )
        text = render(hints.examples, hints.variables, request.sampling.seed, hints.node_id or "")
        usage = Usage(input_tokens=0, output_tokens=len(_WORD.findall(text)))
        return ChatResult(text=text, usage=usage, model=self.model, backend=self.name,
                          latency_s=time.perf_counter() - t0, finish_reason="end_turn")

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        result = await self.complete(request)
        for word in re.findall(r"\s*\S+", result.text):
            yield StreamEvent(delta=word)
        yield StreamEvent(result=result.model_copy(update={"ttft_s": result.latency_s}))

    async def aclose(self) -> None:
        if self._fallback is not None:
            await self._fallback.aclose()

    def _delegate(self) -> Backend:
        if self._fallback is None:
            self._fallback = get_backend(self.fallback_name or "local", **self.fallback_options)
        return self._fallback


def render(examples: list[str], variables: dict[str, Any], seed: int | None, node_id: str = "") -> str:
    """Pick one example template (seeded) and fill it; an unknown placeholder is an error."""
    rng = random.Random(_mix(seed, node_id)) if seed is not None else random.Random()
    template = rng.choice(examples)
    missing = [p for p in placeholders(template) if p not in variables]
    if missing:
        raise BackendResponseError(
            f"node '{node_id}': example {template!r} uses {', '.join('{' + m + '}' for m in missing)}, "
            "which the flow's variables do not define; add the variable or fix the example"
        )
    return render_template(template, variables).strip()


def _mix(seed: int, salt: str) -> int:
    # str hashes are salted per process; a digest keeps runs reproducible across processes
    return int.from_bytes(hashlib.blake2b(f"{seed}:{salt}".encode(), digest_size=8).digest(), "big")
