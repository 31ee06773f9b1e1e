"""Side-by-side chat: the same customer messages to several agents, each streaming on its own.

The studio's `/chat` (and any other front end) holds one `SideBySide` per conversation. It has a
`ChatColumn` per agent (the compiled model, the in-context agent, optionally the surface orchestrator);
each column keeps its own history and turns, and runs its turns one after another (a lock), so a
slow column never blocks a fast one and a message typed while a column is still answering waits its
turn there. Every agent reply carries:

- usage: tokens in/out, calls, time to first token and total, its cost as hosted (self-hosted prices
  for a local model, the API's price for an API model: `engine.evaluate.cost`, `engine.backends.pricing`)
  and the same tokens at the configured API prices;
- the procedure step: the flowchart node the reply maps to (the conformance node mapper,
  `engine.evaluate.conformance.NodeMapper`), the node before it and whether the move is an edge of the
  flow (through user turns and decision hubs, as the valid-edge metric counts it).

Front ends pass an `on_event(ColumnEvent)` callback: status changes (loading, thinking), text deltas,
the finished message. Scenario presets and the simulated user come from `engine.evaluate.simulate`.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.agents.base import Agent, AgentReply
from engine.backends.base import Backend, Message, Sampling, get_backend, is_local_backend
from engine.errors import ServingError, SubterraError
from engine.evaluate.conformance import NodeMapper, agent_successors, first_moves
from engine.evaluate.cost import PriceTable, api_usd, price_table, self_hosted_usd
from engine.evaluate.simulate import LLMUser, Scenario, ScriptedUser, UserSimulator, sample_scenarios
from engine.flow import Flow

SCENARIO_POOL = 12  # presets are drawn from this many path-covering scenarios
Status = Literal["idle", "loading", "thinking", "streaming", "error", "closed"]


class TurnUsage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_tokens: int = Field(description="Prompt tokens of the turn (cached ones included).")
    output_tokens: int = Field(description="Generated tokens.")
    calls: int = Field(1, description="LLM calls of the turn (orchestrators route with extra calls).")
    ttft_s: float | None = Field(None, description="Seconds from sending to the first streamed text.")
    latency_s: float = Field(description="Seconds from sending to the end of the reply.")
    cost_usd: float = Field(description="The turn's cost as hosted (self-hosted or the API's price).")
    api_equivalent_usd: float = Field(description="The same tokens at the configured API prices.")
    hosting: Literal["self", "api"] = Field(description="self: runs on our own GPU/CPU; api: a paid API.")


class NodeStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    node: str | None = Field(description="Node the reply maps to (None: below the mapper's confidence).")
    best: str = Field("", description="Best-scoring node even when unmatched.")
    score: float = Field(0.0, description="Cosine similarity of the reply to that node.")
    previous: str | None = Field(None, description="The node the conversation was at (None: before the start).")
    on_edge: bool | None = Field(None, description="The move previous → node is allowed by the flow.")
    reported: str | None = Field(None, description="Node the agent itself says it enacted (orchestrators).")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    content: str
    by: Literal["person", "simulator", "agent"]
    usage: TurnUsage | None = None
    step: NodeStep | None = None
    error: str | None = Field(None, description="Why the reply failed (its text is then empty).")


class ColumnEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    column: str
    kind: Literal["status", "user", "delta", "message", "error"]
    status: Status = "idle"
    text: str = Field("", description="delta: the new text; status: a sentence for the person.")
    message: ChatMessage | None = None


OnEvent = Callable[[ColumnEvent], None]


def _quiet(event: ColumnEvent) -> None:
    return None


class ChatColumn:
    """One agent's side of the conversation."""

    def __init__(self, key: str, title: str, agent: Agent, flow: Flow, mapper: NodeMapper, table: PriceTable,
                 hosting: Literal["self", "api"]):
        self.key, self.title, self.agent, self.flow = key, title, agent, flow
        self.mapper, self.table, self.hosting = mapper, table, hosting
        self.lock = asyncio.Lock()
        self.status: Status = "idle"
        self.draft = ""
        self.reset()

    def reset(self) -> None:
        self.epoch = getattr(self, "epoch", 0) + 1  # a turn or simulation still running from before stops
        self.session = self.agent.session()
        self.messages: list[ChatMessage] = []
        self.path: list[str] = []  # mapped agent nodes, in order
        self.closed = False
        self.draft = ""
        self.status = "idle"

    @property
    def history(self) -> list[Message]:
        return [Message(role=m.role, content=m.content) for m in self.messages if not m.error]

    @property
    def can_open(self) -> bool:
        """Whether the agent can speak first (an orchestrator on a flow that starts with the customer cannot)."""
        if self.agent.kind in ("orchestrator", "langgraph"):
            start = self.flow.node_map.get(self.flow.start)
            return start is None or start.role != "user"
        return True

    # -- totals -----------------------------------------------------------------------------------
    def replies(self) -> list[ChatMessage]:
        return [m for m in self.messages if m.role == "assistant" and m.usage is not None]

    @property
    def cost_usd(self) -> float:
        return sum(m.usage.cost_usd for m in self.replies() if m.usage)

    @property
    def api_equivalent_usd(self) -> float:
        return sum(m.usage.api_equivalent_usd for m in self.replies() if m.usage)

    @property
    def tokens(self) -> tuple[int, int]:
        rs = [m.usage for m in self.replies() if m.usage]
        return sum(u.input_tokens for u in rs), sum(u.output_tokens for u in rs)

    # -- turns ------------------------------------------------------------------------------------
    async def say(self, text: str, by: Literal["person", "simulator"] = "person", on_event: OnEvent = _quiet,
                  variables: dict[str, Any] | None = None) -> ChatMessage | None:
        """Add the customer's message and stream the agent's reply (after any turn still running)."""
        async with self.lock:
            msg = ChatMessage(role="user", content=text, by=by)
            self.messages.append(msg)
            on_event(ColumnEvent(column=self.key, kind="user", message=msg, status=self.status))
            if self.closed:
                on_event(self._status("closed", "the agent closed the conversation; reset to start over"))
                return None
            return await self._reply(on_event, variables)

    async def open(self, on_event: OnEvent = _quiet, variables: dict[str, Any] | None = None) -> ChatMessage | None:
        """The agent's greeting, when nobody has spoken yet (a support widget opening)."""
        async with self.lock:
            if self.messages:
                return None
            if not self.can_open:
                on_event(self._status("idle", "waiting for the customer's first message"))
                return None
            return await self._reply(on_event, variables)

    async def _reply(self, on_event: OnEvent, variables: dict[str, Any] | None) -> ChatMessage:
        backend = getattr(self.agent, "backend", None)
        loading = backend is not None and getattr(backend, "loaded", True) is False
        on_event(self._status("loading" if loading else "thinking",
                              f"loading {self.agent.model} (first reply on CPU takes a while)" if loading
                              else "thinking"))
        self.draft = ""
        epoch = self.epoch
        t0 = time.perf_counter()
        ttft: float | None = None
        reply: AgentReply | None = None
        try:
            async for d in self.session.stream(self.history):
                if self.epoch != epoch:
                    raise ResetError("the conversation was reset")
                if d.delta:
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                        on_event(self._status("streaming", ""))
                    self.draft += d.delta
                    on_event(ColumnEvent(column=self.key, kind="delta", text=d.delta, status="streaming"))
                if d.reply is not None:
                    reply = d.reply
            if reply is None:
                raise ServingError(f"{self.agent.spec} ended its reply without a result")
        except ResetError:
            return ChatMessage(role="assistant", content="", by="agent", error="reset")
        except (SubterraError, OSError, ValueError) as e:
            msg = ChatMessage(role="assistant", content="", by="agent", error=str(e) or type(e).__name__)
            self.messages.append(msg)
            self.draft = ""
            self.status = "error"
            on_event(ColumnEvent(column=self.key, kind="error", status="error", text=msg.error or "", message=msg))
            return msg
        latency = time.perf_counter() - t0
        usage = self._usage(reply, ttft, latency)
        step = await asyncio.to_thread(self._step, reply.text, reply.node_id, variables)
        if self.epoch != epoch:
            return ChatMessage(role="assistant", content="", by="agent", error="reset")
        msg = ChatMessage(role="assistant", content=reply.text, by="agent", usage=usage, step=step)
        self.messages.append(msg)
        if step.node:
            self.path.append(step.node)
        self.closed = reply.done
        self.draft = ""
        self.status = "closed" if reply.done else "idle"
        on_event(ColumnEvent(column=self.key, kind="message", message=msg, status=self.status))
        return msg

    def _usage(self, reply: AgentReply, ttft: float | None, latency: float) -> TurnUsage:
        u = reply.usage
        api_eq = api_usd(u, self.table, None)
        cost = api_usd(u, self.table, self.agent.model) if self.hosting == "api" else self_hosted_usd(u, self.table)
        return TurnUsage(input_tokens=u.input_tokens + u.cache_read_tokens + u.cache_write_tokens,
                         output_tokens=u.output_tokens, calls=reply.calls, ttft_s=reply.ttft_s or ttft,
                         latency_s=latency, cost_usd=cost, api_equivalent_usd=api_eq, hosting=self.hosting)

    def _step(self, text: str, reported: str | None, variables: dict[str, Any] | None) -> NodeStep:
        said = [m for m in self.messages if m.content]
        start = self.flow.node_map.get(self.flow.start)
        greeted = (start is not None and start.role == "agent" and bool(said) and said[0].role == "user"
                   and not any(m.role == "assistant" for m in said))  # the person spoke before its greeting
        return map_step(self.flow, self.mapper, self.path[-1] if self.path else None, text, reported, variables,
                        greeted)

    def _status(self, status: Status, text: str) -> ColumnEvent:
        self.status = status
        return ColumnEvent(column=self.key, kind="status", status=status, text=text)


