"""Colours and spacing of the studio, in one place (the paper's figures: agent turns blue, user turns
orange, success green, exits red; decision hubs a distinct violet)."""

from __future__ import annotations

from nicegui import ui

PRIMARY = "#1f4e79"
ROLE_COLORS = {
    "agent": "#2563eb",     # blue
    "user": "#ea580c",      # orange
    "decision": "#7c3aed",  # violet: branching only, never speaks
    "terminal": "#16a34a",  # success green; other outcomes use EXIT
}
EXIT = "#dc2626"            # red: abandoned / escalated / any non-success terminal
ERROR = "#dc2626"
WARNING = "#d97706"
HIGHLIGHT = "#facc15"       # sampled path / clicked message
ROLE_NAMES = {"agent": "Agent turn", "user": "User turn", "decision": "Decision hub", "terminal": "Terminal"}
ROLE_ICONS = {"agent": "support_agent", "user": "person", "decision": "call_split", "terminal": "flag"}

GAP = "gap-4"
PAGE = "w-full max-w-screen-2xl mx-auto p-4"


def node_color(role: str, outcome: str | None = None) -> str:
    if role == "terminal" and outcome not in (None, "success"):
        return EXIT
    return ROLE_COLORS[role]


def apply() -> None:
    """Quasar brand colours for the current page."""
    ui.colors(primary=PRIMARY, positive=ROLE_COLORS["terminal"], negative=EXIT, warning=WARNING)


def canvas_css() -> str:
    """Node styles for the canvas (read by ui/components/flow_canvas.js through class names)."""
    rules = [
        ".st-node{border:2px solid var(--c);border-radius:8px;background:#fff;padding:6px 10px;min-width:130px;"
        "max-width:220px;font-size:12px;color:#111;box-shadow:0 1px 2px rgba(0,0,0,.15)}",
        ".st-node .st-role{font-size:10px;text-transform:uppercase;letter-spacing:.05em;color:var(--c);"
        "font-weight:600}",
        ".st-node.st-decision{border-style:double;border-width:4px;border-radius:22px;background:#f5f3ff}",
        ".st-node.st-terminal{background:var(--bg);}",
        ".st-node.st-start{box-shadow:0 0 0 3px rgba(31,78,121,.35)}",
        f".st-node.st-error{{outline:3px solid {ERROR};outline-offset:2px}}",
        f".st-node.st-warning{{outline:2px dashed {WARNING};outline-offset:2px}}",
        f".st-node.st-hl{{background:#fef9c3;box-shadow:0 0 0 6px {HIGHLIGHT}}}",
        f".vue-flow__node.selected .st-node.st-hl{{box-shadow:0 0 0 3px #0ea5e9,0 0 0 8px {HIGHLIGHT}}}",
        ".vue-flow__node.selected .st-node{box-shadow:0 0 0 3px #0ea5e9}",
        ".vue-flow__edge-textbg{fill:#fffbe8}",
        ".vue-flow__edge-text{font-size:11px}",
        f".vue-flow__edge.st-hl path.vue-flow__edge-path{{stroke:{HIGHLIGHT};stroke-width:4}}",
        f".vue-flow__edge.st-error path.vue-flow__edge-path{{stroke:{ERROR}}}",
        ".vue-flow__handle{width:10px;height:10px}",
    ]
    return "\n".join(rules)
