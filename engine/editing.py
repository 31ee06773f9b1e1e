"""Editing a flow the way the studio's canvas does: add, connect, move, change, remove.

Every function takes a Flow and returns a new one (the input is never mutated), so the
studio can keep old flows on its undo stack and save each result as a version.
Errors are `FlowInvalidError`s whose message says what to do instead.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from engine.errors import FlowInvalidError
from engine.flow import ROLES, Edge, Flow, Group, Node, Note, Position, Variable

# What a fresh node of each role looks like (label, outcome) before the user edits it.
_NEW_NODE: dict[str, tuple[str, str | None]] = {
    "agent": ("Agent turn", None),
    "user": ("User turn", None),
    "decision": ("Decision", None),
    "terminal": ("Done", "success"),
}
_VARIABLES = TypeAdapter(dict[str, Variable])

# What may follow a node of each role, most likely first: the canvas offers these when a connection
# is dragged from a node's handle into empty space (after a user turn: a decision hub or an agent turn).
NEXT_ROLES: dict[str, tuple[str, ...]] = {
    "agent": ("user", "terminal", "decision", "agent"),
    "user": ("decision", "agent"),
    "decision": ("agent", "terminal", "user"),
    "terminal": (),
}
PREVIOUS_ROLES: tuple[str, ...] = ("agent", "user", "decision")
DIRECTIONS = ("TB", "LR")


def new_flow(name: str) -> Flow:
    """A minimal valid flow: a greeting agent turn that leads to a success terminal."""
    name = name.strip()
    if not name:
        raise FlowInvalidError("a flow needs a name; type one")
    return Flow.model_validate({
        "name": name,
        "start": "greet",
        "system_prompt": "You are a helpful assistant.",
        "nodes": [
            {"id": "greet", "label": "Greet", "role": "agent", "prompt": "Greet the user and ask how you can help.",
             "examples": ["Hello! How can I help you today?"], "position": {"x": 0, "y": 0}},
            {"id": "done", "label": "Done", "role": "terminal", "outcome": "success", "position": {"x": 0, "y": 150}},
        ],
        "edges": [{"source": "greet", "target": "done"}],
    })


def add_node(flow: Flow, role: str, x: float = 0.0, y: float = 0.0, label: str | None = None) -> tuple[Flow, str]:
    """Add a node of `role`; returns the new flow and the new node's id (`<role>_<k>`, unique)."""
    if role not in ROLES:
        raise FlowInvalidError(f"unknown role '{role}'; use one of {', '.join(ROLES)}")
    taken = {n.id for n in flow.nodes}
    k = 1
    while f"{role}_{k}" in taken:
        k += 1
    node_id = f"{role}_{k}"
    default_label, outcome = _NEW_NODE[role]
    out = flow.copy_deep()
    out.nodes.append(Node.model_validate({"id": node_id, "role": role, "label": label or f"{default_label} {k}",
                                          "outcome": outcome, "position": {"x": x, "y": y}}))
    if not out.start:
        out.start = node_id
    return _fresh(out), node_id


def connect(flow: Flow, source: str, target: str, when: str | None = None) -> tuple[Flow, str]:
    """Add the edge source -> target; returns the new flow and the edge id (the existing one if present)."""
    for nid in (source, target):
        if nid not in flow.node_map:
            raise FlowInvalidError(f"no node '{nid}' in flow '{flow.name}'; connect two existing nodes")
    existing = flow.edge_between(source, target)
    if existing is not None:
        return flow, existing.id
    out = flow.copy_deep()
    out.edges.append(Edge.model_validate({"source": source, "target": target, "when": when or None}))
    out = _fresh(out)  # fills the new edge's id
    edge = out.edge_between(source, target)
    assert edge is not None
    return out, edge.id


def remove(flow: Flow, nodes: list[str] | tuple[str, ...] = (), edges: list[str] | tuple[str, ...] = (),
           notes: list[str] | tuple[str, ...] = (), groups: list[str] | tuple[str, ...] = ()) -> Flow:
    """Remove nodes (with every edge touching them), edges, notes and groups (a group's nodes stay);
    unknown ids are ignored. A group left without nodes goes too."""
    gone_nodes, gone_edges, gone_notes, gone_groups = set(nodes), set(edges), set(notes), set(groups)
    out = flow.copy_deep()
    out.nodes = [n for n in out.nodes if n.id not in gone_nodes]
    out.edges = [e for e in out.edges
                 if e.id not in gone_edges and e.source not in gone_nodes and e.target not in gone_nodes]
    if out.start in gone_nodes:
        out.start = ""  # the validator then says to pick a new start node
    out.canvas.notes = [n for n in out.canvas.notes if n.id not in gone_notes]
    for g in out.canvas.groups:
        g.nodes = [m for m in g.nodes if m not in gone_nodes]
    out.canvas.groups = [g for g in out.canvas.groups if g.id not in gone_groups and g.nodes]
    return _fresh(out)


