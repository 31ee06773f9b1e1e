"""Chat side by side (/chat): the compiled model beside the in-context agent (and optionally the surface
orchestrator), one input box for all, replies streaming in each column on its own; under every reply
its tokens, latency and cost and the flowchart node it maps to; a small map of the path so far.

`/chat?model=NAME` opens on a registry model (the compile panel links here); `flow=`, `backend=`,
`backend_model=`, `base_url=`, `orchestrator=1` and `max_tokens=` preset the other columns. The
Evaluate tab runs evaluations (ui/pages/evaluate_panel.py). The session logic is the engine's
(`engine.agents.session`); local models run in worker processes, so the page never waits on them.
"""

from __future__ import annotations

import os
from typing import Any

from nicegui import background_tasks, ui

from engine.agents.session import ChatColumn, ChatMessage, ColumnConfig, ColumnEvent, NodeStep, SideBySide
from engine.backends.base import backend_names
from engine.errors import SubterraError
from engine.flow import Flow
from engine.registry import list_models
from engine.store import Store, load_flow
from ui import theme
from ui.frame import frame

BACKENDS = ("local", "anthropic", "openai")
BASE_MODEL = "smollm2-135m"
STATUS_TEXT = {"loading": "loading the model…", "thinking": "thinking…", "streaming": "answering…",
               "idle": "", "error": "error", "closed": "conversation closed"}


def create() -> None:
    @ui.page("/chat")
    def chat_page(model: str | None = None, flow: str | None = None, backend: str = "local",
                        backend_model: str | None = None, base_url: str | None = None, orchestrator: int = 0,
                        max_tokens: int = 256, tab: str = "chat") -> None:
        from ui.pages import evaluate_panel

        with frame("Chat and evaluate"):
            page = ChatPage(Store(), model=model, flow=flow, backend=backend, backend_model=backend_model,
                            base_url=base_url, orchestrator=bool(orchestrator), max_tokens=max_tokens)
            def on_tab(e: Any) -> None:
                if e.value == "chat" and page.chat is None and not page.starting:
                    background_tasks.create(page.start(), name="chat-start")

            with ui.tabs(on_change=on_tab).classes("w-full").props("align=left no-caps") as tabs:
                chat_tab = ui.tab("chat", "Chat side by side").mark("tab-chat")
                eval_tab = ui.tab("evaluate", "Evaluate").mark("tab-evaluate")
            with ui.tab_panels(tabs, value=eval_tab if tab == "evaluate" else chat_tab).classes("w-full"):
                with ui.tab_panel(chat_tab).classes("p-0"):
                    page.build()
                with ui.tab_panel(eval_tab).classes("p-0"):
                    evaluate_panel.EvaluatePanel(Store(), flow=page.flow_name, model=page.model_name).build()
        if tab != "evaluate":  # the chat starts its models when it is shown
            ui.timer(0.05, page.start, once=True)  # timers run once the browser is connected


def model_choices(store: Store) -> dict[str, str]:
    """Registry models first (newest first), then the bundled base model."""
    out = {m.name: f"{m.name} ({m.flow or 'no flow'})" for m in list_models(store)}
    out[BASE_MODEL] = f"{BASE_MODEL} (bundled base model, not compiled)"
    return out


