"""The canvas element: vue-flow on NiceGUI's Vue, fed a `graph` prop built from a Flow.

The JavaScript (flow_canvas.js) imports vue-flow and dagre from the bundle that `make ui-assets`
builds into ui/static/dist; its events reach Python as `connect`, `moved`, `remove`, `select`,
`undo`, `redo`, `add`, `copy`, `paste`, `duplicate`, `start`, `note`, `group`, `ungroup` and
`direction` (the editor page wires them to engine.editing). Canvas items that are not flow nodes carry
a prefix in their vue-flow id: `note:<id>` for sticky notes, `group:<id>` for group frames.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from nicegui import ui
from nicegui.element import Element

from engine.editing import NEXT_ROLES, PREVIOUS_ROLES
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
        ui.add_css((DIST / "style.css").read_text() + "\n" + theme.canvas_css() + CANVAS_CSS)

    def show(self, graph: dict[str, Any]) -> None:
        self._props["graph"] = graph
        self.update()

    def fit(self) -> None:
        self.run_method("fit")

    def auto_layout(self, direction: str | None = None) -> None:
        """Lay the flow out with dagre, top-down (TB) or left-right (LR); None keeps the flow's direction."""
        self.run_method("autoLayout", direction)

    def focus(self, node_id: str) -> None:
        self.run_method("focus", node_id)

    def open_search(self) -> None:
        self.run_method("openSearch")

    def open_help(self) -> None:
        self.run_method("openHelp")


# Canvas styles beside theme.canvas_css(): cards of a fixed width so dagre's layout and the text agree.
CANVAS_CSS = """
.st-canvas{position:relative}
.st-node{width:210px;box-sizing:border-box;min-width:0;max-width:none;padding:6px 10px 7px}
.st-node .st-label{font-size:14px;font-weight:600;line-height:1.25;overflow:hidden;display:-webkit-box;
  -webkit-line-clamp:2;-webkit-box-orient:vertical}
.st-node .st-line{font-size:12px;color:#475569;line-height:1.3;margin-top:2px;white-space:nowrap;overflow:hidden;
  text-overflow:ellipsis}
.vue-flow__edge-text{font-size:12px}
.vue-flow__edge-textbg{fill:#fffbe8;stroke:#e5d9a8;stroke-width:.5}
.st-note{width:200px;min-height:60px;background:#fef08a;border:1px solid #eab308;border-radius:4px;padding:8px;
  font-size:13px;color:#3f3f00;white-space:pre-wrap;box-shadow:2px 3px 6px rgba(0,0,0,.18)}
.st-note textarea{width:100%;min-height:80px;background:transparent;border:none;outline:none;font:inherit;
  resize:vertical}
.st-note .st-empty{color:#a3a300;font-style:italic}
.st-group{border:2px dashed #64748b;border-radius:10px;background:rgba(100,116,139,.06);width:100%;height:100%}
.st-group .st-group-head{display:flex;align-items:center;gap:6px;padding:3px 8px;font-size:13px;font-weight:600;
  color:#334155;background:rgba(100,116,139,.14);border-radius:8px 8px 0 0}
.st-group .st-group-head button{border:none;background:none;cursor:pointer;font-size:13px;padding:0 2px}
.st-group.st-collapsed{border-style:solid;background:#f1f5f9}
.st-group .st-group-head input{font:inherit;width:140px}
.st-group .st-count{font-weight:400;color:#64748b;font-size:12px}
.vue-flow__node-stgroup{pointer-events:none}
.vue-flow__node-stgroup .st-group-head,.vue-flow__node-stgroup .st-collapsed{pointer-events:all}
.st-menu{position:absolute;z-index:20;background:#fff;border:1px solid #cbd5e1;border-radius:6px;
  box-shadow:0 6px 18px rgba(0,0,0,.18);padding:4px 0;min-width:190px;font-size:13px}
.st-menu .st-menu-title{padding:2px 12px;font-size:11px;color:#64748b;text-transform:uppercase}
.st-menu .st-item{padding:5px 12px;cursor:pointer;display:flex;justify-content:space-between;gap:12px}
.st-menu .st-item:hover,.st-menu .st-item.st-active{background:#e0f2fe}
.st-menu .st-key{color:#94a3b8;font-size:11px}
.st-overlay{position:absolute;z-index:30;left:50%;top:40px;transform:translateX(-50%);width:460px;background:#fff;
  border:1px solid #cbd5e1;border-radius:8px;box-shadow:0 10px 30px rgba(0,0,0,.25);padding:10px}
.st-overlay input{width:100%;font-size:15px;padding:6px 8px;border:1px solid #94a3b8;border-radius:4px}
.st-overlay .st-hit{padding:5px 8px;cursor:pointer;border-radius:4px}
.st-overlay .st-hit.st-active,.st-overlay .st-hit:hover{background:#e0f2fe}
.st-overlay .st-hit small{color:#64748b;display:block;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
.st-overlay table{width:100%;font-size:13px;border-collapse:collapse}
.st-overlay td{padding:3px 6px;border-bottom:1px solid #f1f5f9}
.st-overlay kbd{background:#f1f5f9;border:1px solid #cbd5e1;border-radius:3px;padding:0 4px;font-size:12px}
"""


def graph_of(flow: Flow, problems: list[Problem], highlight: list[str] | None = None,
             selected: str | None = None, version: int = 0, selected_ids: list[str] | None = None) -> dict[str, Any]:
    """What the canvas draws: node cards (role, label, first prompt line) with role colours and problem
    marks, edges with their condition, sticky notes, groups and the layout direction."""
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
            "line": first_line(n.prompt), "prompt": n.prompt,
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
    c = flow.canvas
    return {"nodes": nodes, "edges": edges, "layout": bool(unplaced), "selected": selected, "version": version,
            "selectedIds": list(selected_ids or []), "direction": c.direction,
            "notes": [{"id": n.id, "text": n.text, "x": n.position.x, "y": n.position.y} for n in c.notes],
            "groups": [g.model_dump(mode="json") for g in c.groups],
            "next": {**{role: list(roles) for role, roles in NEXT_ROLES.items()}, "_in": list(PREVIOUS_ROLES)},
            "roleNames": theme.ROLE_NAMES}


def first_line(prompt: str, limit: int = 80) -> str:
    """The prompt's first non-empty line, cut to `limit` characters (the card shows it on one line)."""
    line = next((s.strip() for s in (prompt or "").splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[:limit - 1].rstrip() + "…"
