"""The surface orchestrator: explicit flowchart state around a model that never sees the procedure.

The paper's same-model baseline. The session keeps the node it is at. Each turn it walks from there
along the flowchart's edges: the customer's message enacts the next user node; where a node has
several out-edges, an LLM classifier is asked which edge's condition holds (its answer is parsed
leniently, and a deterministic rule decides when it cannot be parsed); the walk stops at the next
agent node, whose prompt is injected into the system prompt for the one generation call of the turn.

It only ever moves along edges that exist: `session.edges` lists the edges taken, `session.node_id`
the node it is at, `session.decisions` every routing choice with how it was made.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.agents.base import AgentDelta, AgentReply
from engine.agents.calls import call_stream, stream_as_reply
from engine.backends.base import Backend, ChatRequest, Message, Sampling, Usage
from engine.errors import BackendError, ServingError
from engine.flow import Edge, Flow, Node

ROUTER_SYSTEM = (
    "You route a customer conversation through a procedure. Read the conversation and the options, "
    "then answer with the number of the option that holds now. Answer with the number only."
)
_HISTORY_FOR_ROUTER = 6  # the last messages the classifier sees; routing depends on recent turns
_WORD = re.compile(r"[a-z0-9]+")
_STOPWORDS = frozenset("a an the to of and or is are be it i you we they my your for in on at with this that "
                       "do does did not no yes if so as by from about me us our".split())


class RouteDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    at: str = Field(description="Node whose out-edges were chosen among.")
    options: list[str] = Field(description="Edge ids offered, in order.")
    chosen: str = Field(description="Edge id taken.")
    method: Literal["only", "llm", "fallback"] = Field(
        description="only: a single edge; llm: the classifier's answer; fallback: the deterministic rule.")
    raw: str = Field("", description="The classifier's raw answer.")


Router = Callable[[str, list[Edge], list[Message]], Awaitable[tuple[Edge, RouteDecision, Usage]]]


class OrchestratorAgent:
    kind = "orchestrator"

    def __init__(self, flow: Flow, backend: Backend, router_backend: Backend | None = None,
                 sampling: Sampling | None = None, spec: str = ""):
        if not flow.start or flow.start not in flow.node_map:
            raise ServingError(f"flow '{flow.name}' has no valid start node; set `start` to a node id")
        self.flow = flow
        self.backend = backend
        self.router_backend = router_backend or backend
        self.model = backend.model
        self.sampling = sampling or Sampling(temperature=0.7, max_tokens=256)
        self.spec = spec or f"orchestrator:{flow.name}@{backend.name}"

    def session(self) -> OrchestratorSession:
        return OrchestratorSession(self)

    async def aclose(self) -> None:
        await self.backend.aclose()
        if self.router_backend is not self.backend:
            await self.router_backend.aclose()


class OrchestratorSession:
    def __init__(self, agent: OrchestratorAgent):
        self.agent = agent
        self.flow = agent.flow
        self.node_id: str | None = None  # the node last enacted (None before the first turn)
        self.path: list[str] = []
        self.edges: list[str] = []
        self.decisions: list[RouteDecision] = []

    async def reply(self, history: list[Message]) -> AgentReply:
        return await stream_as_reply(self.stream(history))

    async def stream(self, history: list[Message]) -> AsyncIterator[AgentDelta]:
        t0 = time.perf_counter()
        node, usage, calls = await self._advance(history)
        request = ChatRequest(system=node_system_prompt(self.flow, node), messages=list(history),
                              sampling=self.agent.sampling)
        done = node.role == "terminal" or ends_after(self.flow, node.id)
        async for d in call_stream(self.agent.backend, request, usage, calls, t0, node_id=node.id, done=done):
            yield d

    # -- walking ---------------------------------------------------------------------------------
    async def _advance(self, history: list[Message]) -> tuple[Node, Usage, int]:
        """Move from the current node to the node to enact this turn; returns it and the routing cost."""
        usage, calls = Usage(), 0
        user_spoke = bool(history) and history[-1].role == "user"
        if self.node_id is None:
            start = self.flow.node(self.flow.start)
            if start.role == "user" and not user_spoke:
                raise ServingError(f"flow '{self.flow.name}' starts with the customer's turn ({start.id}); "
                                   "pass the customer's first message")
            self._enter(start.id)
            if start.role in ("agent", "terminal") or not user_spoke:
                return start, usage, calls
        pos = self.node_id
        assert pos is not None
        for _ in range(4 * len(self.flow.nodes) + 4):  # a walk never needs more; guards against silent cycles
            outs = [e for e in self.flow.out_edges(pos) if e.target in self.flow.node_map]
            node = self.flow.node(pos)
            if not outs:
                return node, usage, calls  # a terminal (or dead end): close the conversation
            edge, decision, used = await self._route(pos, outs, history)
            usage, calls = usage + used, calls + (decision.method != "only")
            self.decisions.append(decision)
            self.edges.append(edge.id)
            self._enter(edge.target)
            pos = edge.target
            if self.flow.node(pos).role in ("agent", "terminal"):
                return self.flow.node(pos), usage, calls
        raise ServingError(f"flow '{self.flow.name}': no agent turn reachable from '{self.node_id}' "
                           "without passing through a cycle of decision/user nodes; check the flow")

    async def _route(self, at: str, edges: list[Edge], history: list[Message]
                     ) -> tuple[Edge, RouteDecision, Usage]:
        return await choose_edge(self.agent.router_backend, self.flow, at, edges, history)

    def _enter(self, node_id: str) -> None:
        self.node_id = node_id
        self.path.append(node_id)


# -- routing (shared with the LangGraph orchestrator) ----------------------------------------------
async def choose_edge(backend: Backend, flow: Flow, at: str, edges: list[Edge], history: list[Message]
                      ) -> tuple[Edge, RouteDecision, Usage]:
    """Pick the out-edge of `at` whose condition holds, asking the LLM when there is a choice."""
    ids = [e.id for e in edges]
    if len(edges) == 1:
        return edges[0], RouteDecision(at=at, options=ids, chosen=ids[0], method="only"), Usage()
    options = [option_text(e, flow) for e in edges]
    request = ChatRequest(system=ROUTER_SYSTEM, messages=[Message(role="user", content=router_prompt(
        flow, at, options, history))], sampling=Sampling(temperature=0, max_tokens=8), cache_system=True)
    raw, usage = "", Usage()
    try:
        result = await backend.complete(request)
        raw, usage = result.text, result.usage
    except BackendError:
        pass  # the deterministic rule below still keeps the conversation on a valid edge
    idx = parse_choice(raw, options)
    method: Literal["llm", "fallback"] = "llm"
    if idx is None:
        idx, method = fallback_choice(edges, options, history), "fallback"
    return edges[idx], RouteDecision(at=at, options=ids, chosen=ids[idx], method=method, raw=raw), usage


def option_text(edge: Edge, flow: Flow) -> str:
    """What an edge means to the classifier: its condition, else what its target is about."""
    if edge.when and edge.when.strip():
        return " ".join(edge.when.split())
    target = flow.node(edge.target)
    about = target.label or target.id
    if target.prompt:
        about += f": {' '.join(target.prompt.split())[:160]}"
    return f"otherwise / next step is {about}"


def router_prompt(flow: Flow, at: str, options: list[str], history: list[Message]) -> str:
    node = flow.node(at)
    convo = "\n".join(f"{'CUSTOMER' if m.role == 'user' else 'AGENT'}: {' '.join(m.content.split())}"
                      for m in history[-_HISTORY_FOR_ROUTER:] if m.role != "system")
    numbered = "\n".join(f"{i}. {text}" for i, text in enumerate(options, 1))
    question = f"Question: {' '.join(node.prompt.split())}\n" if node.role == "decision" and node.prompt else ""
    return (f"Conversation so far:\n{convo or '(nothing yet)'}\n\nStep: {node.label or node.id}\n{question}"
            f"Which option holds now?\n{numbered}\n\nAnswer with one number from 1 to {len(options)}.")


def parse_choice(raw: str, options: list[str]) -> int | None:
    """0-based option index from a classifier answer: a number in range, else an option quoted verbatim."""
    text = raw.strip()
    for m in re.finditer(r"\d+", text):
        n = int(m.group())
        if 1 <= n <= len(options):
            return n - 1
        break  # the first number decides; a later one is usually part of an explanation
    low = text.lower()
    hits = [i for i, o in enumerate(options) if o.lower() and o.lower() in low]
    return hits[0] if len(hits) == 1 else None


def fallback_choice(edges: list[Edge], options: list[str], history: list[Message]) -> int:
    """Deterministic: most content words shared with the last customer message, then weight, then order."""
    last_user = next((m.content for m in reversed(history) if m.role == "user"), "")
    said = _words(last_user)
    texts = [" ".join([options[i], *e.examples]) for i, e in enumerate(edges)]
    scores = [(len(said & _words(t)), e.weight if e.weight is not None else 1.0, -i)
              for i, (e, t) in enumerate(zip(edges, texts, strict=True))]
    return -max(scores)[2]


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS and len(w) > 2}


def node_system_prompt(flow: Flow, node: Node) -> str:
    """The flow's persona plus this turn's instruction (the node prompt), placeholders as written."""
    persona = flow.system_prompt.strip()
    if node.role == "terminal":
        task = (f"The conversation is ending ({node.outcome or 'done'}"
                f"{': ' + node.label if node.label else ''}). Write one short, polite closing message.")
    else:
        task = " ".join(node.prompt.split()) or f"Carry out the step '{node.label or node.id}'."
    return f"{persona}\n\nYour task for this message: {task}\nWrite only your next message to the customer.".strip()


def ends_after(flow: Flow, node_id: str) -> bool:
    """True when every way on from this node leads straight to a terminal (this reply closes)."""
    outs = flow.out_edges(node_id)
    return bool(outs) and all(flow.node(e.target).role == "terminal" for e in outs if e.target in flow.node_map)
