"""The validator: one test per check with its exact message, and a property test that it never raises."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.flow import Flow
from engine.validate import Problem, has_errors, validate


def base() -> dict[str, Any]:
    """A small flow with no problems at all (not even warnings)."""
    return {
        "name": "mini",
        "start": "greet",
        "system_prompt": "You are a helpful {domain} assistant.",
        "variables": {"domain": {"kind": "choice", "values": ["travel"]}},
        "nodes": [
            {"id": "greet", "role": "agent", "prompt": "Greet the customer.", "examples": ["Hi!"]},
            {"id": "ask", "role": "user", "prompt": "Say what you want.", "examples": ["A trip."]},
            {"id": "hub", "role": "decision"},
            {"id": "book", "role": "agent", "prompt": "Book it.", "examples": ["Booked."]},
            {"id": "done", "role": "terminal", "outcome": "success"},
            {"id": "quit", "role": "terminal", "outcome": "abandoned"},
        ],
        "edges": [
            {"source": "greet", "target": "ask"},
            {"source": "ask", "target": "hub"},
            {"source": "hub", "target": "book", "when": "the customer wants to book"},
            {"source": "hub", "target": "quit", "when": "the customer gives up"},
            {"source": "book", "target": "done"},
        ],
    }


def problems_of(doc: dict[str, Any]) -> list[Problem]:
    return validate(Flow.model_validate(doc))


def only(doc: dict[str, Any], code: str) -> list[Problem]:
    return [p for p in problems_of(doc) if p.code == code]


def node(doc: dict[str, Any], nid: str) -> dict[str, Any]:
    return next(n for n in doc["nodes"] if n["id"] == nid)


def test_base_flow_has_no_problems() -> None:
    assert problems_of(base()) == []
    assert not has_errors([])


def test_str_format() -> None:
    p = Problem(severity="error", code="trap", node="x", edge=None, message="Fix it.")
    assert str(p) == "error trap x: Fix it."
    assert str(Problem(severity="warning", code="c", node=None, edge="a->b", message="m")) == "warning c a->b: m"
    assert str(Problem(severity="warning", code="c", node=None, edge=None, message="m")) == "warning c -: m"


def test_no_nodes() -> None:
    ps = validate(Flow(name="empty"))
    assert [str(p) for p in ps if p.severity == "error"] == [
        "error no-nodes -: The flow has no nodes; add a start node and at least one terminal."
    ]


def test_missing_start() -> None:
    d = base()
    d["start"] = ""
    [p] = only(d, "missing-start")
    assert p.message == "The flow has no start node; set `start` to the id of the first node."
    assert p.severity == "error"


def test_unknown_start() -> None:
    d = base()
    d["start"] = "hello"
    [p] = only(d, "unknown-start")
    assert p.message == ("The start node 'hello' does not exist; set `start` to one of the node ids ('greet', "
                         "'ask', 'hub', 'book', 'done' and 1 more).")
    # nothing is reachable from a missing start, but that is one problem, not six
    assert only(d, "unreachable") == []


def test_duplicate_node() -> None:
    d = base()
    d["nodes"].append({"id": "book", "role": "agent", "prompt": "Again.", "examples": ["x"]})
    [p] = only(d, "duplicate-node")
    assert str(p) == "error duplicate-node book: Two nodes have the id 'book'; rename one of them."


def test_blank_id() -> None:
    d = base()
    d["nodes"].append({"id": " ", "role": "agent", "prompt": "x", "examples": ["x"]})
    [p] = only(d, "blank-id")
    assert p.message == "A node (role agent) has an empty id; give it a unique id."


def test_duplicate_edge() -> None:
    d = base()
    d["edges"][0]["id"] = "e1"
    d["edges"].append({"id": "e1", "source": "book", "target": "quit"})
    [p] = only(d, "duplicate-edge")
    assert str(p) == "error duplicate-edge e1: Two edges have the id 'e1'; rename one of them."


def test_dangling_edge() -> None:
    d = base()
    d["edges"].append({"source": "book", "target": "nowhere"})
    [p] = only(d, "dangling-edge")
    assert str(p) == ("error dangling-edge book->nowhere: The edge's target 'nowhere' is not a node; point it at "
                      "an existing node or delete the edge.")


def test_no_terminal() -> None:
    d = base()
    d["nodes"] = [n for n in d["nodes"] if n["role"] != "terminal"]
    d["edges"] = [e for e in d["edges"] if e["target"] not in ("done", "quit")]
    [p] = only(d, "no-terminal")
    assert p.message.startswith("The flow has no terminal node, so no conversation can end;")
    assert only(d, "trap") == []  # the flow-level problem stands for all of them


def test_unreachable() -> None:
    d = base()
    d["nodes"].append({"id": "orphan", "role": "agent", "prompt": "x", "examples": ["x"]})
    d["edges"].append({"source": "orphan", "target": "done"})
    [p] = only(d, "unreachable")
    assert str(p) == ("error unreachable orphan: No path from the start 'greet' reaches this node; connect an "
                      "edge to it or delete it.")


def test_trap_loop() -> None:
    d = base()
    d["nodes"] += [{"id": "l1", "role": "agent", "prompt": "x", "examples": ["x"]},
                   {"id": "l2", "role": "user", "prompt": "y", "examples": ["y"]}]
    d["edges"] += [{"source": "hub", "target": "l1", "when": "loop"}, {"source": "l1", "target": "l2"},
                   {"source": "l2", "target": "l1"}]
    traps = only(d, "trap")
    assert [p.node for p in traps] == ["l1", "l2"]
    assert traps[0].message == ("No terminal can be reached from this node (a loop with no way out); add an edge "
                                "from the loop to a later node or a terminal.")


def test_terminal_has_exits() -> None:
    d = base()
    d["edges"].append({"source": "done", "target": "greet"})
    [p] = only(d, "terminal-has-exits")
    assert str(p) == ("error terminal-has-exits done: A terminal ends the conversation but has 1 outgoing edge(s) "
                      "(to 'greet'); delete them or change the role.")


def test_dead_end() -> None:
    d = base()
    d["edges"] = [e for e in d["edges"] if e["source"] != "book"]
    [p] = only(d, "dead-end")
    assert str(p) == ("error dead-end book: This agent node has no outgoing edge, so a conversation reaching it "
                      "never ends; connect it to the next node or to a terminal.")


def test_hub_too_few_branches() -> None:
    d = base()
    d["edges"] = [e for e in d["edges"] if e["target"] != "quit"]
    [p] = only(d, "hub-too-few-branches")
    assert str(p) == ("error hub-too-few-branches hub: A decision hub needs at least two outgoing edges and this "
                      "one has 1; add the missing branch or make it an agent/user node.")


def test_hub_branch_no_condition() -> None:
    d = base()
    d["edges"][3]["when"] = "  "
    [p] = only(d, "hub-branch-no-condition")
    assert str(p) == ("error hub-branch-no-condition hub->quit: The branch from decision hub 'hub' to 'quit' has "
                      "no condition; set `when` to the situation in which it is taken.")


def test_branch_no_condition_is_a_warning_on_turn_nodes() -> None:
    d = base()
    d["edges"].append({"source": "book", "target": "quit"})
    ps = only(d, "branch-no-condition")
    assert [(p.severity, p.edge) for p in ps] == [("warning", "book->done"), ("warning", "book->quit")]
    assert ps[0].message == ("'book' branches, but the edge to 'done' has no condition, so the generator cannot "
                             "tell when to take it; set `when`.")


def test_parallel_edges() -> None:
    d = base()
    d["edges"].append({"source": "hub", "target": "book", "when": "the customer insists"})
    [p] = only(d, "parallel-edges")
    assert p.severity == "warning" and p.node == "hub"
    assert p.message == ("2 edges lead from this node to 'book'; paths cannot tell them apart, so merge them into "
                         "one edge with a combined condition.")


def test_undefined_placeholder_everywhere() -> None:
    d = base()
    node(d, "greet")["prompt"] = "Greet {name} warmly."
    node(d, "book")["examples"] = ["Booked for {budgett}."]
    d["edges"][2]["when"] = "the customer has {money}"
    d["system_prompt"] = "You help {company} customers."
    ps = only(d, "undefined-placeholder")
    assert [str(p) for p in ps] == [
        "error undefined-placeholder greet: The prompt of node 'greet' uses {name} but no variable 'name' is "
        "defined; add it to `variables` or fix the spelling.",
        "error undefined-placeholder book: The example 1 of node 'book' uses {budgett} but no variable 'budgett' "
        "is defined; add it to `variables` or fix the spelling.",
        "error undefined-placeholder hub->book: The condition of edge 'hub->book' uses {money} but no variable "
        "'money' is defined; add it to `variables` or fix the spelling.",
        "error undefined-placeholder -: The system prompt uses {company} but no variable 'company' is defined; "
        "add it to `variables` or fix the spelling.",
    ]


def test_escaped_braces_are_not_placeholders() -> None:
    d = base()
    node(d, "greet")["prompt"] = "Reply with JSON like {{\"ok\": true}} and {{name}}."
    assert only(d, "undefined-placeholder") == []


def test_empty_prompt() -> None:
    d = base()
    node(d, "ask")["prompt"] = "   "
    [p] = only(d, "empty-prompt")
    assert str(p) == ("error empty-prompt ask: This user node has an empty prompt; write the instruction the "
                      "generator follows at this turn.")


def test_warnings_examples_outcome_variables_system_prompt() -> None:
    d = base()
    node(d, "book")["examples"] = []
    node(d, "quit")["outcome"] = None
    d["variables"]["unused"] = {"kind": "range", "min": 1, "max": 3}
    d["system_prompt"] = ""
    ps = problems_of(d)
    assert not has_errors(ps)
    assert [str(p) for p in ps] == [
        "warning no-examples book: This agent node has no example utterances, so the offline generator cannot "
        "render it; add one or two examples.",
        "warning missing-outcome quit: This terminal has no outcome; set it to success, abandoned, escalated or a "
        "word of your own so evaluations can score it.",
        "warning unused-variable -: The variable 'domain' is not used by any prompt or example; use it as {domain} "
        "or delete it.",
        "warning unused-variable -: The variable 'unused' is not used by any prompt or example; use it as {unused} "
        "or delete it.",
        "warning no-system-prompt -: The flow has no system prompt for the compiled agent; add one short line such "
        "as 'You are a helpful travel booking assistant.'",
    ]


def test_errors_come_first_and_all_are_reported() -> None:
    d = base()
    d["start"] = "nope"
    node(d, "ask")["prompt"] = ""
    node(d, "book")["examples"] = []
    d["edges"].append({"source": "book", "target": "ghost"})
    ps = problems_of(d)
    codes = [p.code for p in ps]
    assert {"unknown-start", "empty-prompt", "dangling-edge", "no-examples"} <= set(codes)
    severities = [p.severity for p in ps]
    assert severities == sorted(severities, key=lambda s: s != "error")


# ----------------------------------------------------------------------------------------------
# property: any Flow object, however broken, gets a list of problems and no exception

ROLES = ["agent", "user", "decision", "terminal"]


@st.composite
def random_flows(draw: st.DrawFn) -> Flow:
    ids = draw(st.lists(st.sampled_from(["a", "b", "c", "d", "e", "f", "", " "]), max_size=8))
    nodes = [{"id": i, "role": draw(st.sampled_from(ROLES)),
              "prompt": draw(st.sampled_from(["", "Say {x}.", "Ask {y}", "ok", "{{z}}", "{"])),
              "examples": draw(st.lists(st.sampled_from(["hi {x}", "yo"]), max_size=2)),
              "outcome": draw(st.sampled_from([None, "success", ""]))} for i in ids]
    names = ids + ["ghost"]
    edges = [{"source": draw(st.sampled_from(names)), "target": draw(st.sampled_from(names)),
              "when": draw(st.sampled_from([None, "", "if {x}", "yes"])),
              "id": draw(st.sampled_from(["", "", "e1"]))}
             for _ in range(draw(st.integers(0, 12)))]
    variables = {"x": {"kind": "choice", "values": [1]}} if draw(st.booleans()) else {}
    return Flow.model_validate({"name": "r", "start": draw(st.sampled_from(names + [""])), "nodes": nodes,
                                "edges": edges, "variables": variables,
                                "system_prompt": draw(st.sampled_from(["", "Hi {x}"]))})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_flows())
def test_validator_never_raises(flow: Flow) -> None:
    ps = validate(flow)
    assert all(isinstance(p, Problem) for p in ps)
    assert "internal" not in {p.code for p in ps}
    for p in ps:
        assert str(p).startswith(f"{p.severity} {p.code} ")
        assert p.message.endswith((".", "'")), p.message


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_flows())
def test_a_flow_without_errors_has_a_path(flow: Flow) -> None:
    """The graph checks and the path engine agree: no errors means at least one conversation exists."""
    from engine.paths import path_stats

    if not has_errors(validate(flow)):
        assert path_stats(flow).paths >= 1
