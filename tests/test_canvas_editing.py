"""The canvas's edit operations (engine.editing) and its optional flow fields (notes, groups, layout
direction): saved in json/yaml and the version history, dropped by agent2model, ignored by validation,
paths and generation."""

from __future__ import annotations

import pytest
import yaml

from engine import editing
from engine.errors import FlowInvalidError
from engine.flow import Flow
from engine.formats import dump_flow, export_flow, parse_flow
from engine.generate import preview_dialogue
from engine.paths import path_stats
from engine.store import SAMPLE_FLOWS_DIR, Store
from engine.validate import validate


def travel() -> Flow:
    return parse_flow((SAMPLE_FLOWS_DIR / "travel.yaml").read_text(), source="travel.yaml")


def decorated() -> Flow:
    f = travel()
    f, _ = editing.add_note(f, 10, 20, "ask legal about refunds")
    f, _ = editing.add_group(f, ["greet", "describe_trip"], "Opening")
    return editing.set_direction(f, "LR")


def test_a_flow_without_canvas_extras_dumps_as_before() -> None:
    f = travel()
    assert "canvas" not in f.model_dump(mode="json") and "canvas" not in dump_flow(f, "yaml")


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_notes_groups_direction_round_trip(fmt: str) -> None:
    f = decorated()
    back = parse_flow(dump_flow(f, fmt), source=f"x.{fmt}")
    assert back == f
    assert back.canvas.direction == "LR"
    assert back.canvas.notes[0].text == "ask legal about refunds"
    assert back.canvas.groups[0].nodes == ["greet", "describe_trip"]


def test_agent2model_drops_them_and_the_procedure_ignores_them() -> None:
    f, plain = decorated(), travel()
    a2m = export_flow(f, "agent2model")  # agent2model itself has no canvas (subterra keeps it in a comment)
    assert yaml.safe_load(a2m.text) == yaml.safe_load(export_flow(plain, "agent2model").text)
    assert any("sticky notes" in w for w in a2m.warnings)
    assert "ask legal" not in dump_flow(f, "mermaid")
    assert validate(f) == validate(plain)
    assert path_stats(f) == path_stats(plain)
    path = ["greet", "describe_trip", "triage"]
    assert preview_dialogue(f, path, seed=3) == preview_dialogue(plain, path, seed=3)


def test_version_history_keeps_notes(store: Store) -> None:
    f = travel().model_copy(update={"name": "t"})
    store.save_flow(f)
    v = store.save_flow(editing.add_note(f, 0, 0, "first")[0])
    assert store.get_flow("t", v).canvas.notes[0].text == "first"
    assert store.get_flow("t", v - 1).canvas.notes == []


def test_add_connected_offers_and_connects() -> None:
    assert editing.NEXT_ROLES["user"][:2] == ("decision", "agent")
    f, nid = editing.add_connected(travel(), "describe_trip", "decision", 5, 6)
    assert f.node(nid).role == "decision" and f.edge_between("describe_trip", nid)
    f, pid = editing.add_connected(f, "greet", "agent", 0, 0, incoming=True)
    assert f.edge_between(pid, "greet")
    with pytest.raises(FlowInvalidError, match="is a terminal: nothing follows it"):
        editing.add_connected(f, "booked", "agent", 0, 0)


def test_copy_paste_keeps_inner_edges_with_fresh_ids() -> None:
    f = travel()
    snippet = editing.copy_nodes(f, ["describe_trip", "triage", "greet"])
    assert len(snippet["nodes"]) == 3
    assert {(e["source"], e["target"]) for e in snippet["edges"]} == {("greet", "describe_trip"),
                                                                      ("describe_trip", "triage")}
    g, ids = editing.paste(f, snippet, 100, 50)
    assert ids == ["greet_2", "describe_trip_2", "triage_2"]
    assert g.edge_between("greet_2", "describe_trip_2") and g.edge_between("describe_trip_2", "triage_2")
    assert not any(e.source in ids and e.target not in ids for e in g.edges)  # only the inner edges
    assert g.node("greet_2").position.x == f.node("greet").position.x + 100  # type: ignore[union-attr]
    assert len(g.nodes) == len(f.nodes) + 3 and g.start == f.start
    h, again = editing.duplicate(g, ["greet"])
    assert again == ["greet_3"]
    assert h.node("greet_3").prompt == f.node("greet").prompt


def test_paste_refuses_what_is_not_a_snippet() -> None:
    with pytest.raises(FlowInvalidError, match="nothing to paste"):
        editing.paste(travel(), {"nodes": []})
    with pytest.raises(FlowInvalidError, match="the clipboard does not hold canvas nodes"):
        editing.paste(travel(), {"nodes": [{"id": 3}]})


def test_groups_and_notes_follow_removals() -> None:
    f = decorated()
    f, g2 = editing.add_group(f, ["describe_trip", "triage"])  # a node is in one group at most
    assert [g.nodes for g in f.canvas.groups] == [["greet"], ["describe_trip", "triage"]]
    f = editing.update_group(f, g2, label="Trip", collapsed=True)
    assert f.canvas.groups[1].label == "Trip" and f.canvas.groups[1].collapsed
    f = editing.remove(f, nodes=["greet"])
    assert [g.id for g in f.canvas.groups] == [g2]  # the emptied group went with its last node
    f = editing.move_nodes(f, {}, notes={"note_1": (300, 400)})
    assert f.canvas.notes[0].position.x == 300
    f = editing.update_note(f, "note_1", "done")
    f = editing.remove(f, notes=["note_1"], groups=[g2])
    assert f.canvas.notes == [] and f.canvas.groups == [] and "describe_trip" in f.node_map
    with pytest.raises(FlowInvalidError, match="a group needs nodes"):
        editing.add_group(f, ["nope"])
    with pytest.raises(FlowInvalidError, match="unknown layout direction 'up'"):
        editing.set_direction(f, "up")