class ResetError(Exception):
    """A turn overtaken by a reset of its column (its reply is dropped, not shown)."""


def map_step(flow: Flow, mapper: NodeMapper, previous: str | None, text: str, reported: str | None = None,
             variables: dict[str, Any] | None = None, greeted: bool = False) -> NodeStep:
    """The node a reply maps to and whether reaching it from `previous` follows an edge of the flow;
    `greeted`: the person spoke first and this is the first reply (it may greet, then take the next step)."""
    match = mapper.map([text], variables, greeted=greeted)[0]
    on_edge = None
    if match.node is not None:
        first = first_moves(flow, greeted) if previous is None else agent_successors(flow, previous)[0]
        on_edge = match.node in first
    return NodeStep(node=match.node, best=match.best, score=match.score, previous=previous, on_edge=on_edge,
                    reported=reported)


# ----------------------------------------------------------------------------------------------
# the side-by-side session


class ColumnConfig(BaseModel):
    """One column as the person configures it; `build_column` turns it into an agent."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["compiled", "in-context", "orchestrator"]
    model: str = Field("smollm2-135m", description="compiled: a registry name or model directory; others: "
                                                   "the backend's model (local: a directory or smollm2-135m).")
    backend: str = Field("local", description="Backend of in-context / orchestrator columns.")
    base_url: str | None = Field(None, description="An OpenAI-compatible endpoint (vLLM, subterra serve, "
                                                   "a provider); for compiled: where the model is served.")
    max_tokens: int = Field(256, gt=0, description="Longest reply, in tokens.")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature (0: greedy).")
    worker: bool = Field(True, description="Run local models in a worker process (the page never freezes).")


TITLES = {"compiled": "Compiled model", "in-context": "In-context agent", "orchestrator": "Surface orchestrator"}


class SideBySide:
    """Several columns on one flow, one scenario (optional), one price table."""

    def __init__(self, flow: Flow, columns: list[ChatColumn], mapper: NodeMapper, table: PriceTable):
        self.flow, self.columns, self.mapper, self.table = flow, columns, mapper, table
        self.scenario: Scenario | None = None
        self.created = time.time()

    @classmethod
    def build(cls, flow: Flow, configs: list[ColumnConfig], table: PriceTable | None = None,
              mapper: NodeMapper | None = None) -> SideBySide:
        table = table or price_table()
        mapper = mapper or NodeMapper(flow)
        keys: dict[str, int] = {}
        columns = []
        for cfg in configs:
            keys[cfg.kind] = keys.get(cfg.kind, 0) + 1
            key = cfg.kind if keys[cfg.kind] == 1 else f"{cfg.kind}-{keys[cfg.kind]}"
            agent, hosting = build_agent(flow, cfg)
            columns.append(ChatColumn(key, TITLES[cfg.kind], agent, flow, mapper, table, hosting))
        return cls(flow, columns, mapper, table)

    def column(self, key: str) -> ChatColumn:
        return next(c for c in self.columns if c.key == key)

    @property
    def variables(self) -> dict[str, Any] | None:
        return self.scenario.variables if self.scenario else None

    def reset(self) -> None:
        for c in self.columns:
            c.reset()

    async def send(self, text: str, on_event: OnEvent = _quiet) -> list[ChatMessage | None]:
        """The same message to every column, each answering on its own."""
        return list(await asyncio.gather(*(c.say(text, "person", on_event, self.variables) for c in self.columns)))

    async def open(self, on_event: OnEvent = _quiet) -> list[ChatMessage | None]:
        return list(await asyncio.gather(*(c.open(on_event, self.variables) for c in self.columns)))

    # -- scenarios and the simulated user ----------------------------------------------------------
    def sample_scenario(self, seed: int = 0) -> Scenario:
        self.scenario = scenario_preset(self.flow, seed)
        return self.scenario

    async def simulate(self, turns: int, simulator: str = "scripted", simulator_model: str | None = None,
                       on_event: OnEvent = _quiet) -> None:
        """The simulated user plays the customer for up to `turns` messages in every column at once."""
        scenario = self.scenario or self.sample_scenario()
        backend: Backend | None = None
        if simulator != "scripted":
            backend = get_backend(simulator, **({"model": simulator_model} if simulator_model else {}))
        try:
            await asyncio.gather(*(self._simulate_column(c, scenario, turns, backend, on_event) for c in self.columns))
        finally:
            if backend is not None:
                await backend.aclose()

    async def _simulate_column(self, column: ChatColumn, scenario: Scenario, turns: int, backend: Backend | None,
                               on_event: OnEvent) -> None:
        sim: UserSimulator = (ScriptedUser(self.flow, scenario, self.mapper) if backend is None
                              else LLMUser(self.flow, scenario, backend))
        variables = scenario.variables
        epoch = column.epoch
        said = 0
        if not column.messages:
            first = await sim.opening()
            if first is not None and first.text:
                await column.say(first.text, "simulator", on_event, variables)
                said += 1
            else:
                await column.open(on_event, variables)
        while said < turns and not column.closed and column.status != "error" and column.epoch == epoch:
            turn = await sim.reply(column.history)
            if column.epoch != epoch:
                return
            if turn.text is None:
                on_event(column._status(column.status, "the simulated user has nothing left to say"))
                return
            await column.say(turn.text, "simulator", on_event, variables)
            said += 1

    # -- cost ---------------------------------------------------------------------------------------
    def cost_ratio(self, other: str, compiled: str = "compiled") -> float | None:
        """The other column's conversation cost at API prices ÷ the compiled column's self-hosted cost
        (the paper's comparison, as the evaluation report's cost pairs compute it)."""
        try:
            a, b = self.column(compiled), self.column(other)
        except StopIteration:
            return None
        versus = b.cost_usd if b.hosting == "api" else b.api_equivalent_usd
        return versus / a.cost_usd if a.cost_usd > 0 else None

    # -- copy and save --------------------------------------------------------------------------------
    def transcript(self) -> dict[str, Any]:
        return {
            "flow": self.flow.name, "created": self.created,
            "scenario": self.scenario.model_dump(mode="json") if self.scenario else None,
            "columns": [{"key": c.key, "title": c.title, "agent": c.agent.spec, "model": c.agent.model,
                         "hosting": c.hosting, "cost_usd": c.cost_usd, "api_equivalent_usd": c.api_equivalent_usd,
                         "path": c.path, "messages": [m.model_dump(mode="json") for m in c.messages]}
                        for c in self.columns],
        }

    def transcript_text(self) -> str:
        """Plain text for the clipboard: each column's conversation with its per-turn numbers."""
        out = [f"subterra chat on flow {self.flow.name}"]
        for c in self.columns:
            out += ["", f"== {c.title} ({c.agent.spec}) · ${c.cost_usd:.6f} =="]
            for m in c.messages:
                who = "customer" if m.role == "user" else "agent"
                line = f"{who}: {m.content or '(error: ' + (m.error or '') + ')'}"
                if m.usage:
                    line += (f"  [{m.usage.input_tokens} in / {m.usage.output_tokens} out, "
                             f"{m.usage.latency_s:.2f} s, ${m.usage.cost_usd:.6f}"
                             f"{', node ' + m.step.node if m.step and m.step.node else ''}]")
                out.append(line)
        return "\n".join(out)

    def save(self, folder: str | Path | None = None) -> Path:
        """Write the transcript as JSON under the data dir's `chats/` folder; returns the file."""
        from engine.store import data_dir

        out = Path(folder) if folder else data_dir() / "chats"
        out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime())
        path = out / f"{self.flow.name}-{stamp}.json"
        n = 1
        while path.exists():
            n += 1
            path = out / f"{self.flow.name}-{stamp}-{n}.json"
        path.write_text(json.dumps(self.transcript(), indent=1))
        return path

    async def aclose(self) -> None:
        for c in self.columns:
            await c.agent.aclose()