class ChatPage:
    def __init__(self, store: Store, model: str | None, flow: str | None, backend: str = "local",
                 backend_model: str | None = None, base_url: str | None = None, orchestrator: bool = False,
                 max_tokens: int = 256):
        self.store = store
        self.models = model_choices(store)
        self.model_name = model if model else next(iter(self.models))
        self.models.setdefault(self.model_name, self.model_name)  # an unknown name is refused by start()
        self.flow_name = flow or self._flow_of(self.model_name) or "travel"
        self.backend = backend if backend in BACKENDS else "local"
        self.backend_model = backend_model or (BASE_MODEL if self.backend == "local" else "")
        self.base_url = base_url or ""
        self.orchestrator = orchestrator
        self.max_tokens = max_tokens
        self.chat: SideBySide | None = None
        self.views: dict[str, ColumnView] = {}
        self.sim_turns = 3
        self.simulator = "scripted"
        self.seed = 0
        self.tasks: list[Any] = []
        self.starting = False

    def _flow_of(self, model: str) -> str | None:
        try:
            from engine.registry import get_model

            return get_model(model, self.store).flow
        except SubterraError:
            return None

    # -- layout ---------------------------------------------------------------------------------
    def build(self) -> None:
        flows = [f["name"] for f in self.store.list_flows()]
        if self.flow_name not in flows:
            flows.append(self.flow_name)
        with ui.card().classes("w-full py-2").mark("chat-settings"):
            with ui.row().classes("w-full items-end gap-3"):
                ui.select(self.models, value=self.model_name, label="Compiled model") \
                    .bind_value(self, "model_name").classes("w-64").mark("model-select")
                ui.select(flows, value=self.flow_name, label="Flow").bind_value(self, "flow_name") \
                    .classes("w-40").mark("flow-select")
                ui.select(backend_labels(), value=self.backend, label="In-context backend") \
                    .bind_value(self, "backend").classes("w-36").mark("backend-select")
                ui.input("Model", value=self.backend_model).bind_value(self, "backend_model") \
                    .classes("w-56").mark("backend-model").tooltip(
                        "local: smollm2-135m or a model directory; anthropic: e.g. claude-sonnet-4-5; "
                        "openai: the served model's name")
                ui.input("Base URL (optional)", value=self.base_url).bind_value(self, "base_url") \
                    .classes("w-56").mark("base-url").tooltip("An OpenAI-compatible endpoint (vLLM, subterra serve)")
                ui.checkbox("Surface orchestrator", value=self.orchestrator).bind_value(self, "orchestrator") \
                    .mark("orchestrator")
                ui.number("Max tokens", value=self.max_tokens, min=1, max=4096, precision=0) \
                    .bind_value(self, "max_tokens", forward=lambda v: int(v or 256)).classes("w-28") \
                    .mark("max-tokens")
                ui.button("Start", icon="play_arrow", on_click=self.start).props("no-caps").mark("start")
            self.error = ui.label("").classes("text-negative").mark("chat-error")
            self.error.set_visibility(False)
        with ui.row().classes("w-full items-center gap-2"):
            ui.number("Scenario #", value=self.seed, min=0, precision=0) \
                .bind_value(self, "seed", forward=lambda v: int(v or 0)).classes("w-24").mark("scenario-seed") \
                .tooltip("Which preset: the same number gives the same customer")
            ui.button("New scenario", icon="casino", on_click=self.new_scenario).props("no-caps outline") \
                .mark("new-scenario")
            ui.number("Turns", value=self.sim_turns, min=1, max=50, precision=0) \
                .bind_value(self, "sim_turns", forward=lambda v: int(v or 1)).classes("w-20").mark("sim-turns")
            ui.select(backend_names(), value=self.simulator, label="Simulated user") \
                .bind_value(self, "simulator").classes("w-36").mark("simulator")
            ui.button("Let the simulated user play", icon="smart_toy", on_click=self.play) \
                .props("no-caps").mark("play")
            ui.space()
            ui.button("Reset", icon="restart_alt", on_click=self.reset).props("flat no-caps").mark("reset")
            ui.button("Copy", icon="content_copy", on_click=self.copy).props("flat no-caps").mark("copy")
            ui.button("Save", icon="save", on_click=self.save).props("flat no-caps").mark("save")
        self.role_card = ui.column().classes("w-full")
        self.columns_row = ui.row().classes("w-full no-wrap items-start gap-3").mark("columns")
        with ui.row().classes("w-full items-center gap-2"):
            self.input = ui.input(placeholder="Write as the customer; every column gets the message") \
                .classes("grow st-chat-input").props("outlined dense").mark("chat-input").on("keydown.enter", self.send)
            ui.button("Send", icon="send", on_click=self.send).props("no-caps").mark("send")
            self.ratio = ui.label("").classes("text-caption text-grey-8").mark("cost-ratio")

    # -- actions ------------------------------------------------------------------------------------
    def configs(self) -> list[ColumnConfig]:
        mt = int(self.max_tokens or 256)
        extra = {"backend": self.backend, "model": (self.backend_model or "").strip() or BASE_MODEL,
                 "base_url": (self.base_url or "").strip() or None, "max_tokens": mt}
        out = [ColumnConfig(kind="compiled", model=self.model_name, max_tokens=mt),
               ColumnConfig(kind="in-context", **extra)]
        if self.orchestrator:
            out.append(ColumnConfig(kind="orchestrator", **extra))
        return out

    async def start(self) -> None:
        """(Re)build the columns for the chosen agents and let each greet."""

        if self.starting:
            return
        self.starting = True
        try:
            await self._start()
        finally:
            self.starting = False

    async def _start(self) -> None:
        import asyncio

        self.error.set_visibility(False)
        for task in self.tasks:
            task.cancel()
        self.columns_row.clear()
        with self.columns_row:
            ui.spinner(size="lg").mark("building")
        try:
            flow = load_flow(self.flow_name, self.store)
            # the node mapper loads MiniLM and workers start processes: off the event loop
            chat = await asyncio.to_thread(SideBySide.build, flow, self.configs())
        except (SubterraError, ValueError) as e:
            self.columns_row.clear()
            self.show_error(str(e))
            return
        if self.chat is not None:
            await self.chat.aclose()
        self.chat = chat
        self.columns_row.clear()
        self.views = {}
        with self.columns_row:
            for col in chat.columns:
                self.views[col.key] = ColumnView(col, flow)
        self.update_ratio()
        self.track(chat.open(self.on_event), "chat-open")

    def track(self, coro: Any, name: str) -> None:
        self.tasks = [t for t in self.tasks if not t.done()]
        self.tasks.append(background_tasks.create(coro, name=name))

    def show_error(self, text: str) -> None:
        self.error.set_text(text.splitlines()[0] if text else "something went wrong")
        self.error.set_visibility(True)

    def send(self) -> None:
        text = (self.input.value or "").strip()
        if not text:
            return
        if self.chat is None:
            ui.notify("Start the chat first", type="warning")
            return
        self.input.set_value("")
        chat = self.chat
        for col in chat.columns:  # one task per column: a slow one never holds up the others
            self.track(col.say(text, "person", self.on_event, chat.variables), f"say-{col.key}")

    def new_scenario(self) -> None:
        if self.chat is None:
            ui.notify("Start the chat first", type="warning")
            return
        scenario = self.chat.sample_scenario(seed=int(self.seed or 0))
        self.shown_seed = int(self.seed or 0)
        self.seed = self.shown_seed + 1  # the next click draws the next preset
        self.role_card.clear()
        with self.role_card, ui.card().classes("w-full bg-orange-50").mark("role-card"):
            ui.label(f"Role card #{self.shown_seed}: you are the customer").classes("text-subtitle2")
            with ui.row().classes("gap-6"):
                for k, v in scenario.variables.items():
                    if k not in scenario.persona:
                        with ui.column().classes("gap-0"):
                            ui.label(k.replace("_", " ")).classes("text-caption text-grey-7")
                            ui.label(str(v)).mark(f"role-{k}")
            goal = scenario.expected_outcome or "—"
            ui.label(f"Style: {scenario.persona.get('user_style')}, mood: {scenario.persona.get('satisfaction')}, "
                     f"challenge: {scenario.persona.get('challenge')}; this conversation should end: {goal} "
                     f"({len(scenario.path)} steps on the flow)").classes("text-caption")

    def play(self) -> None:
        if self.chat is None:
            ui.notify("Start the chat first", type="warning")
            return
        if self.chat.scenario is None:
            self.new_scenario()
        chat, turns, sim = self.chat, int(self.sim_turns or 1), self.simulator

        async def run() -> None:
            try:
                await chat.simulate(turns, sim, on_event=self.on_event)
            except SubterraError as e:
                self.show_error(str(e))

        self.track(run(), "chat-simulate")

    async def reset(self) -> None:
        if self.chat is None:
            return
        for task in self.tasks:  # what still runs belongs to the old conversation
            task.cancel()
        self.tasks = []
        self.chat.reset()
        for view in self.views.values():
            view.clear()
        self.update_ratio()
        self.track(self.chat.open(self.on_event), "chat-open")

    def copy(self) -> None:
        if self.chat is not None:
            ui.clipboard.write(self.chat.transcript_text())
            ui.notify("Conversation copied")

    def save(self) -> None:
        if self.chat is None:
            return
        path = self.chat.save()
        ui.notify(f"Saved to {path}")
        self.saved = str(path)

    # -- events from the session ---------------------------------------------------------------------
    def on_event(self, event: ColumnEvent) -> None:
        view = self.views.get(event.column)
        if view is None or (self.chat is not None and view.column not in self.chat.columns):
            return
        view.handle(event)
        if event.kind == "message":
            self.update_ratio()

    def update_ratio(self) -> None:
        if self.chat is None:
            return
        parts = []
        for col in self.chat.columns:
            if col.agent.kind == "compiled":
                continue
            r = self.chat.cost_ratio(col.key)
            if r is not None:
                parts.append(f"{col.title}: {r:,.1f}× the compiled model's cost per conversation (at API prices)")
        self.ratio.set_text("; ".join(parts))


