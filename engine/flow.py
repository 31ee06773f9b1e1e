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

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

SCHEMA_VERSION = 1

Role = Literal["agent", "user", "decision", "terminal"]
ROLES: tuple[str, ...] = ("agent", "user", "decision", "terminal")
STANDARD_OUTCOMES: tuple[str, ...] = ("success", "abandoned", "escalated")

_PLACEHOLDER = re.compile(r"(?<!\{)\{([A-Za-z_][A-Za-z0-9_]*)\}(?!\})")

NAME_RULE = "letters, digits, '_', '-' and '.', starting with a letter or digit, at most 64 characters"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a flow or model (names become folder names), or None when it can."""
    if _SAFE_NAME.fullmatch(name or ""):
        return None
    return f"'{name}' cannot be used as a name: use {NAME_RULE}"


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
    model_config = ConfigDict(extra="forbid", validate_assignment=False, allow_inf_nan=False)  # no NaN/Infinity


def _empty(value: object) -> bool:
    # optional dialogue fields (gathers, ask, ...) are left out of dumps when empty: old files stay as they were
    return not value


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
    gathers: list[str] = Field(
        default_factory=list, exclude_if=_empty,
        description="Variables this turn collects: an agent turn asks only for those still unknown, a user turn "
        "states the ones it is asked for.",
    )
    confirms: list[str] = Field(
        default_factory=list, exclude_if=_empty,
        description="Variables an agent turn restates (with their latest values) so the customer can correct them.",
    )
    changes: list[str] = Field(
        default_factory=list, exclude_if=_empty,
        description="Variables a user turn may change: when the path loops back from here, the customer changes "
        "one of them and later turns use the new value.",
    )

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


class _VariableBase(_Model):
    """What every kind of scenario variable shares: its description and how the dialogue talks about it."""

    description: str = ""
    ask: list[str] = Field(
        default_factory=list, exclude_if=_empty,
        description="How the assistant asks for it: questions, one is picked (default: from the description).",
    )
    state: list[str] = Field(
        default_factory=list, exclude_if=_empty,
        description="How the customer states it: templates with the `{variable}` placeholder (default: "
        "'<name>: {variable}').",
    )
    cues: list[str] = Field(
        default_factory=list, exclude_if=_empty,
        description="Words that show a question is about it (data-quality report, simulator; default: the "
        "longer words of `ask` or the name).",
    )


class ChoiceVariable(_VariableBase):
    kind: Literal["choice"] = "choice"
    values: list[str | int | float | bool] = Field(min_length=1, description="The values to choose from.")
    weights: list[float] | None = Field(None, description="Relative weight of each value (same length).")

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


class RangeVariable(_VariableBase):
    kind: Literal["range"] = "range"
    min: float = Field(description="Smallest value.")
    max: float = Field(description="Largest value.")
    integer: bool = Field(True, description="Draw whole numbers.")

    @model_validator(mode="after")
    def _ordered(self) -> RangeVariable:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max}); swap them")
        return self


class TextVariable(_VariableBase):
    kind: Literal["text"] = "text"
    pool: list[str] = Field(min_length=1, description="Texts to draw from (names, complaints, ...).")


Variable = Annotated[ChoiceVariable | RangeVariable | TextVariable, Field(discriminator="kind")]


class Note(_Model):
    """A sticky note for the people editing the flow; never part of the procedure."""

    id: str = Field(description="Unique among the flow's notes.")
    text: str = Field("", description="What the note says.")
    position: Position = Field(default_factory=Position, description="Top-left corner on the canvas.")


class Group(_Model):
    """A labelled frame around some nodes on the canvas; a collapsed group is drawn as one card."""

    id: str = Field(description="Unique among the flow's groups.")
    label: str = Field("", description="Title shown on the frame.")
    nodes: list[str] = Field(default_factory=list, description="Ids of the nodes inside the frame.")
    collapsed: bool = Field(False, description="Draw the group as one card (its nodes hidden).")


class Canvas(_Model):
    """How the studio draws the flow. Only the canvas reads it: validation, paths, generation and
    training ignore it, and exporters other than json/yaml drop it."""

    direction: Literal["TB", "LR"] = Field("TB", description="Auto-layout direction: top-down or left-right.")
    notes: list[Note] = Field(default_factory=list, description="Sticky notes.")
    groups: list[Group] = Field(default_factory=list, description="Labelled, collapsible frames around nodes.")


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
    canvas: Canvas = Field(default_factory=Canvas, description="Notes, groups, layout direction (studio only).")

    @model_serializer(mode="wrap")
    def _omit_empty_canvas(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        # a flow without notes or groups dumps exactly as before the canvas field existed
        data: dict[str, object] = handler(self)
        if isinstance(data, dict) and self.canvas == Canvas():
            data.pop("canvas", None)
        return data

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
