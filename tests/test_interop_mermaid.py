"""Mermaid: export then import gives back the same graph; other people's diagrams import with a summary of
what was guessed; syntax subterra cannot read is one clear error naming the line."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings

from engine.cli import main
from engine.errors import FlowFileError
from engine.flow import Flow
from engine.formats import export_flow, import_text, load_flow_file
from engine.paths import path_stats
from engine.store import Store
from engine.validate import validate
from tests.test_formats import flows

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ["travel", "zoom", "insurance"]


def structure(f: Flow) -> tuple:
    return (f.start, [(n.id, n.role, n.outcome) for n in f.nodes], [(e.source, e.target, e.when) for e in f.edges])


@pytest.mark.parametrize("name", SAMPLES)
def test_round_trip_of_every_sample_flow(name: str) -> None:
    flow = load_flow_file(ROOT / "sample_flows" / f"{name}.yaml")
    result = import_text(export_flow(flow, "mermaid").text, source=f"{name}.mmd")
    back = result.flow
    assert structure(back) == structure(flow)
    assert [n.label or n.id for n in back.nodes] == [n.label or n.id for n in flow.nodes]
    for visits in (1, 2):
        assert path_stats(back, max_visits=visits).paths == path_stats(flow, max_visits=visits).paths
    # what a diagram cannot hold is said, not silently dropped
    codes = {p.code for p in validate(back)}
    assert "placeholder-prompt" in codes and "unreachable" not in codes and "trap" not in codes


@pytest.mark.parametrize("name", SAMPLES)
def test_round_trip_without_the_subterra_comment_keeps_the_paths(name: str) -> None:
    """A diagram edited elsewhere may lose the comment: shapes and classes still give the roles."""
    flow = load_flow_file(ROOT / "sample_flows" / f"{name}.yaml")
    text = "\n".join(line for line in export_flow(flow, "mermaid").text.splitlines() if not line.startswith("%%"))
    back = import_text(text, source=f"{name}.mmd").flow
    assert [n.role for n in back.nodes] == [n.role for n in sorted(flow.nodes, key=lambda n: n.id != flow.start)]
    assert path_stats(back, max_visits=2).paths == path_stats(flow, max_visits=2).paths
    assert [n.outcome for n in back.terminals if n.outcome == "success"] == ["success"]


def test_labels_with_quotes_hashes_and_newlines_survive() -> None:
    flow = Flow.model_validate({
        "name": "q", "start": "a",
        "nodes": [{"id": "a", "role": "agent", "label": 'Say "hi" #1\nthen wait'},
                  {"id": "t", "role": "terminal", "outcome": "success"}],
        "edges": [{"source": "a", "target": "t", "when": 'they said "bye"'}]})
    back = import_text(export_flow(flow, "mermaid").text, source="q.mmd").flow
    assert back.node("a").label == 'Say "hi" #1\nthen wait' and back.edges[0].when == 'they said "bye"'


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(flows())
def test_round_trip_of_any_graph_keeps_ids_roles_outcomes_edges_and_labels(flow: Flow) -> None:
    ids = [n.id for n in flow.nodes]
    assume(ids and len(set(ids)) == len(ids))
    flow = flow.model_copy(update={"start": ids[-1],
                                   "edges": [e for e in flow.edges if e.source in ids and e.target in ids]})
    back = import_text(export_flow(flow, "mermaid").text, source="x.mmd").flow
    assert (back.start, [(n.id, n.role, n.outcome if n.role == "terminal" else None) for n in back.nodes],
            [(e.source, e.target, e.when or None) for e in back.edges]) == (
        flow.start, [(n.id, n.role, n.outcome if n.role == "terminal" else None) for n in flow.nodes],
        [(e.source, e.target, e.when or None) for e in flow.edges])
    assert [n.label or n.id for n in back.nodes] == [n.label or n.id for n in flow.nodes]


def test_a_hand_written_diagram_imports_with_what_was_guessed() -> None:
    text = """---
title: Refund desk
---
flowchart LR
    S([Start]) --> A[Greet the customer]
    A --> B[/Customer explains/]
    B --> C{Order found?}
    C -->|yes| D[Offer a refund] --> E([Refunded])
    C -- no --> F[Ask for the order number]
    F --> B
    C -. "wants a person" .-> G((Escalate to a human))
    D & F --> H[Customer hangs up]
    style S fill:#f9f
    subgraph refunds [Refunds]
      D
    end
