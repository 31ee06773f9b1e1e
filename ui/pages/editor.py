"""The editor page (/flow/<name>): canvas, inspector, live problems, autosave and preview.

The page holds the flow being edited in an `Editor`. Every edit goes through `Editor.apply`, which
keeps the undo stack, re-validates, redraws the canvas and marks the flow for autosave; the autosave
timer writes a new version with `expected_version`, so a save made in another tab is detected
(VersionConflictError) and shown, never overwritten.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

from nicegui import run, ui

from engine import editing
from engine.backends import backend_names
from engine.errors import SubterraError, VersionConflictError
from engine.flow import ROLES, STANDARD_OUTCOMES, Flow
from engine.generate import preview_dialogue
from engine.paths import path_stats, sample_paths
from engine.store import Store
from engine.validate import Problem, validate
from ui import theme
from ui.components.flow_canvas import FlowCanvas, graph_of
from ui.frame import frame

T = TypeVar("T")
AUTOSAVE_SECONDS = 0.5
QUIET_SECONDS = 1.0  # typing is saved once it pauses this long, not on every keystroke
COALESCE_SECONDS = 2.0  # keystrokes in one field within this time are one undo step
UNDO_LIMIT = 200
PASTE_OFFSET = 40.0
# The canvas clipboard (Ctrl+C / Ctrl+V): one per studio process, so nodes copied in one flow's tab
# paste into another's; the studio is a single-user local app.
CLIPBOARD: dict[str, Any] = {}


def create() -> None:
    @ui.page("/flow/{name:path}")  # every stored name opens, even one stored with a '/' before the name rule
    async def editor_page(name: str, panel: str | None = None) -> None:
        store = Store()
        if not store.has_flow(name):
            with frame("Flow not found"):
                ui.label(f"There is no flow named '{name}'.").mark("not-found")
                ui.link("Back to the flow library", "/")
            return
        with frame(name):
            editor = Editor(store, name)
            editor.build()
        from ui.pages import flow_panels  # the generate and compile drawer (issue 10)

        flow_panels.attach(editor, panel)


class Editor:
    def __init__(self, store: Store, name: str):
        self.store = store
        self.flow: Flow = store.get_flow(name)
        self.version = store.flow_version(name)
        self.undo: list[Flow] = []
        self.redo: list[Flow] = []
        self.last_key: str | None = None
        self.last_time = 0.0
        self.dirty = False
        self.changed_at = 0.0
        self.conflict: int | None = None  # the other tab's version, once seen
        self.selected: tuple[str, str] | None = None  # ("node"|"edge", id)
        self.problems: list[Problem] = validate(self.flow)
        self.highlight: list[str] = []
        self.path: list[str] | None = None
        self.seed = 0
        self.pending_select: list[str] = []  # canvas ids to select at the next redraw (pasted nodes)
        self.history_at = self.version  # oldest stored version the undo stack has reached
        self.graph_hooks: list[Callable[[dict[str, Any]], dict[str, Any]]] = []  # panels decorate the canvas

    # -- layout ------------------------------------------------------------------------------------
    def build(self) -> None:
        self._toolbar()
        self._conflict_banner()
        with ui.row().classes("w-full no-wrap items-stretch gap-4"):
            with ui.card().classes("grow p-0").style("height: 72vh; min-width: 0"):
                self.canvas = FlowCanvas().classes("w-full h-full").mark("canvas")
            with ui.column().classes("w-96 shrink-0 gap-3"):
                with ui.card().classes("w-full"), ui.scroll_area().style("height: 40vh"):
                    self.inspector()
                with ui.card().classes("w-full"):
                    self.problem_list()
        with ui.card().classes("w-full"):
            self.preview()
        self.canvas.on("connect", lambda e: self.on_connect(e.args))
        self.canvas.on("moved", lambda e: self.on_moved(e.args))
        self.canvas.on("remove", lambda e: self.on_remove(e.args))
        self.canvas.on("select", lambda e: self.on_select(e.args))
        self.canvas.on("undo", lambda _: self.do_undo())
        self.canvas.on("redo", lambda _: self.do_redo())
        self._canvas_events()
        ui.timer(AUTOSAVE_SECONDS, self.flush)
        ui.context.client.on_disconnect(self.on_close)
        self.draw()
        ui.timer(0.5, self.load_stats, once=True)

    def _toolbar(self) -> None:
        with ui.row().classes("w-full items-center gap-2"):
            for role in ROLES:
                ui.button(theme.ROLE_NAMES[role], icon=theme.ROLE_ICONS[role],
                          on_click=lambda r=role: self.add_node(r)) \
                    .props("outline no-caps").style(f"color: {theme.ROLE_COLORS[role]} !important").mark(f"add-{role}")
            ui.separator().props("vertical")
            ui.button(icon="undo", on_click=self.do_undo).props("flat round").tooltip("Undo (Ctrl+Z)").mark("undo")
            ui.button(icon="redo", on_click=self.do_redo).props("flat round") \
                .tooltip("Redo (Ctrl+Shift+Z)").mark("redo")
            ui.button(icon="fit_screen", on_click=lambda: self.canvas.fit()).props("flat round") \
                .tooltip("Fit to view").mark("fit")
            ui.button(icon="account_tree", on_click=lambda: self.canvas.auto_layout()).props("flat round") \
                .tooltip("Auto-layout").mark("layout")
            self._canvas_tools()
            ui.space()
            self.status = ui.label(f"Saved · version {self.version}").classes("text-sm text-grey-7").mark("save-status")

    def _conflict_banner(self) -> None:
        with ui.card().classes("w-full bg-red-1 border border-red-4") as self.banner:
            with ui.row().classes("items-center gap-3"):
                ui.icon("warning", color="negative")
                self.banner_text = ui.label("").mark("conflict-text")
                ui.button("Load their version", on_click=self.load_theirs).props("outline no-caps").mark("load-theirs")
                ui.button("Save mine as a copy", on_click=self.save_copy).props("outline no-caps").mark("save-copy")
                ui.button("Overwrite with mine", on_click=self.overwrite).props("flat no-caps color=negative") \
                    .mark("overwrite")
        self.banner.mark("conflict")
        self.banner.set_visibility(False)

    # -- editing -------------------------------------------------------------------------------------
    def apply(self, new: Flow, key: str | None = None, inspector: bool = True, save_now: bool = False) -> None:
        """Make `new` the current flow: undo step (coalesced per field), validation, redraw, autosave."""
        if new == self.flow:
            return
        t = time.monotonic()
        if not (key and key == self.last_key and t - self.last_time < COALESCE_SECONDS):
            self.undo = [*self.undo[-UNDO_LIMIT:], self.flow]
            self.redo.clear()
        self.last_key, self.last_time = key, t
        self.flow = new
        self.changed(inspector=inspector)
        if save_now:
            self.flush(force=True)

    def changed(self, inspector: bool = True) -> None:
        self.dirty = True
        self.changed_at = time.monotonic()
        self.status.set_text("Unsaved changes…")
        if self.conflict is not None:
            self._show_conflict(self.conflict)  # the banner now says there are unsaved changes
        self.problems = validate(self.flow)
        if self.selected and not self._exists(self.selected):
            self.selected = None
        self.draw()
        self.problem_list.refresh()
        if inspector:
            self.inspector.refresh()

    def draw(self) -> None:
        sel = self.selected[1] if self.selected else None
        graph = graph_of(self.flow, self.problems, self.highlight, sel, self.version, self.pending_select)
        for hook in self.graph_hooks:
            graph = hook(graph)
        self.canvas.show(graph)
        self.pending_select = []

    def guarded(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T | None:
        """Run an engine edit; its error becomes a notification instead of a traceback."""
        try:
            return fn(*args, **kw)
        except SubterraError as e:
            ui.notify(str(e), type="negative", multi_line=True)
            return None

    def add_node(self, role: str) -> None:
        x, y = self._free_spot()
        result = self.guarded(editing.add_node, self.flow, role, x, y)
        if result:
            flow, node_id = result
            self.selected = ("node", node_id)
            self.apply(flow, save_now=True)
            # bring the new node into view: the whole flow when it is small, else the node itself
            if len(flow.nodes) <= 15:
                self.canvas.fit()
            else:
                self.canvas.focus(node_id)

    def on_connect(self, args: dict[str, Any]) -> None:
        result = self.guarded(editing.connect, self.flow, args["source"], args["target"])
        if result:
            flow, edge_id = result
            self.selected = ("edge", edge_id)
            self.apply(flow, save_now=True)

    def on_moved(self, args: dict[str, Any]) -> None:
        positions = {p["id"]: (p["x"], p["y"]) for p in args.get("positions", [])}
        notes = {p["id"]: (p["x"], p["y"]) for p in args.get("notes", [])}
        flow = editing.move_nodes(self.flow, positions, notes)
        if args.get("direction") and args["direction"] != flow.canvas.direction:
            flow = self.guarded(editing.set_direction, flow, args["direction"]) or flow
        self.apply(flow, inspector=False, save_now=True)

    def on_remove(self, args: dict[str, Any]) -> None:
        ids = [str(i) for i in args.get("nodes", [])]
        flow = editing.remove(self.flow, nodes=[i for i in ids if ":" not in i or i in self.flow.node_map],
                              edges=args.get("edges", []), notes=_prefixed(ids, "note:"),
                              groups=_prefixed(ids, "group:"))
        if flow == self.flow:
            self.draw()  # the canvas removed something we never had: redraw from the truth
        self.apply(flow, save_now=True)

    def on_select(self, args: dict[str, Any]) -> None:
        kind, item = args.get("kind"), args.get("id")
        self.selected = (kind, item) if kind and item else None
        self.inspector.refresh()

    def select(self, kind: str, item: str) -> None:
        """Select from outside the canvas (a problem, a message): highlight and centre it."""
        self.selected = (kind, item)
        self.draw()
        self.inspector.refresh()
        node = item if kind == "node" else self._edge_source(item)
        if node:
            self.canvas.focus(node)

    def delete_selected(self) -> None:
        if not self.selected:
            return
        kind, item = self.selected
        flow = editing.remove(self.flow, nodes=[item] if kind == "node" else [], edges=[item] if kind == "edge" else [])
        self.selected = None
        self.apply(flow, save_now=True)

    def do_undo(self) -> None:
        if not self.undo and self._older_version():
            return
        if not self.undo:
            ui.notify("Nothing to undo")
            return
        self.redo.append(self.flow)
        self.flow = self.undo.pop()
        self.last_key = None
        self.changed()

    def do_redo(self) -> None:
        if not self.redo:
            ui.notify("Nothing to redo")
            return
        self.undo.append(self.flow)
        self.flow = self.redo.pop()
        self.last_key = None
        self.changed()

    def _older_version(self) -> bool:
        """Undo past what this page did: step back through the stored versions (autosaved or from an
        earlier visit), each restored as a new version so nothing in the history is lost."""
        if self.history_at <= 1 or self.conflict is not None:
            return False
        try:
            older = self.store.get_flow(self.flow.name, self.history_at - 1)
        except SubterraError:
            return False
        self.history_at -= 1
        self.redo.append(self.flow)
        self.flow = older
        self.last_key = None
        self.changed()
        self.flush(force=True)
        return True

    # -- canvas gestures (copy/paste, connected nodes, notes, groups, search) --------------------------
    def _canvas_tools(self) -> None:
        ui.toggle({"TB": "Top-down", "LR": "Left-right"}, value=self.flow.canvas.direction,
                  on_change=lambda e: self.canvas.auto_layout(e.value)).props("dense no-caps size=sm") \
            .tooltip("Layout direction (re-runs the auto-layout)").mark("direction")
        ui.button(icon="sticky_note_2", on_click=self.add_note).props("flat round").tooltip("Add a sticky note") \
            .mark("add-note")
        ui.button(icon="search", on_click=lambda: self.canvas.open_search()).props("flat round") \
            .tooltip("Find a node (Ctrl+K)").mark("search")
        ui.button(icon="keyboard", on_click=lambda: self.canvas.open_help()).props("flat round") \
            .tooltip("Keyboard shortcuts (?)").mark("shortcuts")

    def _canvas_events(self) -> None:
        self.canvas.on("add", lambda e: self.on_add(e.args))
        self.canvas.on("copy", lambda e: self.on_copy(e.args))
        self.canvas.on("paste", lambda e: self.on_paste(e.args))
        self.canvas.on("duplicate", lambda e: self.on_duplicate(e.args))
        self.canvas.on("start", lambda e: self._set_start(e.args["id"]))
        self.canvas.on("note", lambda e: self.on_note(e.args))
        self.canvas.on("group", lambda e: self.on_group(e.args))
        self.canvas.on("ungroup", lambda e: self.apply(editing.remove(self.flow, groups=[e.args["id"]]), save_now=True))

    def on_add(self, args: dict[str, Any]) -> None:
        """A node from the canvas: at a point (right-click menu), or connected to `from` (handle drag)."""
        x, y, role = float(args.get("x", 0)), float(args.get("y", 0)), str(args.get("role"))
        if args.get("from"):
            result = self.guarded(editing.add_connected, self.flow, args["from"], role, x, y,
                                  bool(args.get("incoming")))
        else:
            result = self.guarded(editing.add_node, self.flow, role, x, y)
        if result:
            flow, node_id = result
            self.selected = ("node", node_id)
            self.pending_select = [node_id]
            self.apply(flow, save_now=True)

    def on_copy(self, args: dict[str, Any]) -> None:
        snippet = editing.copy_nodes(self.flow, args.get("ids", []))
        if snippet["nodes"]:
            CLIPBOARD.clear()
            CLIPBOARD.update(snippet)
            ui.notify(f"Copied {len(snippet['nodes'])} node(s) and {len(snippet['edges'])} edge(s)")

    def on_paste(self, args: dict[str, Any]) -> None:
        """Paste the clipboard with its top-left corner at (x, y) (the pointer), fresh ids, selected."""
        if not CLIPBOARD.get("nodes"):
            ui.notify("Nothing to paste: select nodes and press Ctrl+C first")
            return
        placed = [n["position"] for n in CLIPBOARD["nodes"] if n.get("position")]
        x0 = min((p["x"] for p in placed), default=0.0)
        y0 = min((p["y"] for p in placed), default=0.0)
        dx = float(args["x"]) - x0 if "x" in args else PASTE_OFFSET
        dy = float(args["y"]) - y0 if "y" in args else PASTE_OFFSET
        self._added(self.guarded(editing.paste, self.flow, CLIPBOARD, dx, dy))

    def on_duplicate(self, args: dict[str, Any]) -> None:
        self._added(self.guarded(editing.duplicate, self.flow, args.get("ids", []), PASTE_OFFSET, PASTE_OFFSET))

    def _added(self, result: tuple[Flow, list[str]] | None) -> None:
        if result:
            flow, ids = result
            self.selected = ("node", ids[0]) if len(ids) == 1 else None
            self.pending_select = ids
            self.apply(flow, save_now=True)

    def add_note(self) -> None:
        x, y = self._free_spot()
        self.on_note({"x": x, "y": y - 130})

    def on_note(self, args: dict[str, Any]) -> None:
        if args.get("id"):
            flow = self.guarded(editing.update_note, self.flow, args["id"], str(args.get("text", "")))
            if flow:
                self.apply(flow, save_now=True)
            return
        flow, _ = editing.add_note(self.flow, float(args.get("x", 0)), float(args.get("y", 0)),
                                   str(args.get("text", "")))
        self.apply(flow, save_now=True)

    def on_group(self, args: dict[str, Any]) -> None:
        if args.get("ids"):
            result = self.guarded(editing.add_group, self.flow, args["ids"], str(args.get("label", "")))
            if result:
                self.apply(result[0], save_now=True)
            return
        label = args.get("label")
        flow = self.guarded(editing.update_group, self.flow, args.get("id", ""),
                            label=str(label) if label is not None else None, collapsed=args.get("collapsed"))
        if flow:
            self.apply(flow, save_now=True)

    # -- autosave and conflicts -------------------------------------------------------------------------
    def flush(self, force: bool = False) -> None:
        """Autosave: a new version if the flow changed, refused when another tab saved first."""
        if self.conflict is not None:
            return
        if not self.dirty:
            self._watch_head()
            return
        if not force and time.monotonic() - self.changed_at < QUIET_SECONDS:
            return
        try:
            self.version = self.store.save_flow(self.flow, message="studio edit", expected_version=self.version)
        except VersionConflictError as e:
            self._show_conflict(e.actual)
            return
        self.dirty = False
        self.status.set_text(f"Saved · version {self.version}")

    def _watch_head(self) -> None:
        """Nothing unsaved here: still tell the user when another tab saved a newer version, or removed it."""
        if not self.store.has_flow(self.flow.name):
            self._show_conflict(0)  # renamed or deleted elsewhere
            return
        try:
            head = self.store.flow_version(self.flow.name)
        except SubterraError:
            return
        if head != self.version:
            self._show_conflict(head)

    def _show_conflict(self, theirs: int) -> None:
        self.conflict = theirs
        mine = "your unsaved changes are kept here" if self.dirty else "you have no unsaved changes"
        if not self.store.has_flow(self.flow.name):
            renamed = self._renamed_to()
            what = f"renamed to '{renamed}'" if renamed else "deleted"
            self.banner_text.set_text(f"This flow was {what} in another tab or window; {mine}. \"Overwrite with mine\" "
                                      f"stores your version as '{self.flow.name}' again.")
        else:
            self.banner_text.set_text(f"This flow was changed in another tab or window (now version {theirs}, "
                                      f"you opened version {self.version}); {mine}. Nothing was overwritten.")
        self.banner.set_visibility(True)
        self.status.set_text("Not saved: changed elsewhere")

    def load_theirs(self) -> None:
        if not self.store.has_flow(self.flow.name):  # theirs is the renamed flow, or nothing (deleted)
            renamed = self._renamed_to()
            self.dirty, self.conflict = False, None
            ui.navigate.to("/flow/" + quote(renamed, safe="") if renamed else "/")
            return
        self.flow = self.store.get_flow(self.flow.name)
        self.version = self.store.flow_version(self.flow.name)
        self._resolved()

    def overwrite(self) -> None:
        if not self.store.has_flow(self.flow.name):  # gone: store mine under its name again (atomically)
            try:
                self.version = self.store.create_flow(self.flow, message="restored from a tab's edits")
            except SubterraError:  # the name was taken meanwhile (or breaks the name rule): keep mine as a copy
                self.save_copy()
                return
            self.conflict = None
            self.banner.set_visibility(False)
            self.dirty = False
            self.status.set_text(f"Saved · version {self.version}")
            return
        self.version = self.store.flow_version(self.flow.name)  # their head now, not the one first seen
        self._resolved()

    def save_copy(self, navigate: bool = True) -> str:
        """Store this tab's version under a new name (atomic: a name taken meanwhile is skipped)."""
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.flow.name).strip("-._")[:50] or "flow"
        for k in range(1, 1000):
            name = f"{base}-copy" if k == 1 else f"{base}-copy-{k}"
            try:
                self.store.create_flow(self.flow.model_copy(update={"name": name}),
                                       message=f"copy of {self.flow.name} (conflict)")
                break
            except SubterraError:
                continue
        self.dirty = False
        if navigate:
            ui.navigate.to("/flow/" + quote(name, safe=""))
        return name

    def on_close(self) -> None:
        """The tab closes: save, or, during a conflict, keep this tab's unsaved edits as a copy."""
        if self.conflict is not None and self.dirty:
            self.save_copy(navigate=False)
            return
        self.flush(force=True)

    def _renamed_to(self) -> str | None:
        """The flow's new name when another tab renamed it (its newest version records the rename)."""
        wanted = f"renamed from {self.flow.name}"
        for f in self.store.list_flows():
            versions = self.store.versions(f["name"])
            if versions and max(versions, key=lambda v: v["version"]).get("message") == wanted:
                return str(f["name"])
        return None

    def _resolved(self) -> None:
        self.conflict = None
        self.banner.set_visibility(False)
        self.undo.clear()
        self.redo.clear()
        self.changed()
        self.flush(force=True)  # their version: a no-op save; mine (overwrite): a new version on top of theirs

    # -- inspector -----------------------------------------------------------------------------------
    @ui.refreshable_method
    def inspector(self) -> None:
        kind, item = self.selected or (None, None)
        if kind == "node" and item in self.flow.node_map:
            self._node_inspector(item)
        elif kind == "edge" and item and self._edge(item):
            self._edge_inspector(item)
        else:
            self._flow_inspector()

    def _node_inspector(self, node_id: str) -> None:
        n = self.flow.node(node_id)
        ui.label(f"Node · {node_id}").classes("text-subtitle1 font-semibold").mark("inspector-title")
        edit = self._node_setter(node_id)
        ui.input("Label", value=n.label, on_change=lambda e: edit(label=e.value)).classes("w-full").mark("node-label")
        ui.select({r: theme.ROLE_NAMES[r] for r in ROLES}, label="Role", value=n.role,
                  on_change=lambda e: edit(_refresh=True, role=e.value)).classes("w-full").mark("node-role")
        if n.role == "terminal":
            options = list(dict.fromkeys([*STANDARD_OUTCOMES, n.outcome or "success"]))
            ui.select(options, label="Outcome", value=n.outcome or "success", new_value_mode="add-unique",
                      on_change=lambda e: edit(_refresh=True, outcome=e.value)).classes("w-full").mark("node-outcome")
        if n.speaks:
            ui.textarea("Prompt template", value=n.prompt, on_change=lambda e: edit(prompt=e.value)) \
                .props("autogrow").classes("w-full").mark("node-prompt")
            ui.textarea("Example utterances (one per line)", value="\n".join(n.examples),
                        on_change=lambda e: edit(examples=e.value.split("\n"))) \
                .props("autogrow").classes("w-full").mark("node-examples")
            self._dialogue_fields(n, edit)
        with ui.row().classes("gap-2"):
            if self.flow.start != node_id:
                ui.button("Make start", on_click=lambda: self._set_start(node_id)).props("flat no-caps") \
                    .mark("make-start")
            ui.button("Delete node", icon="delete", on_click=self.delete_selected) \
                .props("flat no-caps color=negative").mark("delete-node")

    def _dialogue_fields(self, n: Any, edit: Callable[..., None]) -> None:
        """Which scenario facts this turn gathers, restates or may change (engine.dialogue_state reads them);
        how each fact is asked for and stated lives with the variable (ask / state / cues in the YAML)."""
        names = list(self.flow.variables)
        if not names:
            return
        fields = [("gathers", "Gathers (asks for / states these facts)", "node-gathers")]
        if n.role == "agent":
            fields.append(("confirms", "Confirms (restates these facts)", "node-confirms"))
        else:
            fields.append(("changes", "Changes (the customer may change these on a loop-back)", "node-changes"))
        for field, label, mark in fields:
            value = [v for v in getattr(n, field) if v in names]
            ui.select(names, label=label, value=value, multiple=True,
                      on_change=lambda e, f=field: edit(**{f: list(e.value or [])})) \
                .props("use-chips dense").classes("w-full").mark(mark)

    def _edge_inspector(self, edge_id: str) -> None:
        e = self._edge(edge_id)
        assert e is not None
        src, dst = self.flow.node_map.get(e.source), self.flow.node_map.get(e.target)
        ui.label(f"Edge · {src.display if src else e.source} → {dst.display if dst else e.target}") \
            .classes("text-subtitle1 font-semibold").mark("inspector-title")

        def edit(**fields: Any) -> None:
            flow = self.guarded(editing.update_edge, self.flow, edge_id, **fields)
            if flow:
                self.apply(flow, key=f"edge:{edge_id}:{','.join(fields)}", inspector=False)

        ui.input("Condition (when is this edge taken?)", value=e.when or "",
                 on_change=lambda ev: edit(when=ev.value)).classes("w-full").mark("edge-when")
        ui.number("Weight", value=e.weight, min=0, step=0.5,
                  on_change=lambda ev: edit(weight=ev.value)).classes("w-full").mark("edge-weight")
        if src and src.role == "decision":
            ui.textarea("User utterances that take this branch (one per line)", value="\n".join(e.examples),
                        on_change=lambda ev: edit(examples=[s for s in ev.value.split("\n") if s.strip()])) \
                .props("autogrow").classes("w-full").mark("edge-examples")
        ui.button("Delete edge", icon="delete", on_click=self.delete_selected) \
            .props("flat no-caps color=negative").mark("delete-edge")

    def _flow_inspector(self) -> None:
        ui.label("Flow settings").classes("text-subtitle1 font-semibold").mark("inspector-title")
        ui.label("Select a node or an edge on the canvas to edit it.").classes("text-caption text-grey-7")

        def edit(**fields: Any) -> None:
            flow = self.guarded(editing.update_flow, self.flow, **fields)
            if flow:
                self.apply(flow, key=f"flow:{','.join(fields)}", inspector=False)

        ui.textarea("Description", value=self.flow.description, on_change=lambda e: edit(description=e.value)) \
            .props("autogrow").classes("w-full").mark("flow-description")
        ui.textarea("Runtime system prompt of the compiled agent", value=self.flow.system_prompt,
                    on_change=lambda e: edit(system_prompt=e.value)).props("autogrow").classes("w-full") \
            .mark("system-prompt")
        variables = ui.textarea("Scenario variables (YAML)", value=editing.variables_text(self.flow)) \
            .props("rows=8 input-class=font-mono input-style='font-size:12px'").classes("w-full").mark("variables")
        ui.button("Apply variables", on_click=lambda: self._set_variables(variables.value)) \
            .props("outline no-caps").mark("apply-variables")

    def _node_setter(self, node_id: str) -> Any:
        def edit(_refresh: bool = False, **fields: Any) -> None:
            flow = self.guarded(editing.update_node, self.flow, node_id, **fields)
            if flow:
                self.apply(flow, key=None if _refresh else f"node:{node_id}:{','.join(fields)}", inspector=_refresh)
        return edit

    def _set_start(self, node_id: str) -> None:
        self.apply(editing.update_flow(self.flow, start=node_id), save_now=True)

    def _set_variables(self, text: str) -> None:
        variables = self.guarded(editing.parse_variables, text)
        if variables is not None:
            flow = self.guarded(editing.update_flow, self.flow, variables=variables)
            if flow:
                self.apply(flow, inspector=False, save_now=True)
                ui.notify(f"{len(variables)} variable(s) applied", type="positive")

    # -- problems --------------------------------------------------------------------------------------
    @ui.refreshable_method
    def problem_list(self) -> None:
        errors = sum(p.severity == "error" for p in self.problems)
        warnings = len(self.problems) - errors
        ui.label(f"Problems · {errors} error(s), {warnings} warning(s)").classes("text-subtitle1 font-semibold") \
            .mark("problem-count")
        if not self.problems:
            ui.label("No problems: this flow can be used.").classes("text-positive").mark("no-problems")
            return
        with ui.scroll_area().classes("w-full").style("height: 22vh"):
            for p in self.problems:
                self._problem_row(p)

    def _problem_row(self, p: Problem) -> None:
        color = theme.ERROR if p.severity == "error" else theme.WARNING
        target = ("node", p.node) if p.node else ("edge", p.edge) if p.edge else None
        with ui.row().classes("w-full no-wrap items-start gap-2 cursor-pointer hover:bg-grey-2 rounded p-1") \
                .mark(f"problem-{p.code}") as row:
            ui.icon("error" if p.severity == "error" else "warning").style(f"color:{color}")
            with ui.column().classes("gap-0"):
                ui.label(f"{p.code} · {p.node or p.edge or 'flow'}").classes("text-caption text-grey-8")
                ui.label(p.message).classes("text-body2")
        if target:
            row.on("click", lambda t=target: self.select(*t))

    # -- preview ------------------------------------------------------------------------------------------
    def preview(self) -> None:
        ui.label("Preview").classes("text-subtitle1 font-semibold")
        with ui.row().classes("w-full no-wrap gap-6 items-start"):
            with ui.column().classes("w-1/3 gap-2"):
                with ui.row().classes("items-center gap-2"):
                    ui.button("Path statistics", icon="insights", on_click=self.load_stats).props("outline no-caps") \
                        .mark("stats")
                self.stats_label = ui.label("").classes("text-body2").mark("stats-text")
                # plotly is created with the first statistics, so its large script never delays the canvas
                self.histogram_box = ui.column().classes("w-full")
                self.histogram: ui.plotly | None = None
            with ui.column().classes("grow gap-2"):
                with ui.row().classes("items-center gap-2"):
                    ui.button("Sample a path", icon="route", on_click=self.sample_path).props("outline no-caps") \
                        .mark("sample-path")
                    ui.button("Preview dialogue", icon="forum", on_click=self.preview_dialogue) \
                        .props("outline no-caps").mark("preview-dialogue")
                    self.backend = ui.select(backend_names(), value="scripted", label="Generator") \
                        .classes("w-40").mark("backend")
                    ui.button("Clear", on_click=self.clear_highlight).props("flat no-caps").mark("clear-highlight")
                self.path_label = ui.label("").classes("text-caption text-grey-8").mark("path-text")
                self.dialogue = ui.column().classes("w-full gap-1").mark("dialogue")

    async def load_stats(self) -> None:
        self.stats_label.set_text("Counting paths…")
        try:
            stats = await run.io_bound(path_stats, self.flow)
        except SubterraError as e:
            self.stats_label.set_text(str(e))
            return
        if stats is None:  # the app is shutting down
            return
        count = f"{stats.paths:,}" if stats.exact else f"at least {stats.paths:,}"
        lengths = f"{stats.min_len}–{stats.max_len} turns" if stats.min_len is not None else "no complete path"
        self.stats_label.set_text(f"{count} paths · {lengths} · {stats.decision_hubs} decision hubs · "
                                  f"{stats.terminals} terminals")
        if self.histogram is None:
            with self.histogram_box:
                self.histogram = ui.plotly(self._histogram(stats.length_histogram)).classes("w-full") \
                    .style("height: 220px").mark("histogram")
        else:
            self.histogram.figure = self._histogram(stats.length_histogram)
            self.histogram.update()

    def _histogram(self, hist: dict[int, int]) -> dict[str, Any]:
        xs = sorted(hist)
        return {
            "data": [{"type": "bar", "x": xs, "y": [hist[x] for x in xs],
                      "marker": {"color": theme.ROLE_COLORS["agent"]}}],
            "layout": {"margin": {"l": 40, "r": 10, "t": 10, "b": 40}, "xaxis": {"title": {"text": "turns per path"}},
                       "yaxis": {"title": {"text": "paths"}}, "bargap": 0.1},
            "config": {"displayModeBar": False},
        }

    async def sample_path(self) -> None:
        self.seed += 1
        try:
            paths = await run.io_bound(sample_paths, self.flow, 1, self.seed)
        except SubterraError as e:
            ui.notify(str(e), type="negative", multi_line=True)
            return
        if paths is None:  # the app is shutting down
            return
        if not paths:
            ui.notify("This flow has no complete path from the start to a terminal; fix the problems first",
                      type="warning")
            return
        self.path = paths[0]
        self.highlight = list(self.path)
        names = [self.flow.node(n).display for n in self.path if n in self.flow.node_map]
        self.path_label.set_text(f"Path ({len(self.path)} nodes): " + " → ".join(names))
        self.draw()

    async def preview_dialogue(self) -> None:
        if self.path is None:
            await self.sample_path()
            if self.path is None:
                return
        self.dialogue.clear()
        with self.dialogue:
            ui.spinner()
        try:
            messages = await run.io_bound(preview_dialogue, self.flow, self.path, self.seed, self.backend.value)
        except SubterraError as e:
            self.dialogue.clear()
            ui.notify(str(e), type="negative", multi_line=True)
            return
        self.dialogue.clear()
        with self.dialogue:
            for m in messages or []:
                self._message(m)

    def _message(self, m: dict[str, Any]) -> None:
        node = m.get("node")
        role = m["role"]
        if role == "system":
            ui.label(f"System prompt: {m['content']}").classes("text-caption text-grey-7").mark("system-message")
            return
        color = theme.ROLE_COLORS["agent" if role == "assistant" else "user"]
        with ui.row().classes("w-full no-wrap items-start gap-2 cursor-pointer hover:bg-grey-2 rounded p-1") \
                .mark("message") as row:
            ui.badge(f"{role} · {node}").style(f"background:{color} !important").classes("shrink-0")
            ui.label(m["content"]).classes("text-body2")
        if node:
            row.on("click", lambda n=node: self._show_message_node(n))

    def _show_message_node(self, node_id: str) -> None:
        self.highlight = [node_id]
        self.select("node", node_id)

    def clear_highlight(self) -> None:
        self.highlight, self.path = [], None
        self.path_label.set_text("")
        self.dialogue.clear()
        self.draw()

    # -- helpers -------------------------------------------------------------------------------------------
    def _edge(self, edge_id: str | None) -> Any:
        return next((e for e in self.flow.edges if e.id == edge_id), None)

    def _edge_source(self, edge_id: str) -> str | None:
        e = self._edge(edge_id)
        return e.source if e else None

    def _exists(self, sel: tuple[str, str]) -> bool:
        kind, item = sel
        return item in self.flow.node_map if kind == "node" else self._edge(item) is not None

    def _free_spot(self) -> tuple[float, float]:
        """Beside the selected node, else right of everything: a new node never lands on another."""
        placed = [n.position for n in self.flow.nodes if n.position]
        if not placed:
            return 0.0, 0.0
        if self.selected and self.selected[0] == "node" and self.selected[1] in self.flow.node_map:
            pos = self.flow.node(self.selected[1]).position
            if pos:
                return max(p.x for p in placed) + 220, pos.y + 130
        return max(p.x for p in placed) + 220, min(p.y for p in placed) + 130


def _prefixed(ids: list[str], prefix: str) -> list[str]:
    """Canvas ids of notes and groups carry a prefix (`note:<id>`, `group:<id>`): the ids without it."""
    return [i[len(prefix):] for i in ids if i.startswith(prefix)]
