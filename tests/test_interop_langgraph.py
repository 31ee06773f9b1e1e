"""LangGraph import: a StateGraph built here, read by running its file in a child process, becomes a flow
with customer turns inserted and placeholder prompts flagged; hostile files give one clear error."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from engine.cli import main
from engine.errors import FlowFileError
from engine.formats import import_file
from engine.interop.langgraph import flow_from_graph
from engine.paths import path_stats
from engine.store import Store
from engine.validate import validate

pytest.importorskip("langgraph")

SUPPORT = '''
from typing import Literal, TypedDict

from langgraph.graph import END, START, StateGraph


class State(TypedDict):
    messages: list


def greet(state):
    """Greet the customer and ask what is wrong with their order."""
    return state


def diagnose(state):
    return state


def refund(state):
    return state


def escalate_to_human(state):
    return state


def route(state) -> str:
    return "known"


def after_refund(state) -> Literal["diagnose", "__end__"]:
    return "__end__"


def build_graph():
    g = StateGraph(State)
    for name, fn in [("greet", greet), ("diagnose", diagnose), ("refund", refund),
                     ("escalate_to_human", escalate_to_human)]:
        g.add_node(name, fn)
    g.add_edge(START, "greet")
    g.add_edge("greet", "diagnose")
    g.add_conditional_edges("diagnose", route, {
        "the order number is known": "refund",
        "details are missing": "diagnose",          # the loop
        "the customer wants a person": "escalate_to_human",
    })
    g.add_conditional_edges("refund", after_refund)  # targets from the Literal return type
    g.add_edge("escalate_to_human", END)
    return g.compile()
'''


def write(tmp_path: Path, name: str, code: str) -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(code))
    return p


def test_a_graph_with_a_branch_and_a_loop_imports_and_validates(tmp_path: Path) -> None:
    result = import_file(write(tmp_path, "support.py", SUPPORT))
    f = result.flow
    assert (f.name, f.start) == ("support", "greet")
    assert [(n.id, n.role) for n in f.nodes] == [
        ("greet", "agent"), ("greet_reply", "user"), ("diagnose", "agent"), ("diagnose_reply", "user"),
        ("diagnose_route", "decision"), ("refund", "agent"), ("refund_reply", "user"), ("refund_route", "decision"),
        ("escalate_to_human", "agent"), ("end", "terminal"), ("end_escalated", "terminal")]
    assert [(e.source, e.target, e.when) for e in f.edges] == [
        ("greet", "greet_reply", None), ("greet_reply", "diagnose", None),
        ("diagnose", "diagnose_reply", None), ("diagnose_reply", "diagnose_route", None),
        ("diagnose_route", "refund", "the order number is known"),
        ("diagnose_route", "diagnose", "details are missing"),
        ("diagnose_route", "escalate_to_human", "the customer wants a person"),
        ("refund", "refund_reply", None), ("refund_reply", "refund_route", None),
        ("refund_route", "diagnose", "diagnose"), ("refund_route", "end", "__end__"),
        ("escalate_to_human", "end_escalated", None)]
    assert f.node("end").outcome == "success" and f.node("end_escalated").outcome == "escalated"
    assert f.node("greet").prompt == "Greet the customer and ask what is wrong with their order."
    # every conversation alternates: no two agent turns in a row, and a customer turn before every hub
    for e in f.edges:
        a, b = f.node(e.source), f.node(e.target)
        assert not (a.role == "agent" and b.role in ("agent", "decision")), e.id
    problems = validate(f)
    codes = [p.code for p in problems if p.severity == "error"]
    assert set(codes) == {"placeholder-prompt"}  # the graph itself is sound: reachable, no traps, no dead ends
    assert sorted(p.node for p in problems if p.code == "placeholder-prompt") == sorted(
        ["greet_reply", "diagnose", "diagnose_reply", "refund", "refund_reply", "escalate_to_human"])
    assert path_stats(f, max_visits=1).paths == 2 and path_stats(f, max_visits=2).paths > 2
    notes = "\n".join(result.notes)
    assert "read the StateGraph from build_graph()" in notes
    assert "inserted 3 customer turn(s) (greet_reply, diagnose_reply, refund_reply)" in notes
    assert "END became 'end' (success), 'end_escalated' (escalated, from the node name)" in notes
    assert "6 prompt(s) are placeholders" in notes


def test_cli_warns_that_the_file_runs_then_stores_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "support.py", SUPPORT)
    assert main(["import", str(path)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("warning: reading support.py runs its Python code (in a separate process, at most 30 s); "
                      "import only files you trust")
    assert err[1] == "import summary (langgraph): what was guessed or left out"
    assert "stored flow 'support' as version 1" in err
    assert err[-1] == "note: the flow has 6 validation error(s); run `subterra validate support`"
    assert Store().get_flow("support").node("diagnose_route").role == "decision"
    # a second import of the same name never replaces it silently
    assert main(["import", str(path)]) == 1
    assert "a flow named 'support' is already stored; add --force" in capsys.readouterr().err
    assert main(["import", str(path), "--force"]) == 0
    assert "stored flow 'support' as version 1" in capsys.readouterr().err  # unchanged content: same version


@pytest.mark.parametrize(("code", "message"), [
    ("x = 1\nraise RuntimeError('no database configured')\n",
     "RuntimeError at line 2 while importing the file: no database configured"),
    ("import sys\nsys.exit(3)\n",
     "the file called sys.exit(3) while importing the file; a graph file should only build the graph"),
    ("def build_graph():\n    return 1 / 0\n",
     "ZeroDivisionError at line 2 while calling build_graph(): division by zero"),
    ("x = 1\n", "found no LangGraph StateGraph: define `build_graph()` returning one, or a module-level `graph` "
               "(a StateGraph or its compiled graph)"),
    ("answer = input('token? ')\n", "EOFError at line 1 while importing the file: EOF when reading a line"),
    ("def broken(:\n", "SyntaxError at line 1 while importing the file: invalid syntax"),
])
def test_a_file_that_raises_is_one_clear_error(tmp_path: Path, code: str, message: str) -> None:
    path = write(tmp_path, "bad.py", code)
    with pytest.raises(FlowFileError) as info:
        import_file(path, timeout=20)
    assert str(info.value) == f"{path}: {message}"


def test_a_file_that_loops_forever_is_stopped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "spin.py", "import subprocess, sys\n"
                 "subprocess.Popen([sys.executable, '-c', 'while True: pass'])\nwhile True:\n    pass\n")
    t0 = time.monotonic()
    assert main(["import", str(path), "--timeout", "3"]) == 2
    assert time.monotonic() - t0 < 15
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: {path}: did not finish loading within 3 s (does it loop forever, wait for input or call a server "
        "at import time?); stopped it. Build the graph without running it, or raise --timeout if it is only slow")


def test_missing_path_map_and_parallel_start_are_explained() -> None:
    base = {"nodes": [{"name": "a", "doc": "", "destinations": []}, {"name": "b", "doc": "", "destinations": []}]}
    with pytest.raises(FlowFileError) as info:
        flow_from_graph({**base, "edges": [["__start__", "a"]],
                         "branches": [{"source": "a", "name": "route", "ends": None}]}, "g")
    assert "the conditional edge 'route' from 'a' has no path map" in str(info.value)
    with pytest.raises(FlowFileError) as info:
        flow_from_graph({**base, "edges": [["__start__", "a"], ["__start__", "b"]], "branches": []}, "g")
    assert "START has 2 edges (a, b), which LangGraph runs in parallel" in str(info.value)


def test_a_conditional_start_opens_with_the_customer() -> None:
    spec = {"nodes": [{"name": "billing", "doc": "", "destinations": []},
                      {"name": "tech", "doc": "", "destinations": []}],
            "edges": [["billing", "__end__"], ["tech", "__end__"]],
            "branches": [{"source": "__start__", "name": "route",
                          "ends": [["a billing question", "billing"], ["a technical problem", "tech"]]}]}
    f = flow_from_graph(spec, "desk").flow
    assert f.start == "start_reply" and f.node("start_reply").role == "user"
    assert [(e.target, e.when) for e in f.out_edges("start_route")] == [
        ("billing", "a billing question"), ("tech", "a technical problem")]
    assert path_stats(f).paths == 2


def test_a_file_name_that_is_not_a_safe_name_needs_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "my graph.py", SUPPORT)
    assert main(["import", str(path)]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: {path}: name: 'my graph' cannot be used as a name: use letters, digits, '_', '-' and '.', "
        "starting with a letter or digit, at most 64 characters; rename it with --name NEW")
    assert main(["import", str(path), "--name", "my-graph", "--dry-run"]) == 0