"""
    result = import_text(text, source="refund.mmd")
    f = result.flow
    assert (f.name, f.description, f.start) == ("refund", "Refund desk", "A")
    assert [(n.id, n.role, n.outcome) for n in f.nodes] == [
        ("A", "agent", None), ("B", "user", None), ("C", "decision", None), ("D", "agent", None),
        ("E", "terminal", "success"), ("F", "agent", None), ("G", "terminal", "escalated"),
        ("H", "terminal", "abandoned")]
    assert [(e.source, e.target, e.when) for e in f.out_edges("C")] == [
        ("C", "D", "yes"), ("C", "F", "no"), ("C", "G", "wants a person")]
    assert result.notes == [
        "took 'A' as the start ('S' only marks the start, so it was left out)",
        "read H as terminal (no outgoing link)",
        "guessed terminal outcomes from their labels: E success, G escalated, H abandoned",
        "4 agent/user node(s) have placeholder prompts (a diagram holds none): write them on the canvas; the "
        "validator reports each as placeholder-prompt",
        "dropped the grouping of 1 subgraph(s); their nodes are kept",
        "ignored style lines (styling and interaction only)",
    ]
    placeholder = [p.node for p in validate(f) if p.code == "placeholder-prompt"]
    assert placeholder == ["A", "B", "D", "F"]


@pytest.mark.parametrize(("text", "message"), [
    ("sequenceDiagram\n  A->>B: hi\n",
     "x.mmd: line 1: expected `flowchart TD` or `flowchart LR` first, found 'sequenceDiagram'; subterra reads "
     "Mermaid flowcharts only"),
    ("flowchart TD\n  A[Hi] --> B\n  A ~> B\n",
     "x.mmd: line 3: cannot read 'A ~> B' at column 3: expected a link such as --> or the end of the line; "
     "subterra reads nodes (A[text], A{text}, A([text]), ...), links (-->, -- text -->, -->|text|), class, "
     "classDef, style and subgraph lines"),
    ("flowchart TD\n  A[Hi --> B\n",
     "x.mmd: line 2: cannot read 'A[Hi --> B' at column 1: a node shape is never closed; subterra reads nodes "
     "(A[text], A{text}, A([text]), ...), links (-->, -- text -->, -->|text|), class, classDef, style and "
     "subgraph lines"),
    ("flowchart TD\n  A --> B\n  end\n",
     "x.mmd: line 3: `end` closes no subgraph; remove it, or name the node differently (end is a Mermaid keyword)"),
    ("flowchart TD\n  A@{ shape: rect } --> B\n",
     "x.mmd: line 2: cannot read 'A@{ shape: rect } --> B' at column 1: the `A@{ shape: ... }` syntax is not "
     "supported; write A[text], A{text} or A([text]); subterra reads nodes (A[text], A{text}, A([text]), ...), "
     "links (-->, -- text -->, -->|text|), class, classDef, style and subgraph lines"),
    ("flowchart TD\n", "x.mmd: the flowchart has no nodes; add at least `A[Start] --> B([Done])`"),
    ("flowchart TD\n  subgraph s\n  A --> B\n", "x.mmd: 1 subgraph(s) are never closed; add an `end` line for each"),
])
def test_unknown_syntax_is_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(FlowFileError) as info:
        import_text(text, source="x.mmd", fmt="mermaid")
    assert str(info.value) == message


def test_cli_import_of_a_diagram_and_a_refused_replacement(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mmd = tmp_path / "travel.mmd"
    assert main(["export", "travel", "--format", "mermaid", "-o", str(mmd)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: a Mermaid diagram shows the graph only: prompts, example utterances")
    assert main(["import", str(mmd)]) == 1  # the sample flow 'travel' is stored already
    assert capsys.readouterr().err.endswith(
        "error: a flow named 'travel' is already stored; add --force to store this import as its next version, "
        "or --name NEW to store it under another name\n")
    assert main(["import", str(mmd), "--name", "travel-diagram"]) == 0
    err = capsys.readouterr().err
    assert "import summary (mermaid): what was guessed or left out" in err
    assert "stored flow 'travel-diagram' as version 1" in err
    assert main(["import", str(mmd), "--name", "../escape"]) == 2
    assert capsys.readouterr().err == (
        "error: --name: '../escape' cannot be used as a name: use letters, digits, '_', '-' and '.', starting "
        "with a letter or digit, at most 64 characters\n")


def test_force_stores_a_changed_import_as_the_next_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mmd = tmp_path / "desk.mmd"
    mmd.write_text("flowchart TD\n  A[Greet] --> B[/Asks/] --> C([Done])\n")
    assert main(["import", str(mmd)]) == 0
    mmd.write_text("flowchart TD\n  A[Greet] --> B[/Asks/] --> C([Done])\n  B --> D([Hangs up])\n")
    assert main(["import", str(mmd)]) == 1
    assert main(["import", str(mmd), "--force"]) == 0
    assert "stored flow 'desk' as version 2" in capsys.readouterr().err
    assert [n.id for n in Store().get_flow("desk").terminals] == ["C", "D"]
