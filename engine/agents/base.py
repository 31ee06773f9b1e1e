"""The one interface every agent speaks: a conversation so far in, the next agent message out.

An `Agent` is built once from a spec (`compiled:DIR`, `in-context:FLOW@backend`,
`orchestrator:FLOW@backend`, `langgraph:FLOW@backend`); each conversation gets its own
`AgentSession` (orchestrators keep flowchart state there). `history` never contains a system
message: each agent adds its own (the compiled one only the flow's minimal system prompt).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, Field

from engine.backends.base import Message, Usage


class AgentReply(BaseModel):
    text: str
    usage: Usage = Field(default_factory=Usage, description="Tokens in/out for this turn, all calls included.")
    calls: int = Field(1, description="LLM calls made for this turn (orchestrators route with extra calls).")
    latency_s: float = 0.0
    ttft_s: float | None = None
    node_id: str | None = Field(None, description="Flowchart node the agent believes it enacted (orchestrators).")
    done: bool = Field(False, description="The agent closed the conversation (reached a terminal).")


class AgentDelta(BaseModel):
    """Streaming: text deltas, then one final event with `reply` set."""

    delta: str = ""
    reply: AgentReply | None = None


@runtime_checkable
class AgentSession(Protocol):
    async def reply(self, history: list[Message]) -> AgentReply: ...

    def stream(self, history: list[Message]) -> AsyncIterator[AgentDelta]: ...


@runtime_checkable
class Agent(Protocol):
    spec: str
    kind: str  # compiled | in-context | orchestrator | langgraph
    model: str

    def session(self) -> AgentSession: ...

    async def aclose(self) -> None: ...
