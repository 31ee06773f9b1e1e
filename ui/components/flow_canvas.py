"""The canvas element: vue-flow on NiceGUI's Vue, fed a `graph` prop built from a Flow.

The JavaScript (flow_canvas.js) imports vue-flow and dagre from the bundle that `make ui-assets`
builds into ui/static/dist; its events reach Python as `connect`, `moved`, `remove`, `select`,
`undo` and `redo` (see `FlowCanvas.on`).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from nicegui import ui
from nicegui.element import Element

from engine.errors import SubterraError
from engine.flow import Flow
from engine.validate import Problem
from ui import theme

EDGE_LABEL_CHARS = 36  # longer conditions are cut on the canvas; the inspector shows them whole
DIST = Path(__file__).resolve().parent.parent / "static" / "dist"


def assets_built() -> bool:
    return (DIST / "index.js").is_file() and (DIST / "style.css").is_file()


def require_assets() -> None:
    if not assets_built():
        raise SubterraError(f"the canvas assets are not built ({DIST} is missing); run `make ui-assets` "
                            "(needs node and npm) and start the studio again")


class FlowCanvas(Element, component="flow_canvas.js", esm={"subterra-flow": "../static/dist"}):
    def __init__(self) -> None:
        require_assets()
        super().__init__()
        self._props["canvas-id"] = f"canvas-{uuid.uuid4().hex[:8]}"
        self._props["graph"] = {"nodes": [], "edges": []}
        ui.add_css((DIST / "style.css").read_text() + "\n" + theme.canvas_css())

    def show(self, graph: dict[str, Any]) -> None:
        self._props["graph"] = graph
        self.update()

    def fit(self) -> None:
        self.run_method("fit")

    def auto_layout(self) -> None:
        self.run_method("autoLayout")

    def focus(self, node_id: str) -> None:
        self.run_method("focus", node_id)


def graph_of(flow: Flow, problems: list[Problem], highlight: list[str] | None = None,
             selected: str | None = None, version: int = 0) -> dict[str, Any]:
    """What the canvas draws: nodes with role colours and problem marks, edges with their condition."""
    hl_nodes = set(highlight or [])
    hl_edges = {f"{a}->{b}" for a, b in zip(highlight or [], (highlight or [])[1:], strict=False)}
    errors = {p.node for p in problems if p.severity == "error" and p.node}
    warnings = {p.node for p in problems if p.severity == "warning" and p.node}
    edge_errors = {p.edge for p in problems if p.severity == "error" and p.edge}
    unplaced = [n for n in flow.nodes if n.position is None]
    nodes = []
    for i, n in enumerate(flow.nodes):
        color = theme.node_color(n.role, n.outcome)
        cls = ["st-node", f"st-{n.role}"]
        if n.id == flow.start:
            cls.append("st-start")
        if n.id in errors:
            cls.append("st-error")
        elif n.id in warnings:
            cls.append("st-warning")
        if n.id in hl_nodes:
            cls.append("st-hl")
        role_text = theme.ROLE_NAMES[n.role] + (f" · {n.outcome}" if n.role == "terminal" and n.outcome else "")
        if n.id == flow.start:
            role_text = "▶ " + role_text
        pos = n.position
        nodes.append({
            "id": n.id, "label": n.display, "role": n.role, "roleText": role_text, "color": color,
            "x": pos.x if pos else 0.0, "y": pos.y if pos else i * 80.0,
            "cls": " ".join(cls), "style": f"--c:{color};--bg:{color}1a", "tip": n.prompt[:200],
        })
    edges = []
    for e in flow.edges:
        cls = []
        if f"{e.source}->{e.target}" in hl_edges:
            cls.append("st-hl")
        if e.id in edge_errors:
            cls.append("st-error")
        label = e.when or ""
        if len(label) > EDGE_LABEL_CHARS:
            label = label[:EDGE_LABEL_CHARS - 1].rstrip() + "…"
        edges.append({"id": e.id, "source": e.source, "target": e.target, "label": label, "cls": " ".join(cls)})
    return {"nodes": nodes, "edges": edges, "layout": bool(unplaced), "selected": selected, "version": version}
