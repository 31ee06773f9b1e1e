"""engine.editing: the canvas's edits as pure functions on a Flow."""

from __future__ import annotations

import pytest

from engine import editing
from engine.errors import FlowInvalidError
from engine.validate import validate


def test_new_flow_is_valid_and_has_no_problems() -> None:
    flow = editing.new_flow("  demo ")
    assert flow.name == "demo" and flow.start == "greet"
    assert validate(flow) == []
    with pytest.raises(FlowInvalidError, match="a flow needs a name"):
        editing.new_flow(" ")


def test_add_connect_remove_never_mutate_the_input() -> None:
    base = editing.new_flow("demo")
    before = base.model_dump()
    flow, a = editing.add_node(base, "agent", 10, 20)
    flow, b = editing.add_node(flow, "agent")
    assert (a, b) == ("agent_1", "agent_2")
    assert flow.node(a).position is not None and flow.node(a).position.x == 10
    flow, eid = editing.connect(flow, "greet", a)
    assert eid == "greet->agent_1" and flow.edge_between("greet", a) is not None
    again, same = editing.connect(flow, "greet", a)
    assert same == eid and len(again.edges) == len(flow.edges)  # no duplicate edge
    flow = editing.remove(flow, nodes=[a])
    assert a not in flow.node_map and flow.edge_between("greet", a) is None
    assert base.model_dump() == before


def test_removing_the_start_node_clears_start_so_the_validator_asks_for_one() -> None:
    flow = editing.remove(editing.new_flow("demo"), nodes=["greet"])
    assert flow.start == ""
    assert any(p.severity == "error" for p in validate(flow))


def test_update_node_role_change_handles_outcome() -> None:
    flow = editing.new_flow("demo")
    flow = editing.update_node(flow, "done", outcome="escalated")
    assert flow.node("done").outcome == "escalated"
    flow = editing.update_node(flow, "done", role="agent")
    assert flow.node("done").outcome is None
    flow = editing.update_node(flow, "greet", role="terminal")
    assert flow.node("greet").outcome == "success"
    flow = editing.update_node(flow, "done", examples=["  hi ", "", "there"])
    assert flow.node("done").examples == ["hi", "there"]
    with pytest.raises(FlowInvalidError, match="cannot edit id of a node"):
        editing.update_node(flow, "done", id="x")
    with pytest.raises(FlowInvalidError, match="role"):
        editing.update_node(flow, "done", role="robot")


def test_update_edge_condition_and_weight() -> None:
    flow = editing.new_flow("demo")
    flow = editing.update_edge(flow, "greet->done", when="  the user is happy ", weight=2)
    e = flow.edge_between("greet", "done")
    assert e is not None and e.when == "the user is happy" and e.weight == 2
    flow = editing.update_edge(flow, "greet->done", when="   ")
    assert flow.edge_between("greet", "done").when is None  # type: ignore[union-attr]
    with pytest.raises(FlowInvalidError, match="weight"):
        editing.update_edge(flow, "greet->done", weight=-1)
    with pytest.raises(FlowInvalidError, match="no edge 'x'"):
        editing.update_edge(flow, "x", when="y")


def test_move_nodes_and_unplaced() -> None:
    flow = editing.new_flow("demo")
    flow = editing.move_nodes(flow, {"greet": (12.345, -3), "nope": (1, 1)})
    assert flow.node("greet").position.model_dump() == {"x": 12.3, "y": -3.0}  # type: ignore[union-attr]
    assert editing.unplaced(flow) == []


def test_variables_round_trip_and_readable_errors() -> None:
    text = "tier: {kind: choice, values: [free, pro], weights: [3, 1]}\nage: {kind: range, min: 18, max: 90}\n"
    variables = editing.parse_variables(text)
    flow = editing.update_flow(editing.new_flow("demo"), variables=variables)
    assert flow.variables["tier"].values == ["free", "pro"]
    assert editing.parse_variables(editing.variables_text(flow)) == variables
    with pytest.raises(FlowInvalidError, match="not valid YAML at line 1"):
        editing.parse_variables("tier: [")
    with pytest.raises(FlowInvalidError, match="swap them"):
        editing.parse_variables("age: {kind: range, min: 9, max: 1}")
    with pytest.raises(FlowInvalidError, match="must be a mapping"):
        editing.parse_variables("- a\n- b")
