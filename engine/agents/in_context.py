"""The in-context agent: any backend with the whole flowchart serialized into its system prompt.

The paper's strongest baseline: a frontier model reads the procedure (`engine.serialize`) at every
turn and tracks its position itself, one call per turn. Its prompt grows with the procedure, which
is what makes it cost 2-7x the tokens of the compiled agent.

A small model's context can be too short for the flowchart and a whole conversation (insurance's
flowchart alone is 7,689 of SmolLM2's 8,192 tokens). Then the session keeps the flowchart and the
latest turns that fit, as a chat product would, instead of failing the conversation: when the
backend says the prompt is too long (`ContextLengthError`), it drops the oldest exchange and asks
again, and keeps that window for the turns after. `InContextSession.dropped` says how many
messages it no longer sends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from engine.agents.base import AgentDelta, AgentReply
from engine.agents.calls import call_reply, call_stream
from engine.backends.base import Backend, ChatRequest, Message, Sampling
from engine.errors import ContextLengthError
from engine.flow import Flow
from engine.serialize import serialize_flow


class InContextAgent:
    kind = "in-context"

    def __init__(self, flow: Flow, backend: Backend, sampling: Sampling | None = None, spec: str = ""):
        self.flow = flow
        self.backend = backend
        self.model = backend.model
        self.system_prompt = serialize_flow(flow)
        self.sampling = sampling or Sampling(temperature=0.7, max_tokens=400)
        self.spec = spec or f"in-context:{flow.name}@{backend.name}"

    def session(self) -> InContextSession:
        return InContextSession(self)

    def request(self, history: list[Message]) -> ChatRequest:
        # the procedure is the stable prefix of every call: mark it for prompt caching
        return ChatRequest(system=self.system_prompt, messages=list(history), sampling=self.sampling,
                           cache_system=True)

    async def aclose(self) -> None:
        await self.backend.aclose()


class InContextSession:
    def __init__(self, agent: InContextAgent):
        self.agent = agent
        self.dropped = 0  # the oldest messages of the conversation no longer sent (they did not fit)

    def _window(self, history: list[Message]) -> list[Message]:
        return history[min(self.dropped, max(len(history) - 1, 0)):]

    def _shrink(self, history: list[Message], e: ContextLengthError) -> None:
        """Drop one more exchange (two messages, so the turns keep their order of speakers), or give up."""
        if len(self._window(history)) <= 1:
            raise ContextLengthError(f"{e} (the flowchart and the last message alone do not fit)") from None
        self.dropped = min(self.dropped + 2, len(history) - 1)

    async def reply(self, history: list[Message]) -> AgentReply:
        while True:
            try:
                return await call_reply(self.agent.backend, self.agent.request(self._window(history)))
            except ContextLengthError as e:
                self._shrink(history, e)

    async def stream(self, history: list[Message]) -> AsyncIterator[AgentDelta]:
        while True:
            started = False
            try:
                async for d in call_stream(self.agent.backend, self.agent.request(self._window(history))):
                    started = True
                    yield d
                return
            except ContextLengthError as e:
                if started:  # a server that refuses mid-stream: the deltas are out, nothing to retry
                    raise
                self._shrink(history, e)