def move_nodes(flow: Flow, positions: dict[str, tuple[float, float]],
               notes: dict[str, tuple[float, float]] | None = None) -> Flow:
    """Set canvas positions (x, y) of nodes and of sticky notes; unknown ids are ignored."""
    out = flow.copy_deep()
    items: list[Node | Note] = [*out.nodes, *out.canvas.notes]
    for item in items:
        where = (notes or {}) if isinstance(item, Note) else positions
        if item.id in where:
            x, y = where[item.id]
            item.position = Position.model_validate({"x": round(float(x), 1), "y": round(float(y), 1)})
    return out


def add_connected(flow: Flow, node_id: str, role: str, x: float, y: float,
                  incoming: bool = False) -> tuple[Flow, str]:
    """Add a node of `role` at (x, y) connected from `node_id` (or into it when `incoming`): one edit."""
    if node_id not in flow.node_map:
        raise FlowInvalidError(f"no node '{node_id}' in flow '{flow.name}'; drag from an existing node")
    if not incoming and flow.node(node_id).role == "terminal":
        raise FlowInvalidError(f"'{node_id}' is a terminal: nothing follows it; drag from another node")
    out, new_id = add_node(flow, role, x, y)
    out, _ = connect(out, new_id, node_id) if incoming else connect(out, node_id, new_id)
    return out, new_id


