"""`subterra recompile`: diff against the compiled version, reuse untouched conversations, regenerate the rest,
fine-tune from the previous model, check the change (tiny random model, scripted data)."""

from __future__ import annotations

import json

import pytest

from engine.cli import main
from engine.diff import diff_flows
from engine.recompile import classify, touched

HANDOFF = ["I'm connecting you with a senior travel specialist from our Lisbon office right now.",
           "A senior specialist from our Lisbon office will take over this conversation in a moment.",
           "Let me bring in a senior specialist from our Lisbon office who can sort this out.",
           "One moment: I'm passing you to our Lisbon office's senior specialist team."]


@pytest.fixture
def compiled(tmp_path, tiny_model_dir, store, capsys):
    assert main(["generate", "travel", "-n", "24", "--dataset", "travel"]) == 0
    out = tmp_path / "v1"
    assert main(["compile", "travel", "--dataset", "travel", "--base", str(tiny_model_dir), "--max-steps", "2",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    return out


def _edit_handoff(store):
    flow = store.get_flow("travel")
    node = flow.node("handoff")
    node.prompt = "Tell the customer a senior specialist from the Lisbon office takes over, and say goodbye."
    node.examples = HANDOFF
    store.save_flow(flow, message="handoff via Lisbon")
    return flow


def test_touched_and_classify_follow_the_diff(store):
    old = store.get_flow("travel")
    new = _edit_handoff(store)
    nodes, pairs = touched(diff_flows(old, new), old, new)
    assert nodes == {"handoff"} and pairs == set()
    keep = {"meta": {"path": ["greet", "describe_trip", "triage", "present_options", "react_options", "choice",
                              "confirm_booking", "booked"]}}
    through = {"meta": {"path": ["greet", "describe_trip", "triage", "handoff", "escalated"]}}
    gone = {"meta": {"path": ["greet", "describe_trip", "triage", "nowhere", "escalated"]}}
    assert [classify(r, new, nodes, pairs) for r in (keep, through, gone, {"meta": {}})] == [
        "keep", "touched", "invalid", "invalid"]


def test_recompile_reuses_untouched_conversations_and_records_itself(compiled, store, capsys):
    assert main(["recompile", "travel", "--model", str(compiled)]) == 0
    assert "nothing to recompile: the model is up to date" in capsys.readouterr().out
    _edit_handoff(store)
    assert main(["recompile", "travel", "--model", str(compiled), "--min-new", "6", "--probes", "1",
                 "--out", str(compiled.parent / "v2")]) == 0
    out = capsys.readouterr().out
    assert "~ node handoff: prompt" in out and "~ node handoff: examples" in out
    prov = json.loads((compiled.parent / "v2" / "subterra.json").read_text())
    rec = prov["recompile"]
    assert rec["touched_nodes"] == ["handoff"] and rec["kept"] > 0 and rec["generated"] >= 6
    assert rec["kept"] + rec["dropped_touched"] + rec["dropped_invalid"] == 24
    assert set(rec["stage_seconds"]) == {"diff", "generate", "train", "evaluate"}
    assert prov["flow_version"] == rec["version"] == store.flow_version("travel")
    assert prov["config"]["base"] == str(compiled) and prov["config"]["preset"] == "quick"
    data = [json.loads(x) for x in open(rec["dataset_file"])]
    reused = [r for r in data if r["meta"].get("reused")]
    assert len(reused) == rec["kept"] and all("handoff" not in r["meta"]["path"] for r in reused)
    fresh = [r for r in data if r["meta"].get("recompile")]
    assert fresh and all("handoff" in r["meta"]["path"] for r in fresh)
    said = [m["content"] for r in fresh for m, n in zip(r["messages"], r["meta"]["message_nodes"], strict=True)
            if n == "handoff"]
    assert said and all("Lisbon" in s for s in said)  # the new examples, not the old ones
    [check] = rec["checks"]
    assert check["node"] == "handoff" and check["probes"] == 1
    assert f"recompiled {compiled.parent / 'v2'}" in out and "train:" in out


def test_recompile_without_a_model_says_what_to_do(store, capsys):
    assert main(["recompile", "travel", "--model", "nope"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: no compiled model 'nope' to recompile (neither a registry name nor a model directory); "
        "compile it first with `subterra compile FLOW`, or pass --model")
