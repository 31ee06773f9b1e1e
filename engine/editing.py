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
from engine.flow import ROLES, Edge, Flow, Node, Position, Variable

# What a fresh node of each role looks like (label, outcome) before the user edits it.
_NEW_NODE: dict[str, tuple[str, str | None]] = {
    "agent": ("Agent turn", None),
    "user": ("User turn", None),
    "decision": ("Decision", None),
    "terminal": ("Done", "success"),
}
_VARIABLES = TypeAdapter(dict[str, Variable])


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


def remove(flow: Flow, nodes: list[str] | tuple[str, ...] = (), edges: list[str] | tuple[str, ...] = ()) -> Flow:
    """Remove nodes (with every edge touching them) and edges; unknown ids are ignored."""
    gone_nodes, gone_edges = set(nodes), set(edges)
    out = flow.copy_deep()
    out.nodes = [n for n in out.nodes if n.id not in gone_nodes]
    out.edges = [e for e in out.edges
                 if e.id not in gone_edges and e.source not in gone_nodes and e.target not in gone_nodes]
    if out.start in gone_nodes:
        out.start = ""  # the validator then says to pick a new start node
    return _fresh(out)


def move_nodes(flow: Flow, positions: dict[str, tuple[float, float]]) -> Flow:
    """Set canvas positions (x, y) of nodes; unknown ids are ignored."""
    out = flow.copy_deep()
    for n in out.nodes:
        if n.id in positions:
            x, y = positions[n.id]
            n.position = Position.model_validate({"x": round(float(x), 1), "y": round(float(y), 1)})
    return out


def update_node(flow: Flow, node_id: str, **fields: Any) -> Flow:
    """Change label, role, outcome, prompt or examples of one node (validated like a loaded flow)."""
    allowed = {"label", "role", "outcome", "prompt", "examples"}
    unknown = set(fields) - allowed
    if unknown:
        raise FlowInvalidError(f"cannot edit {', '.join(sorted(unknown))} of a node; editable: {', '.join(sorted(allowed))}")
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
        raise FlowInvalidError(f"cannot edit {', '.join(sorted(unknown))} of an edge; editable: {', '.join(sorted(allowed))}")
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
        raise FlowInvalidError(f"the variables are not valid YAML{where}; write one `name: {{kind: ...}}` per line") from None
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