def copy_nodes(flow: Flow, node_ids: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The nodes `node_ids` with the edges between them (a clipboard snippet, plain JSON)."""
    wanted = [n for n in flow.nodes if n.id in set(node_ids)]
    keep = {n.id for n in wanted}
    return {"nodes": [n.model_dump(mode="json") for n in wanted],
            "edges": [e.model_dump(mode="json", exclude={"id"}) for e in flow.edges
                      if e.source in keep and e.target in keep]}


def paste(flow: Flow, snippet: dict[str, Any], dx: float = 40.0, dy: float = 40.0) -> tuple[Flow, list[str]]:
    """Add a copied snippet with fresh ids, shifted by (dx, dy); returns the new flow and the new ids."""
    try:
        nodes = [Node.model_validate(n) for n in snippet.get("nodes", [])]
        edges = [Edge.model_validate(e | {"id": ""}) for e in snippet.get("edges", [])]
    except (ValidationError, AttributeError, TypeError):
        raise FlowInvalidError("the clipboard does not hold canvas nodes; copy nodes with Ctrl+C first") from None
    if not nodes:
        raise FlowInvalidError("nothing to paste; select nodes and copy them with Ctrl+C first")
    taken = set(flow.node_map)
    renamed: dict[str, str] = {}
    for n in nodes:
        base = n.id
        k = 2
        while f"{base}_{k}" in taken:
            k += 1
        renamed[n.id] = f"{base}_{k}"
        taken.add(renamed[n.id])
    out = flow.copy_deep()
    for n in nodes:
        pos = n.position or Position()
        out.nodes.append(n.model_copy(update={
            "id": renamed[n.id], "position": Position(x=round(pos.x + dx, 1), y=round(pos.y + dy, 1))}))
    for e in edges:
        if e.source in renamed and e.target in renamed:
            out.edges.append(e.model_copy(update={"source": renamed[e.source], "target": renamed[e.target]}))
    if not out.start:
        out.start = renamed[nodes[0].id]
    return _fresh(out), [renamed[n.id] for n in nodes]


def duplicate(flow: Flow, node_ids: list[str] | tuple[str, ...], dx: float = 40.0,
              dy: float = 40.0) -> tuple[Flow, list[str]]:
    """Copy and paste in one step: the selection with its inner edges and fresh ids, beside itself."""
    return paste(flow, copy_nodes(flow, node_ids), dx, dy)


def add_note(flow: Flow, x: float, y: float, text: str = "") -> tuple[Flow, str]:
    """Add a sticky note at (x, y); returns the new flow and the note's id (`note_<k>`)."""
    taken = {n.id for n in flow.canvas.notes}
    k = 1
    while f"note_{k}" in taken:
        k += 1
    out = flow.copy_deep()
    out.canvas.notes.append(Note(id=f"note_{k}", text=text, position=Position(x=round(x, 1), y=round(y, 1))))
    return out, f"note_{k}"


def update_note(flow: Flow, note_id: str, text: str) -> Flow:
    """Change what a sticky note says."""
    out = flow.copy_deep()
    for n in out.canvas.notes:
        if n.id == note_id:
            n.text = text
            return out
    raise FlowInvalidError(f"no note '{note_id}' in flow '{flow.name}'")


def add_group(flow: Flow, node_ids: list[str] | tuple[str, ...], label: str = "") -> tuple[Flow, str]:
    """Frame `node_ids` as a group (a node is in one group at most: it leaves its old one)."""
    members = [n.id for n in flow.nodes if n.id in set(node_ids)]
    if not members:
        raise FlowInvalidError("a group needs nodes; select some nodes first (drag a box with Shift held)")
    taken = {g.id for g in flow.canvas.groups}
    k = 1
    while f"group_{k}" in taken:
        k += 1
    out = flow.copy_deep()
    for g in out.canvas.groups:
        g.nodes = [m for m in g.nodes if m not in members]
    out.canvas.groups = [g for g in out.canvas.groups if g.nodes]
    out.canvas.groups.append(Group(id=f"group_{k}", label=label or f"Group {k}", nodes=members))
    return out, f"group_{k}"


def update_group(flow: Flow, group_id: str, label: str | None = None, collapsed: bool | None = None) -> Flow:
    """Rename a group or collapse/expand it."""
    out = flow.copy_deep()
    for g in out.canvas.groups:
        if g.id == group_id:
            if label is not None:
                g.label = label.strip() or g.label
            if collapsed is not None:
                g.collapsed = bool(collapsed)
            return out
    raise FlowInvalidError(f"no group '{group_id}' in flow '{flow.name}'")


def set_direction(flow: Flow, direction: str) -> Flow:
    """Choose the auto-layout direction: TB (top-down) or LR (left-right)."""
    if direction not in DIRECTIONS:
        raise FlowInvalidError(f"unknown layout direction '{direction}'; use TB (top-down) or LR (left-right)")
    out = flow.copy_deep()
    out.canvas.direction = direction  # type: ignore[assignment]
    return out


def update_node(flow: Flow, node_id: str, **fields: Any) -> Flow:
    """Change label, role, outcome, prompt, examples or the dialogue fields (gathers, confirms, changes) of
    one node (validated like a loaded flow)."""
    allowed = {"label", "role", "outcome", "prompt", "examples", "gathers", "confirms", "changes"}
    unknown = set(fields) - allowed
    if unknown:
        raise FlowInvalidError(f"cannot edit {', '.join(sorted(unknown))} of a node; "
                               f"editable: {', '.join(sorted(allowed))}")
    if node_id not in flow.node_map:
        raise FlowInvalidError(f"no node '{node_id}' in flow '{flow.name}'")
    data = flow.model_dump(mode="json")
    for nd in data["nodes"]:
        if nd["id"] == node_id:
            nd.update(fields)
            if nd["role"] != "terminal":
                nd["outcome"] = None  # only terminals have an outcome
            elif not nd.get("outcome"):
                nd["outcome"] = "success"
            if isinstance(nd.get("examples"), list):
                nd["examples"] = [s for s in (str(x).strip() for x in nd["examples"]) if s]
    return _validated(data, f"node '{node_id}'")


def update_edge(flow: Flow, edge_id: str, **fields: Any) -> Flow:
    """Change the condition (`when`), `weight` or `examples` of one edge; an empty condition becomes None."""
    allowed = {"when", "weight", "examples"}
    unknown = set(fields) - allowed
    if unknown:
        raise FlowInvalidError(f"cannot edit {', '.join(sorted(unknown))} of an edge; "
                               f"editable: {', '.join(sorted(allowed))}")
    data = flow.model_dump(mode="json")
    for ed in data["edges"]:
        if ed["id"] == edge_id:
            ed.update(fields)
            if isinstance(ed.get("when"), str):
                ed["when"] = ed["when"].strip() or None
            break
    else:
        raise FlowInvalidError(f"no edge '{edge_id}' in flow '{flow.name}'")
    return _validated(data, f"edge '{edge_id}'")


def update_flow(flow: Flow, **fields: Any) -> Flow:
    """Change flow-level settings: description, start, system_prompt, variables."""
    allowed = {"description", "start", "system_prompt", "variables"}
    unknown = set(fields) - allowed
    if unknown:
        raise FlowInvalidError(f"cannot edit {', '.join(sorted(unknown))} here; editable: {', '.join(sorted(allowed))}")
    data = flow.model_dump(mode="json")
    data.update(fields)
    return _validated(data, "flow settings")


def parse_variables(text: str) -> dict[str, Any]:
    """Scenario variables written as YAML (name: {kind: choice, values: [...]}) -> checked plain dicts."""
    try:
        doc = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise FlowInvalidError(
            f"the variables are not valid YAML{where}; write one `name: {{kind: ...}}` per line") from None
    if not isinstance(doc, dict):
        raise FlowInvalidError("variables must be a mapping `name: {kind: choice|range|text, ...}`")
    try:
        parsed = _VARIABLES.validate_python(doc)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise FlowInvalidError(f"variable {loc}: {err['msg']}; see the kinds choice (values), range (min, max), "
                               "text (pool)") from None
    return {k: v.model_dump(mode="json") for k, v in parsed.items()}


def variables_text(flow: Flow) -> str:
    """The flow's variables as the YAML `parse_variables` reads."""
    if not flow.variables:
        return ""
    doc = {k: v.model_dump(mode="json", exclude_defaults=True) | {"kind": v.kind} for k, v in flow.variables.items()}
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, default_flow_style=None)


def unplaced(flow: Flow) -> list[str]:
    """Ids of nodes without a canvas position (imported flows); the canvas lays these out."""
    return [n.id for n in flow.nodes if n.position is None]


# ----------------------------------------------------------------------------------------------


def _fresh(flow: Flow) -> Flow:
    """Rebuild so edge ids are filled and lookup caches match the edited lists."""
    return Flow.model_validate(flow.model_dump(mode="json"))


def _validated(data: dict[str, Any], what: str) -> Flow:
    try:
        return Flow.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise FlowInvalidError(f"{what}: {loc}: {err['msg']}; change that field and try again") from None