def scenario_preset(flow: Flow, seed: int = 0) -> Scenario:
    """A scenario preset: one of a pool of scenarios that covers the flow's paths, drawn by `seed`."""
    pool = sample_scenarios(flow, SCENARIO_POOL, seed=seed)
    return random.Random(seed).choice(pool)


def build_agent(flow: Flow, cfg: ColumnConfig) -> tuple[Agent, Literal["self", "api"]]:
    """The agent a column config names, and how it is hosted (for its prices)."""
    sampling = Sampling(temperature=cfg.temperature, max_tokens=cfg.max_tokens)
    if cfg.kind == "compiled":
        from engine.agents.compiled import CompiledAgent

        model_dir = resolve_model(cfg.model)
        if cfg.base_url:
            return CompiledAgent(model_dir, flow=flow, base_url=cfg.base_url, sampling=sampling), "self"
        backend = _local_backend(str(model_dir), cfg.worker)
        return CompiledAgent(model_dir, flow=flow, sampling=sampling, backend=backend,
                             spec=f"compiled:{model_dir}"), "self"
    if cfg.backend == "local":
        backend = _local_backend(cfg.model or "smollm2-135m", cfg.worker)
    else:
        opts: dict[str, Any] = {"base_url": cfg.base_url} if cfg.base_url else {}
        if cfg.model and cfg.model != "smollm2-135m":
            opts["model"] = cfg.model
        backend = get_backend(cfg.backend, **opts)
    hosting: Literal["self", "api"] = "self" if is_local_backend(cfg.backend) else "api"
    spec = f"{cfg.kind}:{flow.name}@{cfg.backend}:{backend.model}"
    if cfg.kind == "in-context":
        from engine.agents.in_context import InContextAgent

        return InContextAgent(flow, backend, sampling=sampling, spec=spec), hosting
    from engine.agents.orchestrator import OrchestratorAgent

    return OrchestratorAgent(flow, backend, sampling=sampling, spec=spec), hosting


def resolve_model(name_or_dir: str) -> Path:
    """A registry name or a model directory → the model directory."""
    from engine.agents.compiled import check_model_dir

    p = Path(name_or_dir).expanduser()
    if p.is_dir():
        return check_model_dir(p)
    from engine.registry import get_model

    return check_model_dir(get_model(name_or_dir).path)


def _local_backend(model: str, worker: bool) -> Backend:
    if worker:
        from engine.agents.worker import WorkerBackend

        return WorkerBackend(model)
    return get_backend("local", model=model)