class ColumnView:
    """One column on the page: header, the messages (the last one growing while it streams), the tracker."""

    def __init__(self, column: ChatColumn, flow: Flow):
        self.column, self.flow = column, flow
        with ui.card().classes(f"grow basis-0 min-w-0 st-col st-col-{column.key}").mark(f"column-{column.key}"):
            with ui.row().classes("w-full items-center gap-2"):
                ui.label(column.title).classes("text-subtitle1 font-semibold")
                ui.badge("API" if column.hosting == "api" else "self-hosted").props("outline")
                ui.space()
                self.spinner = ui.spinner(size="sm")
                self.spinner.set_visibility(False)
            ui.label(column.agent.spec).classes("text-caption text-grey-7 break-all")
            self.status = ui.label("").classes("text-caption text-grey-8 st-status").mark("status")
            self.messages = ui.column().classes("w-full gap-2").mark("messages")
            self.live: ui.label | None = None
            ui.separator()
            self.total = ui.label("").classes("text-caption").mark("column-cost")
            with ui.expansion("Procedure", icon="account_tree", value=True).classes("w-full").mark("tracker"):
                self.path = ui.label("no agent reply yet").classes("text-caption").mark("path")
                self.map = ui.mermaid(flow_map(flow, [], []), config={"securityLevel": "loose"}) \
                    .classes("w-full max-h-96 overflow-auto").mark("flow-map")
        self.update_total()

    def clear(self) -> None:
        self.messages.clear()
        self.live = None
        self.status.set_text("")
        self.path.set_text("no agent reply yet")
        self.map.set_content(flow_map(self.flow, [], []))
        self.update_total()

    def handle(self, event: ColumnEvent) -> None:
        busy = event.status in ("loading", "thinking", "streaming")
        self.spinner.set_visibility(busy)
        if event.kind == "status":
            self.status.set_text(event.text or STATUS_TEXT.get(event.status, ""))
        elif event.kind == "user" and event.message is not None:
            self._bubble(event.message)
        elif event.kind == "delta":
            if self.live is None:
                with self.messages, ui.card().classes("w-full bg-blue-50 p-2 st-streaming") \
                        .mark("agent-msg streaming") as card:
                    self.live = ui.label("").classes("whitespace-pre-wrap st-agent-text").mark("agent-text")
                self.live_card = card
            self.live.set_text(self.column.draft)
            self.status.set_text(STATUS_TEXT["streaming"])
        elif event.kind in ("message", "error") and event.message is not None:
            if self.live is not None:
                self.live_card.delete()
                self.live = None
            self._bubble(event.message)
            self.status.set_text(event.text if event.kind == "error" else STATUS_TEXT.get(event.status, ""))
            self.update_total()
            self.update_tracker()

    def _bubble(self, m: ChatMessage) -> None:
        with self.messages:
            if m.role == "user":
                with ui.card().classes("w-full bg-orange-50 p-2 items-end st-user").mark("user-msg"):
                    who = "simulated customer" if m.by == "simulator" else "you"
                    ui.label(who).classes("text-caption text-grey-7 st-who")
                    ui.label(m.content).classes("whitespace-pre-wrap").mark("user-text")
                return
            with ui.card().classes("w-full bg-blue-50 p-2 st-done").mark("agent-msg done"):
                if m.error:
                    ui.label(m.error).classes("text-negative").mark("agent-error")
                    return
                ui.label(m.content or "(empty reply)").classes("whitespace-pre-wrap st-agent-text").mark("agent-text")
                if m.usage:
                    u = m.usage
                    first = f"first token {u.ttft_s:.2f} s · " if u.ttft_s is not None else ""
                    ui.label(f"{u.input_tokens} in · {u.output_tokens} out · {first}total {u.latency_s:.2f} s · "
                             f"{usd(u.cost_usd)}").classes("text-caption text-grey-8").mark("turn-stats")
                if m.step:
                    step_badge(m.step, self.flow)

    def update_total(self) -> None:
        c = self.column
        tin, tout = c.tokens
        api = "" if c.hosting == "api" else f" (same tokens at API prices {usd(c.api_equivalent_usd)})"
        self.total.set_text(f"conversation: {usd(c.cost_usd)}{api} · {tin} tokens in, {tout} out · "
                            f"{len(c.replies())} replies")

    def update_tracker(self) -> None:
        steps = [m.step for m in self.column.messages if m.step is not None]
        if steps:
            self.path.set_text(" → ".join(
                (s.node or "?") + ("" if s.on_edge is not False else " ✗") for s in steps))
        self.map.set_content(flow_map(self.flow, self.column.path, steps))


