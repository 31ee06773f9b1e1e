"""The flowchart model: a procedure F = (N, E, n0, T) as in the paper.

Nodes are agent turns, user turns, decision hubs (no utterance, only branching) and
terminals (with an outcome). Edges carry an optional natural-language condition and a
sampling weight. Scenario variables describe what varies between conversations.

These pydantic models are the contract every other module reads; reading and writing
files lives in `engine.formats`, checking in `engine.validate`, walking in `engine.paths`.
"""

from __future__ import annotations

import re
from functools import cached_property
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SCHEMA_VERSION = 1

Role = Literal["agent", "user", "decision", "terminal"]
ROLES: tuple[str, ...] = ("agent", "user", "decision", "terminal")
STANDARD_OUTCOMES: tuple[str, ...] = ("success", "abandoned", "escalated")

_PLACEHOLDER = re.compile(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_]*)\}(?!\})")


def placeholders(template: str) -> list[str]:
    """Names of `{variable}` placeholders in a template, in order of first use (`{{x}}` is a literal)."""
    seen: dict[str, None] = {}
    for m in _PLACEHOLDER.finditer(template or ""):
        seen.setdefault(m.group(1), None)
    return list(seen)


def render_template(template: str, values: dict[str, object]) -> str:
    """Fill `{variable}` placeholders; unknown names are left as they are, `{{`/`}}` become braces."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        return str(values[name]) if name in values else m.group(0)

    return _PLACEHOLDER.sub(sub, template or "").replace("{{", "{").replace("}}", "}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


class Position(_Model):
    x: float = Field(0.0, description="Canvas x coordinate (pixels).")
    y: float = Field(0.0, description="Canvas y coordinate (pixels).")


class Node(_Model):
    id: str = Field(description="Unique id, referenced by edges and by `start`.")
    label: str = Field("", description="Short human name shown on the canvas.")
    role: Role = Field(description="agent turn, user turn, decision hub (no utterance) or terminal.")
    outcome: str | None = Field(
        None, description="Terminals only: success, abandoned, escalated, or a custom word."
    )
    prompt: str = Field(
        "", description="Instruction a generator gets at this node; `{variable}` placeholders allowed."
    )
    examples: list[str] = Field(
        default_factory=list, description="Example utterances (templates) the offline generator renders."
    )
    position: Position | None = Field(None, description="Where the node sits on the canvas.")

    @property
    def speaks(self) -> bool:
        """True for nodes that produce a message (agent and user turns)."""
        return self.role in ("agent", "user")

    @property
    def display(self) -> str:
        return self.label or self.id


class Edge(_Model):
    id: str = Field("", description="Stable id; filled as 'source->target' when left empty.")
    source: str = Field(description="Id of the node the edge leaves.")
    target: str = Field(description="Id of the node the edge enters.")
    when: str | None = Field(None, description="Natural-language condition under which this edge is taken.")
    weight: float | None = Field(None, ge=0, description="Relative sampling weight among sibling edges.")
    examples: list[str] = Field(
        default_factory=list,
        description="Decision-hub branches: example user utterances (templates) that make `when` true; the "
        "offline generator uses them for the user turn just before the hub so dialogue and branch agree.",
    )


class ChoiceVariable(_Model):
    kind: Literal["choice"] = "choice"
    values: list[str | int | float | bool] = Field(min_length=1, description="The values to choose from.")
    weights: list[float] | None = Field(None, description="Relative weight of each value (same length).")
    description: str = ""

    @model_validator(mode="after")
    def _weights_match(self) -> ChoiceVariable:
        if self.weights is not None:
            if len(self.weights) != len(self.values):
                raise ValueError(
                    f"weights has {len(self.weights)} entries but values has {len(self.values)}; "
                    "give one weight per value"
                )
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("weights must be non-negative and not all zero")
        return self


class RangeVariable(_Model):
    kind: Literal["range"] = "range"
    min: float = Field(description="Smallest value.")
    max: float = Field(description="Largest value.")
    integer: bool = Field(True, description="Draw whole numbers.")
    description: str = ""

    @model_validator(mode="after")
    def _ordered(self) -> RangeVariable:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max}); swap them")
        return self


class TextVariable(_Model):
    kind: Literal["text"] = "text"
    pool: list[str] = Field(min_length=1, description="Texts to draw from (names, complaints, ...).")
    description: str = ""


Variable = Annotated[ChoiceVariable | RangeVariable | TextVariable, Field(discriminator="kind")]


class Flow(_Model):
    schema_version: int = Field(SCHEMA_VERSION, description="Version of this file format.")
    name: str = Field(min_length=1, description="Flow name; also its key in the store.")
    description: str = ""
    start: str = Field("", description="Id of the start node n0.")
    system_prompt: str = Field(
        "", description="The minimal runtime system prompt of the compiled agent (no procedure in it)."
    )
    variables: dict[str, Variable] = Field(default_factory=dict, description="Scenario variables.")
    nodes: list[Node] = Field(default_factory=list)
    edges: list[Edge] = Field(default_factory=list)

    @model_validator(mode="after")
    def _edge_ids(self) -> Flow:
        seen: set[str] = {e.id for e in self.edges if e.id}
        for e in self.edges:
            if not e.id:
                base = f"{e.source}->{e.target}"
                eid, k = base, 2
                while eid in seen:
                    eid, k = f"{base}#{k}", k + 1
                e.id = eid
                seen.add(eid)
        return self

    # -- lookups (cached: flows are treated as immutable once built; copy to edit) ----------------
    @cached_property
    def node_map(self) -> dict[str, Node]:
        return {n.id: n for n in self.nodes}

    def node(self, node_id: str) -> Node:
        return self.node_map[node_id]

    def out_edges(self, node_id: str) -> list[Edge]:
        return [e for e in self.edges if e.source == node_id]

    def in_edges(self, node_id: str) -> list[Edge]:
        return [e for e in self.edges if e.target == node_id]

    @property
    def terminals(self) -> list[Node]:
        return [n for n in self.nodes if n.role == "terminal"]

    def edge_between(self, source: str, target: str) -> Edge | None:
        for e in self.edges:
            if e.source == source and e.target == target:
                return e
        return None

    def copy_deep(self) -> Flow:
        """An independent, editable copy (lookup caches are not shared)."""
        return Flow.model_validate(self.model_dump(mode="json"))
