"""The flow model: templates, edge ids, variables, lookups, and the contract's strictness."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from engine.flow import (
    ChoiceVariable,
    Edge,
    Flow,
    Node,
    RangeVariable,
    TextVariable,
    placeholders,
    render_template,
)


def flow() -> Flow:
    return Flow.model_validate({
        "name": "f", "start": "a",
        "variables": {"city": {"kind": "choice", "values": ["Rome", "Oslo"], "weights": [3, 1]},
                      "budget": {"kind": "range", "min": 100, "max": 900},
                      "mood": {"kind": "text", "pool": ["calm", "angry"]}},
        "nodes": [{"id": "a", "role": "agent", "prompt": "Offer {city} within {budget}."},
                  {"id": "u", "role": "user"}, {"id": "t", "role": "terminal", "outcome": "success"}],
        "edges": [{"source": "a", "target": "u"}, {"source": "a", "target": "u", "when": "again"},
                  {"source": "u", "target": "t"}],
    })


def test_placeholders_in_order_without_duplicates_or_escapes() -> None:
    assert placeholders("Hi {name}, {city} and {name} {{literal}} {not valid} {_x1}") == ["name", "city", "_x1"]
    assert placeholders("") == []


def test_render_template() -> None:
    assert render_template("Go to {city} for {days} days {{ok}}", {"city": "Rome"}) == "Go to Rome for {days} days {ok}"
    assert render_template("{n}", {"n": 3}) == "3"


def test_edge_ids_are_filled_and_unique() -> None:
    f = flow()
    assert [e.id for e in f.edges] == ["a->u", "a->u#2", "u->t"]
    explicit = Flow.model_validate({"name": "x", "edges": [{"source": "a", "target": "b"},
                                                           {"id": "a->b", "source": "c", "target": "d"}]})
    assert [e.id for e in explicit.edges] == ["a->b#2", "a->b"]


def test_lookups() -> None:
    f = flow()
    assert f.node("a").prompt.startswith("Offer")
    assert [e.target for e in f.out_edges("a")] == ["u", "u"]
    assert [e.source for e in f.in_edges("t")] == ["u"]
    assert [n.id for n in f.terminals] == ["t"]
    assert f.edge_between("u", "t") is not None and f.edge_between("t", "u") is None
    assert f.node("a").speaks and not f.node("t").speaks
    assert f.node("u").display == "u"


def test_variables_are_discriminated_by_kind() -> None:
    f = flow()
    assert isinstance(f.variables["city"], ChoiceVariable)
    assert isinstance(f.variables["budget"], RangeVariable) and f.variables["budget"].integer
    assert isinstance(f.variables["mood"], TextVariable)


@pytest.mark.parametrize("spec, message", [
    ({"kind": "choice", "values": ["a", "b"], "weights": [1]}, "weights has 1 entries but values has 2"),
    ({"kind": "choice", "values": ["a"], "weights": [0]}, "weights must be non-negative and not all zero"),
    ({"kind": "range", "min": 5, "max": 1}, "min (5.0) is greater than max (1.0); swap them"),
    ({"kind": "choice", "values": []}, "at least 1 item"),
    ({"kind": "colour", "values": ["red"]}, "does not match any of the expected tags"),
])
def test_bad_variables(spec: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Flow.model_validate({"name": "x", "variables": {"v": spec}})


def test_unknown_fields_and_bad_roles_are_refused() -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        Node.model_validate({"id": "a", "role": "agent", "colour": "red"})
    with pytest.raises(ValidationError, match="Input should be 'agent', 'user', 'decision' or 'terminal'"):
        Node.model_validate({"id": "a", "role": "bot"})
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        Edge.model_validate({"source": "a", "target": "b", "weight": -1})
    with pytest.raises(ValidationError):
        Flow.model_validate({"name": ""})


def test_copy_deep_is_independent() -> None:
    f = flow()
    assert f.node_map  # fill the cache
    g = f.copy_deep()
    g.nodes.append(Node(id="new", role="agent", prompt="p"))
    assert "new" not in f.node_map and g.node("new").id == "new"
    assert g.model_dump() != f.model_dump() and f.copy_deep().model_dump() == f.model_dump()


def test_every_field_is_documented() -> None:
    """The contract documents each field once (STYLE.md)."""
    undocumented = [
        f"{model.__name__}.{name}"
        for model in (Node, Edge, Flow, ChoiceVariable, RangeVariable, TextVariable)
        for name, info in model.model_fields.items()
        if not info.description and name not in ("kind", "description", "nodes", "edges")
    ]
    assert undocumented == []
