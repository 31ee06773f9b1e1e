"""The in-context agent: any backend with the whole flowchart serialized into its system prompt.

The paper's strongest baseline: a frontier model reads the procedure (`engine.serialize`) at every
turn and tracks its position itself, one call per turn. Its prompt grows with the procedure, which
is what makes it cost 2-7x the tokens of the compiled agent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from engine.agents.base import AgentDelta, AgentReply
from engine.agents.calls import call_reply, call_stream
from engine.backends.base import Backend, ChatRequest, Message, Sampling
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

    async def reply(self, history: list[Message]) -> AgentReply:
        return await call_reply(self.agent.backend, self.agent.request(history))

    def stream(self, history: list[Message]) -> AsyncIterator[AgentDelta]:
        return call_stream(self.agent.backend, self.agent.request(history))
