"""The LangGraph orchestrator: the procedure built as a real `langgraph` StateGraph.

The paper's frontier baseline, as an agent framework builds it: one graph node per flowchart node,
plus a `resume` node that continues from where the last turn stopped. Agent nodes make the one
generation call of a turn (their prompt injected) and end the turn; user nodes take the customer's
message; decision nodes, and any node with several ways on, ask an LLM router which edge's condition
holds (the same classifier as the surface orchestrator, `orchestrator.choose_edge`). The graph only
has edges the flowchart has, so it can only move along valid edges.

langgraph is an optional extra: `pip install 'subterra[langgraph]'`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any, TypedDict

from engine.agents.base import AgentDelta, AgentReply
from engine.agents.calls import stream_as_reply
from engine.agents.orchestrator import (
    OrchestratorAgent,
    RouteDecision,
    choose_edge,
    ends_after,
    node_system_prompt,
)
from engine.backends.base import Backend, ChatRequest, Message, Sampling, Usage
from engine.errors import ServingError
from engine.flow import Flow

RESUME = "(resume)"  # not a valid flow node id, so it cannot collide with one


class TurnState(TypedDict, total=False):
    history: list[Message]
    position: str | None  # node the conversation is at (None before the first turn)
    next: str  # graph node to go to, set by routing
    reply: str
    node_id: str | None
    done: bool
    usage: Usage
    calls: int
    visited: list[str]
    decisions: list[RouteDecision]


def require_langgraph() -> Any:
    try:
        import langgraph.graph as lg
    except ImportError as e:
        raise ServingError("the langgraph agent needs the optional langgraph package; install it with "
                           "`pip install 'subterra[langgraph]'` (or `pip install langgraph`)") from e
    return lg


class LangGraphAgent(OrchestratorAgent):
    """The surface orchestrator's set-up (backends, router, sampling), run as a LangGraph StateGraph."""

    kind = "langgraph"

    def __init__(self, flow: Flow, backend: Backend, router_backend: Backend | None = None,
                 sampling: Sampling | None = None, spec: str = ""):
        super().__init__(flow, backend, router_backend, sampling, spec or f"langgraph:{flow.name}@{backend.name}")
        self.graph = build_graph(self)

    def session(self) -> LangGraphSession:  # type: ignore[override]
        return LangGraphSession(self)


class LangGraphSession:
    def __init__(self, agent: LangGraphAgent):
        self.agent = agent
        self.node_id: str | None = None
        self.path: list[str] = []
        self.edges: list[str] = []
        self.decisions: list[RouteDecision] = []

    async def reply(self, history: list[Message]) -> AgentReply:
        return await stream_as_reply(self.stream(history))

    async def stream(self, history: list[Message]) -> AsyncIterator[AgentDelta]:
        t0 = time.perf_counter()
        state: TurnState = {"history": list(history), "position": self.node_id, "reply": "", "node_id": None,
                            "done": False, "usage": Usage(), "calls": 0, "visited": [],
                            "decisions": []}
        final: dict[str, Any] = dict(state)
        ttft: float | None = None
        limit = {"recursion_limit": 4 * len(self.agent.flow.nodes) + 10}
        async for mode, chunk in self.agent.graph.astream(state, stream_mode=["custom", "values"], config=limit):
            if mode == "custom" and chunk.get("delta"):
                ttft = ttft if ttft is not None else time.perf_counter() - t0
                yield AgentDelta(delta=chunk["delta"])
            elif mode == "values":
                final = chunk
        self.node_id = final.get("position")
        self.path.extend(final.get("visited", []))
        self.decisions.extend(final.get("decisions", []))
        self.edges.extend(d.chosen for d in final.get("decisions", []))
        yield AgentDelta(reply=AgentReply(
            text=final.get("reply", ""), usage=final.get("usage", Usage()), calls=final.get("calls", 0),
            latency_s=time.perf_counter() - t0, ttft_s=ttft, node_id=final.get("node_id"),
            done=bool(final.get("done"))))


# -- the graph -------------------------------------------------------------------------------------
def build_graph(agent: LangGraphAgent) -> Any:
    lg = require_langgraph()
    flow = agent.flow
    graph = lg.StateGraph(TurnState)
    graph.add_node(RESUME, _resume_node(agent))
    for node in flow.nodes:
        graph.add_node(node.id, _speak_node(agent, node.id) if node.role in ("agent", "terminal")
                       else _pass_node(agent, node.id))
    graph.add_edge(lg.START, RESUME)
    every = {n.id: n.id for n in flow.nodes} | {"end": lg.END}
    graph.add_conditional_edges(RESUME, _goto, every)
    for node in flow.nodes:
        targets = {e.target: e.target for e in flow.out_edges(node.id) if e.target in flow.node_map}
        if node.role in ("agent", "terminal"):
            graph.add_edge(node.id, lg.END)  # an agent turn ends the graph run (one turn per run)
        else:
            graph.add_conditional_edges(node.id, _goto, targets | {"end": lg.END})
    return graph.compile()


def _goto(state: TurnState) -> str:
    return state.get("next") or "end"


async def _route_from(agent: LangGraphAgent, at: str, state: TurnState) -> dict[str, Any]:
    """Routing as a state update: the chosen target in `next`, its cost added to the turn's."""
    flow = agent.flow
    outs = [e for e in flow.out_edges(at) if e.target in flow.node_map]
    if not outs:
        return {"next": "end"}
    edge, decision, used = await choose_edge(agent.router_backend, flow, at, outs, state["history"])
    return {"next": edge.target, "usage": state["usage"] + used,
            "calls": state["calls"] + (decision.method != "only"),
            "decisions": [*state["decisions"], decision]}


def _resume_node(agent: LangGraphAgent) -> Any:
    async def resume(state: TurnState) -> dict[str, Any]:
        pos = state.get("position")
        if pos is None:
            return {"next": agent.flow.start}
        update = await _route_from(agent, pos, state)
        if update["next"] == "end":  # a terminal: speak it again (a closing message)
            update["next"] = pos
        return update

    return resume


def _pass_node(agent: LangGraphAgent, node_id: str) -> Any:
    """User and decision nodes say nothing: record the visit, then route on."""

    async def visit(state: TurnState) -> dict[str, Any]:
        update = await _route_from(agent, node_id, state)
        return update | {"position": node_id, "visited": [*state["visited"], node_id]}

    return visit


def _speak_node(agent: LangGraphAgent, node_id: str) -> Any:
    """Agent and terminal nodes: one generation call with the node's prompt injected, streamed."""
    from langgraph.config import get_stream_writer

    node = agent.flow.node(node_id)

    async def speak(state: TurnState) -> dict[str, Any]:
        write = get_stream_writer()
        request = ChatRequest(system=node_system_prompt(agent.flow, node), messages=state["history"],
                              sampling=agent.sampling)
        result = None
        async for event in agent.backend.stream(request):
            if event.delta:
                write({"delta": event.delta})
            if event.result is not None:
                result = event.result
        if result is None:
            raise ServingError(f"{agent.backend.name} ended its stream without a result")
        return {"reply": result.text, "node_id": node_id, "position": node_id, "next": "end",
                "done": node.role == "terminal" or ends_after(agent.flow, node_id),
                "usage": state["usage"] + result.usage, "calls": state["calls"] + 1,
                "visited": [*state["visited"], node_id]}

    return speak
