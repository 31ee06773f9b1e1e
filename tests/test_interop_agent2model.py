"""agent2model export, checked by the real agent2model 0.1.0 CLI, and the import of what it accepts."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from engine.cli import main
from engine.flow import Flow, Note
from engine.formats import export_flow, import_text, load_flow_file, parse_flow
from engine.interop.outcomes import guess_kind
from engine.paths import path_stats
from tests.test_formats import flows

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ["travel", "zoom", "insurance"]
A2M = shutil.which("agent2model", path=str(Path(sys.executable).parent)) or shutil.which("agent2model")

needs_a2m = pytest.mark.skipif(A2M is None, reason="agent2model is not installed; `pip install -e '.[dev]'`")


def sample(name: str) -> Flow:
    return load_flow_file(ROOT / "sample_flows" / f"{name}.yaml")


def compile_with_agent2model(path: Path, out: Path) -> dict:
    """Run the real `agent2model compile`; return its normalised IR (flowchart.json)."""
    proc = subprocess.run([A2M, "compile", str(path), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"agent2model rejected {path.name}:\n{proc.stdout}\n{proc.stderr}"
    return json.loads((out / "flowchart.json").read_text())


def custom_outcome_flow() -> Flow:
    return Flow.model_validate({
        "name": "claims_mini", "start": "hi", "system_prompt": "You are a claims assistant.",
        "nodes": [
            {"id": "hi", "role": "agent", "prompt": "Ask what happened.", "label": "Greet"},
            {"id": "tell", "role": "user", "prompt": "Describe the loss."},
            {"id": "hub", "role": "decision"},
            {"id": "paid", "role": "terminal", "outcome": "success"},
            {"id": "denied", "role": "terminal", "outcome": "denied", "prompt": "Explain the denial."},
            {"id": "pending", "role": "terminal", "outcome": "pending"},
            {"id": "human", "role": "terminal", "outcome": "transferred_to_adjuster"},
        ],
        "edges": [
            {"source": "hi", "target": "tell"}, {"source": "tell", "target": "hub"},
            {"source": "hub", "target": "paid", "when": "the claim is covered", "weight": 3},
            {"source": "hub", "target": "denied", "when": "the policy excludes it"},
            {"source": "hub", "target": "pending", "when": "documents are missing"},
            {"source": "hub", "target": "human", "when": "the customer asks for a person"},
            {"source": "hub", "target": "hi", "when": "the story is unclear"},
        ],
        "variables": {"amount": {"kind": "range", "min": 100, "max": 900},
                      "kind": {"kind": "choice", "values": [1, 2], "description": "two options"},
                      "name": {"kind": "text", "pool": ["Ann", "Bo"]},
                      "cause": {"kind": "choice", "values": ["fire", "flood"], "weights": [3, 1]}},
    })


@pytest.mark.slow
@needs_a2m
@pytest.mark.parametrize("name", SAMPLES)
def test_agent2model_compiles_the_export_of_every_sample_flow(name: str, tmp_path: Path) -> None:
    flow = sample(name)
    result = export_flow(flow, "agent2model")
    path = tmp_path / f"{name}.yaml"
    path.write_text(result.text)
    ir = compile_with_agent2model(path, tmp_path / "build")
    assert set(ir["nodes"]) == {n.id for n in flow.nodes}
    assert ir["start"] == flow.start
    assert sum(len(n["next"]) for n in ir["nodes"].values()) == len(flow.edges)
    # agent2model's own compiled IR imports back with the same graph and paths (what it keeps: structure)
    via = load_flow_file(tmp_path / "build" / "flowchart.json")
    assert [(n.id, n.role) for n in via.nodes] == [(n.id, n.role) for n in flow.nodes]
    assert sorted((e.source, e.target, e.when or "") for e in via.edges) == sorted(
        (e.source, e.target, e.when or "") for e in flow.edges)  # grouped by source there
    assert path_stats(via, max_visits=2).paths == path_stats(flow, max_visits=2).paths
    # and subterra reads its own export back exactly, with the same paths
    back = load_flow_file(path)
    assert back.model_dump() == flow.model_dump()
    assert path_stats(back, max_visits=2).paths == path_stats(flow, max_visits=2).paths


@needs_a2m
def test_custom_outcomes_map_by_rule_and_by_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flow = custom_outcome_flow()
    src = tmp_path / "claims.json"
    src.write_text(flow.model_dump_json())
    out = tmp_path / "claims.yaml"
    assert main(["export", str(src), "--format", "agent2model", "-o", str(out), "--outcome", "denied=abandonment"]) == 0
    err = capsys.readouterr().err.splitlines()
    kinds = {nid: n.get("terminal") for nid, n in compile_with_agent2model(out, tmp_path / "b")["nodes"].items()}
    assert kinds == {"hi": None, "tell": None, "hub": None, "paid": "success", "denied": "abandonment",
                     "pending": "success", "human": "escalation"}
    outcome_lines = [line for line in err if "outcomes" in line]
    assert outcome_lines == [
        "warning: agent2model knows only the outcomes success, abandonment and escalation: wrote 'denied' -> "
        "abandonment (your --outcome), 'pending' -> success (default rule), 'transferred_to_adjuster' -> escalation "
        "(default rule); override with --outcome denied=abandonment (subterra reads the original back)"]
    # one line per kind of loss, each naming what was lost
    assert len(err) == len({line.split("(")[0] for line in err})
    for what in ("node labels", "terminal prompts", "edge weights", "the runtime system prompt",
                 "variable kinds, descriptions, weights and other variable fields"):
        assert sum(what in line for line in err) == 1, what
    back = load_flow_file(out)
    assert back.model_dump() == flow.model_dump()


@pytest.mark.parametrize("name", SAMPLES)
def test_agent2model_schema_and_validator_accept_every_sample_export(name: str) -> None:
    """The fast tier's version of the CLI test above: agent2model's own loader and graph validator."""
    pytest.importorskip("agent2model")
    from agent2model.ir.loader import load_flowchart_from_string
    from agent2model.ir.validator import enumerate_paths
    from agent2model.ir.validator import validate as a2m_validate

    flow = sample(name)
    fc = load_flowchart_from_string(export_flow(flow, "agent2model").text)
    a2m_validate(fc)
    assert len(list(enumerate_paths(fc, max_paths=10**6))) == path_stats(flow).paths


def test_export_writes_only_what_the_agent2model_schema_allows() -> None:
    pytest.importorskip("agent2model")
    from agent2model.ir.loader import load_flowchart_from_string
    from agent2model.ir.validator import validate as a2m_validate

    flow = custom_outcome_flow()
    flow.canvas.notes.append(Note(id="n1", text="ask legal"))
    text = export_flow(flow, "agent2model").text
    fc = load_flowchart_from_string(text)
    a2m_validate(fc)
    # agent2model reads the range as a range, the two-number choice as a choice, the weights as repeats
    assert fc.scenario_variables["amount"] == [100, 900]
    assert sorted(set(fc.scenario_variables["kind"])) == [1, 2] and len(fc.scenario_variables["kind"]) == 4
    assert fc.scenario_variables["cause"] == ["fire", "fire", "fire", "flood"]
    doc = yaml.safe_load(text)
    assert "system_prompt" not in doc and "label" not in doc["nodes"]["hi"]
    back = parse_flow(text, source="x.yaml")
    assert back.canvas.notes[0].text == "ask legal"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flows())
def test_export_then_import_is_lossless_for_any_flow(flow: Flow) -> None:
    text = export_flow(flow, "agent2model").text
    assert parse_flow(text, source="x.yaml", fmt="agent2model").model_dump(mode="json") == flow.model_dump(mode="json")


def test_an_edited_export_keeps_the_edit_over_the_stale_comment() -> None:
    flow = custom_outcome_flow()
    text = export_flow(flow, "agent2model").text
    text = text.replace("terminal: abandonment", "terminal: escalation", 1)  # nothing is abandonment: no-op
    text = text.replace("  denied:\n    terminal: success", "  denied:\n    terminal: escalation")
    text = text.replace("amount: [100, 900]", "amount: [100, 500]")
    result = import_text(text, source="edited.yaml")
    assert result.flow.node("denied").outcome == "escalated"  # the visible edit wins
    assert result.flow.node("pending").outcome == "pending"  # untouched: the comment restores it
    assert (result.flow.variables["amount"].min, result.flow.variables["amount"].max) == (100, 500)
    assert [n for n in result.notes if "edited" in n] == [
        "the file was edited after export: the subterra comment no longer matches outcome of denied; kept what "
        "agent2model's fields say there"]


def test_agent2model_examples_import_with_ranges(tmp_path: Path) -> None:
    pytest.importorskip("agent2model")
    import agent2model

    example = Path(agent2model.__file__).parent / "_examples" / "travel_booking" / "flowchart.yaml"
    result = import_text(example.read_bytes(), source=str(example))
    budget = result.flow.variables["budget_range"]
    assert (budget.kind, budget.min, budget.max, budget.integer) == ("range", 500, 5000, True)
    assert any("budget_range" in n and "ranges" in n for n in result.notes)


def test_outcome_rule() -> None:
    assert [guess_kind(w) for w in ("denied", "pending", "escalate_to_human", "hung_up", "customer_left",
                                    "transferred", "handoff", "booked")] == [
        "success", "success", "escalation", "abandonment", "abandonment", "escalation", "escalation", "success"]


def test_bad_outcome_override_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "claims.json"
    src.write_text(custom_outcome_flow().model_dump_json())
    assert main(["export", str(src), "--format", "agent2model", "--outcome", "denid=abandonment"]) == 2
    err = capsys.readouterr().err
    assert ("Invalid value for --outcome: no terminal of 'claims_mini' has the outcome 'denid'; its outcomes are "
            "denied, pending, success, transferred_to_adjuster") in err
    assert main(["export", str(src), "--format", "agent2model", "--outcome", "denied=lost"]) == 2
    assert "'denied=lost': write WORD=KIND with KIND success, abandonment or escalation" in capsys.readouterr().err
