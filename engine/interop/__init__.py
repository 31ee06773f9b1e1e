"""Other tools' formats: agent2model YAML (both ways), Mermaid flowcharts (both ways) and LangGraph
`StateGraph`s (import).

Each importer returns an `ImportResult`: the flow and the summary of what it had to guess (inserted
customer turns, inferred roles, mapped outcomes), which the CLI prints and the studio shows before the
flow is saved. Exporters return the text and one warning line per kind of information the target
format cannot hold. This package belongs to the flow vocabulary: it imports only `engine.flow`,
`engine.validate`, `engine.paths` and `engine.errors`.

What survives a round trip (export, then import):

- agent2model: everything, through subterra. The visible YAML holds what agent2model's schema allows
  (name, description, start, roles, prompts of agent/user/decision nodes, edges and conditions,
  terminal kinds, scenario pools: ranges as `[lo, hi]`, integer weights as repeated values); the rest
  (labels, examples, weights, system prompt, terminal prompts, positions, custom outcomes, variable
  kinds/descriptions/fields, canvas, any newer Flow field) rides in a trailing comment agent2model
  ignores. Through agent2model itself (its compiled IR) only the visible part survives; custom
  outcomes become one of its three kinds.
- Mermaid: node ids, roles, labels, the start, terminal outcomes, edges and conditions (ids, start
  and outcomes through a `%% subterra` comment; without it, roles still come from shapes and classes).
  Lost: prompts (imported as TODO placeholders), examples, variables, system prompt, description,
  weights, positions, canvas and custom edge ids.
- LangGraph: import only. Node names, plain and conditional edges (path-map keys as conditions), START
  and END. Not in a graph, so guessed or left for the person: customer turns, prompts, outcomes.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from engine.flow import Flow


class ImportResult(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    flow: Flow = Field(description="The imported flow (not yet stored).")
    format: str = Field(description="The format it was read as: json, yaml, agent2model, mermaid or langgraph.")
    notes: list[str] = Field(default_factory=list, description="What the import guessed or left out, one line each.")


class ExportResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The exported file.")
    warnings: list[str] = Field(default_factory=list, description="One line per kind of information lost.")