def step_badge(step: NodeStep, flow: Flow) -> None:
    if step.node is None:
        ui.badge(f"unmatched (closest: {step.best}, {step.score:.2f})", color="grey").classes("st-node-badge") \
            .mark("node-badge") \
            .tooltip("No node of the flow is close enough to this reply")
        return
    label = flow.node(step.node).display if step.node in flow.node_map else step.node
    ok = step.on_edge is not False
    color = "positive" if ok else "negative"
    move = f"{step.previous or 'start'} → {step.node}"
    with ui.row().classes("items-center gap-1"):
        ui.badge(f"node: {step.node}", color=color).classes("st-node-badge").mark("node-badge") \
            .tooltip(f"{label} (similarity {step.score:.2f})")
        ui.label(("edge of the flow" if ok else "not an edge of the flow") + f": {move}") \
            .classes("text-caption " + ("text-positive" if ok else "text-negative")).mark("edge-check")
        if step.reported and step.reported != step.node:
            ui.label(f"(orchestrator at {step.reported})").classes("text-caption text-grey-7")


def usd(x: float) -> str:
    return f"${x:.6f}" if x < 0.01 else f"${x:.4f}"


def flow_map(flow: Flow, path: list[str], steps: list[NodeStep]) -> str:
    """A Mermaid flowchart of the flow: nodes visited so far filled, the current one outlined, the edges
    the conversation took (through user turns and hubs) thickened."""
    ids = {n.id: f"n{i}" for i, n in enumerate(flow.nodes)}
    lines = ["flowchart TD"]
    for n in flow.nodes:
        text = (n.label or n.id).replace('"', "'")[:28]
        shape = {"agent": ('["', '"]'), "user": ('[/"', '"/]'), "decision": ('{"', '"}'),
                 "terminal": ('(["', '"])')}[n.role]
        lines.append(f"  {ids[n.id]}{shape[0]}{text}{shape[1]}")
    edges = [e for e in flow.edges if e.source in ids and e.target in ids]
    for e in edges:
        lines.append(f"  {ids[e.source]} --> {ids[e.target]}")
    taken: set[int] = set()
    prev = None
    for node in path:
        route = _route(flow, prev, node)
        for s, t in route:
            taken |= {i for i, e in enumerate(edges) if e.source == s and e.target == t}
        prev = node
    for role in theme.ROLE_COLORS:
        lines.append(f"  classDef {role} stroke:{theme.ROLE_COLORS[role]},fill:#fff,color:#111")
    lines.append(f"  classDef visited fill:{theme.HIGHLIGHT},stroke:#92400e,color:#111")
    lines.append("  classDef current fill:#fde047,stroke:#b91c1c,stroke-width:4px,color:#111")
    for n in flow.nodes:
        cls = "current" if path and n.id == path[-1] else "visited" if n.id in path else n.role
        lines.append(f"  class {ids[n.id]} {cls}")
    for i in sorted(taken):
        lines.append(f"  linkStyle {i} stroke:#b45309,stroke-width:4px")
    return "\n".join(lines)


def _route(flow: Flow, source: str | None, target: str) -> list[tuple[str, str]]:
    """The edges from `source` (None: the start) to agent node `target` through user turns and hubs only."""
    if source is None:
        if flow.start == target:
            return []
        source = flow.start
    frontier: list[tuple[str, list[tuple[str, str]]]] = [(source, [])]
    seen = {source}
    while frontier:
        nxt = []
        for cur, route in frontier:
            for e in flow.out_edges(cur):
                if e.target == target:
                    return route + [(cur, e.target)]
                if e.target in seen or e.target not in flow.node_map \
                        or flow.node(e.target).role in ("agent", "terminal"):
                    continue
                seen.add(e.target)
                nxt.append((e.target, route + [(cur, e.target)]))
        frontier = nxt
    return []


def backend_labels() -> dict[str, str]:
    """The in-context backends, each saying whether the environment configures it."""
    return {"local": "local (offline)",
            "anthropic": "anthropic" + ("" if os.environ.get("ANTHROPIC_API_KEY") else " (needs ANTHROPIC_API_KEY)"),
            "openai": "openai-compatible" + ("" if os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL")
                                             else " (give a base URL)")}
