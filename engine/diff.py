"""What changed between two versions of a flow: nodes, edges, prompts, variables and flow settings.

Nodes are matched by id, edges by id (`source->target` unless given), variables by name. A node
that only moved on the canvas is listed under `nodes_moved`, apart from real changes.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engine.flow import Flow

_FLOW_FIELDS = ("name", "description", "start", "system_prompt", "schema_version")
_NODE_FIELDS = ("label", "role", "outcome", "prompt", "examples")
_EDGE_FIELDS = ("source", "target", "when", "weight", "examples")


class Change(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item: str = Field(description="Node id, edge id, variable name, or 'flow' for flow settings.")
    field: str = Field(description="The field that changed (for variables: 'definition').")
    old: Any = Field(description="Value before.")
    new: Any = Field(description="Value after.")


class FlowDiff(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flow_changes: list[Change] = Field(default_factory=list, description="Name, description, start, system prompt.")
    nodes_added: list[str] = Field(default_factory=list, description="Ids of nodes only in the new flow.")
    nodes_removed: list[str] = Field(default_factory=list, description="Ids of nodes only in the old flow.")
    nodes_changed: list[Change] = Field(default_factory=list, description="One entry per changed node field.")
    nodes_moved: list[str] = Field(default_factory=list, description="Nodes whose canvas position changed.")
    edges_added: list[str] = Field(default_factory=list, description="Ids of edges only in the new flow.")
    edges_removed: list[str] = Field(default_factory=list, description="Ids of edges only in the old flow.")
    edges_changed: list[Change] = Field(default_factory=list, description="One entry per changed edge field.")
    variables_added: list[str] = Field(default_factory=list, description="Variables only in the new flow.")
    variables_removed: list[str] = Field(default_factory=list, description="Variables only in the old flow.")
    variables_changed: list[Change] = Field(default_factory=list, description="Variables whose definition changed.")

    @property
    def is_empty(self) -> bool:
        return not any(getattr(self, name) for name in type(self).model_fields)

    @property
    def prompts_changed(self) -> list[str]:
        """Ids of nodes whose prompt changed (the change a generator notices most)."""
        return [c.item for c in self.nodes_changed if c.field == "prompt"]

    def summary(self) -> list[str]:
        """Readable lines, one per change: `+` added, `-` removed, `~` changed."""
        lines = [f"~ {c.field}: {_short(c.old)} -> {_short(c.new)}" for c in self.flow_changes]
        lines += [f"+ node {n}" for n in self.nodes_added]
        lines += [f"- node {n}" for n in self.nodes_removed]
        lines += [f"~ node {c.item}: {c.field} {_short(c.old)} -> {_short(c.new)}" for c in self.nodes_changed]
        lines += [f"~ node {n}: moved" for n in self.nodes_moved]
        lines += [f"+ edge {e}" for e in self.edges_added]
        lines += [f"- edge {e}" for e in self.edges_removed]
        lines += [f"~ edge {c.item}: {c.field} {_short(c.old)} -> {_short(c.new)}" for c in self.edges_changed]
        lines += [f"+ variable {v}" for v in self.variables_added]
        lines += [f"- variable {v}" for v in self.variables_removed]
        lines += [f"~ variable {c.item}: {_short(c.old)} -> {_short(c.new)}" for c in self.variables_changed]
        return lines


def diff_flows(old: Flow, new: Flow) -> FlowDiff:
    d = FlowDiff()
    for f in _FLOW_FIELDS:
        if getattr(old, f) != getattr(new, f):
            d.flow_changes.append(Change(item="flow", field=f, old=getattr(old, f), new=getattr(new, f)))

    old_nodes, new_nodes = {n.id: n for n in old.nodes}, {n.id: n for n in new.nodes}
    d.nodes_added = [i for i in new_nodes if i not in old_nodes]
    d.nodes_removed = [i for i in old_nodes if i not in new_nodes]
    for i in (i for i in new_nodes if i in old_nodes):
        a, b = old_nodes[i].model_dump(mode="json"), new_nodes[i].model_dump(mode="json")
        d.nodes_changed += [Change(item=i, field=f, old=a[f], new=b[f]) for f in _NODE_FIELDS if a[f] != b[f]]
        if a["position"] != b["position"]:
            d.nodes_moved.append(i)

    old_edges, new_edges = {e.id: e for e in old.edges}, {e.id: e for e in new.edges}
    d.edges_added = [i for i in new_edges if i not in old_edges]
    d.edges_removed = [i for i in old_edges if i not in new_edges]
    for i in (i for i in new_edges if i in old_edges):
        a, b = old_edges[i].model_dump(mode="json"), new_edges[i].model_dump(mode="json")
        d.edges_changed += [Change(item=i, field=f, old=a[f], new=b[f]) for f in _EDGE_FIELDS if a[f] != b[f]]

    old_vars = {k: v.model_dump(mode="json") for k, v in old.variables.items()}
    new_vars = {k: v.model_dump(mode="json") for k, v in new.variables.items()}
    d.variables_added = [k for k in new_vars if k not in old_vars]
    d.variables_removed = [k for k in old_vars if k not in new_vars]
    d.variables_changed = [Change(item=k, field="definition", old=old_vars[k], new=new_vars[k])
                           for k in new_vars if k in old_vars and old_vars[k] != new_vars[k]]
    return d


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value) if not isinstance(value, str) else repr(value.replace("\n", " "))
    return text if len(text) <= limit else text[: limit - 3] + "..."
