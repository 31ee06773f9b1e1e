"""Reading and writing flows: lossless JSON/YAML, agent2model, Mermaid, and malformed files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import FlowFileError
from engine.flow import Flow
from engine.formats import MAX_FLOW_BYTES, dump_flow, load_flow_file, parse_flow

AGENT2MODEL = """\
name: travel_mini
description: Book a trip.
start: greet
nodes:
  greet:
    role: agent
    prompt: Greet the customer and ask where they want to go.
    next: ask
  ask:
    role: user
    prompt: Name a destination in {region}.
    next: assess
  assess:
    role: decision
    next:
      - to: offer
        when: destination and dates are known
      - to: ask
        when: something is missing
  offer:
    role: agent
    prompt: Offer two options under {budget} euros.
    next: [done, gone]
  done:
    terminal: success
  gone:
    terminal: abandonment
scenario_variables:
  region: [Europe, Asia]
  budget: {min: 300, max: 3000}
"""


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    p = tmp_path / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def error_of(tmp_path: Path, name: str, data: bytes | str) -> FlowFileError:
    with pytest.raises(FlowFileError) as info:
        load_flow_file(write(tmp_path, name, data))
    return info.value


# ----------------------------------------------------------------------------------------------
# agent2model


def test_agent2model_import(tmp_path: Path) -> None:
    f = load_flow_file(write(tmp_path, "t.yaml", AGENT2MODEL))
    assert (f.name, f.start, len(f.nodes)) == ("travel_mini", "greet", 6)
    assert f.node("done").outcome == "success" and f.node("gone").outcome == "abandoned"
    assert [(e.source, e.target, e.when) for e in f.out_edges("assess")] == [
        ("assess", "offer", "destination and dates are known"), ("assess", "ask", "something is missing")]
    assert [e.target for e in f.out_edges("offer")] == ["done", "gone"]
    assert f.variables["region"].kind == "choice" and f.variables["budget"].kind == "range"
    assert f.variables["budget"].integer


def test_agent2model_round_trip_keeps_the_graph(tmp_path: Path) -> None:
    f = load_flow_file(write(tmp_path, "t.yaml", AGENT2MODEL))
    f.nodes[0].examples.append("Hello! Where to?")
    f.edges[2].weight = 2.5
    back = parse_flow(dump_flow(f, "agent2model"), source="back.yaml", fmt="agent2model")
    assert back.model_dump() == f.model_dump()


def test_agent2model_errors_name_the_field_as_written() -> None:
    cases = {
        "name: x\nnodes:\n  a: {role: bot}\n":
            "x.yaml: nodes.a.role: role must be agent, user or decision (or give terminal: ...), found 'bot'",
        "name: x\nnodes:\n  a: {role: agent, next: [{to: b, if: y}]}\n":
            "x.yaml: nodes.a.next[0].if: a branch takes to, when and weight",
        "name: x\nnodes:\n  a: {role: agent, prompt: 3}\n":
            "x.yaml: nodes.a.prompt: Input should be a valid string (found 3)",
        "name: x\nnodes:\n  a: {role: user, next: [{to: b, when: yes}]}\n":
            "x.yaml: nodes.a.next[0].when: a condition must be text, found True; put it in quotes (YAML reads "
            "yes/no/on/off as true/false)",
        "name: x\nnodes:\n  a: {terminal: success}\nscenario_variables: [1]\n":
            "x.yaml: scenario_variables: expected a map of variable name to values, found a list",
        "name: x\nsteps: []\nnodes:\n  a: {terminal: success}\n":
            "x.yaml: steps: unknown field; agent2model files have description, name, nodes, scenario_variables, "
            "start, system_prompt",
    }
    for text, message in cases.items():
        with pytest.raises(FlowFileError) as info:
            parse_flow(text, source="x.yaml")
        assert str(info.value) == message


def test_mermaid_export() -> None:
    f = parse_flow(AGENT2MODEL, source="t.yaml")
    text = dump_flow(f, "mermaid")
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    assert '    n2{"assess"}' in lines and '    n4(["done"])' in lines
    assert '    n2 -- "something is missing" --> n1' in lines
    assert "    class n4 success" in lines and "    class n5 exit" in lines


def test_unknown_dump_format() -> None:
    with pytest.raises(ValueError, match="unknown format 'xml'; use one of json, yaml, agent2model, mermaid"):
        dump_flow(Flow(name="x"), "xml")


# ----------------------------------------------------------------------------------------------
# malformed files: one FlowFileError naming the file (and field), never anything else


def test_bad_json(tmp_path: Path) -> None:
    e = error_of(tmp_path, "f.json", '{"name": "x",, }')
    assert str(e) == (f"{tmp_path / 'f.json'}: invalid JSON at line 1, column 14: "
                      "Expecting property name enclosed in double quotes")


def test_bad_yaml(tmp_path: Path) -> None:
    e = error_of(tmp_path, "f.yaml", "name: x\nnodes: [a, b\n")
    assert str(e).endswith("f.yaml: invalid YAML at line 3, column 1: expected ',' or ']', but got '<stream end>'")


def test_wrong_type_names_the_field(tmp_path: Path) -> None:
    e = error_of(tmp_path, "f.yaml", "name: x\nnodes:\n  - id: a\n    role: agent\n    examples: 5\n")
    assert e.field == "nodes[0].examples"
    assert str(e).endswith("f.yaml: nodes[0].examples: Input should be a valid list (found 5)")


def test_yaml_boolean_where_text_belongs(tmp_path: Path) -> None:
    e = error_of(tmp_path, "f.yaml", "name: x\nedges:\n  - {source: a, target: b, when: no}\n")
    assert str(e).endswith("f.yaml: edges[0].when: expected text, found false; put the value in quotes "
                           "(YAML reads yes/no/on/off as true/false)")


def test_unknown_field(tmp_path: Path) -> None:
    e = error_of(tmp_path, "f.yaml", "name: x\nnodes:\n  - {id: a, role: agent, colour: red}\n")
    assert str(e).endswith("f.yaml: nodes[0].colour: unknown field; remove it or check its spelling")


def test_several_problems_are_counted(tmp_path: Path) -> None:
    e = error_of(tmp_path, "f.json", json.dumps({"nodes": [{"id": 1, "role": "bot"}]}))
    assert "(and 2 more problem(s))" in str(e)


def test_alias_bomb(tmp_path: Path) -> None:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    e = error_of(tmp_path, "bomb.yaml", "\n".join(lines) + "\nname: x\n")
    assert str(e).endswith("bomb.yaml: invalid YAML at line 2, column 10: YAML aliases (*name) are not allowed in "
                           "flow files; write the value out")


def test_oversized_file(tmp_path: Path) -> None:
    e = error_of(tmp_path, "big.yaml", "name: x\ndescription: " + "a" * MAX_FLOW_BYTES + "\n")
    assert str(e) == (f"{tmp_path / 'big.yaml'}: file is {MAX_FLOW_BYTES + 22:,} bytes, over the "
                      f"{MAX_FLOW_BYTES:,}-byte limit for a flow; is it the right file?")


@pytest.mark.parametrize("name, data, message", [
    ("junk.yaml", bytes(range(256)) * 4, "this is a binary file, not a flow; export the flow as JSON or YAML"),
    ("latin.yaml", "name: café\n".encode("latin-1"), "not UTF-8 text (bad byte at offset 9); save the file as UTF-8"),
    ("empty.yaml", b"  \n", "the file is empty"),
    ("list.yaml", b"- a\n- b\n", "expected a mapping at the top level, found a list"),
    ("deep.json", b"[" * 100_000, "the document is nested too deeply to be a flow"),
    ("deep.yaml", b"a: " + b"[" * 100_000, "the document is nested too deeply to be a flow"),
    ("tag.yaml", b"name: !!python/object/apply:os.system [ls]\n",
     "invalid YAML at line 1, column 7: could not determine a constructor for the tag "
     "'tag:yaml.org,2002:python/object/apply:os.system'"),
])
def test_junk(tmp_path: Path, name: str, data: bytes, message: str) -> None:
    e = error_of(tmp_path, name, data)
    assert str(e) == f"{tmp_path / name}: {message}"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FlowFileError, match="cannot read the file \\(No such file or directory\\); check the path"):
        load_flow_file(tmp_path / "nope.yaml")


# ----------------------------------------------------------------------------------------------
# property: JSON and YAML round trips are identical

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=30)
ident = st.text("abcdefgh_-.12 ", min_size=1, max_size=8)
scalar = st.one_of(text, st.integers(-10**6, 10**6), st.floats(allow_nan=False, allow_infinity=False), st.booleans())


@st.composite
def flows(draw: st.DrawFn) -> Flow:
    ids = draw(st.lists(ident, max_size=6, unique=True))
    nodes = [{
        "id": i, "label": draw(text), "role": draw(st.sampled_from(["agent", "user", "decision", "terminal"])),
        "outcome": draw(st.one_of(st.none(), text)), "prompt": draw(text),
        "examples": draw(st.lists(text, max_size=2)),
        "position": draw(st.one_of(st.none(), st.fixed_dictionaries(
            {"x": st.floats(-1e6, 1e6), "y": st.floats(-1e6, 1e6)}))),
    } for i in ids]
    edges = [{"source": draw(ident), "target": draw(ident), "when": draw(st.one_of(st.none(), text)),
              "weight": draw(st.one_of(st.none(), st.floats(0, 1e3))), "examples": draw(st.lists(text, max_size=2))}
             for _ in range(draw(st.integers(0, 6)))]
    variables = {
        "c": {"kind": "choice", "values": draw(st.lists(scalar, min_size=1, max_size=3))},
        "r": {"kind": "range", "min": -5.5, "max": draw(st.floats(0, 1e9)), "integer": draw(st.booleans())},
        "t": {"kind": "text", "pool": draw(st.lists(text, min_size=1, max_size=3)), "description": draw(text)},
    }
    return Flow.model_validate({"name": draw(text.filter(bool)), "description": draw(text), "start": draw(text),
                                "system_prompt": draw(text), "nodes": nodes, "edges": edges,
                                "variables": variables})


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flows(), st.sampled_from(["json", "yaml"]))
def test_round_trip_is_identical(flow: Flow, fmt: str) -> None:
    text_out = dump_flow(flow, fmt)
    back = parse_flow(text_out, source=f"flow.{fmt}", fmt=fmt)
    assert back.model_dump(mode="json") == flow.model_dump(mode="json")
    assert dump_flow(back, fmt) == text_out


def test_yaml_dump_is_plain_safe_yaml() -> None:
    f = parse_flow(AGENT2MODEL, source="t.yaml")
    doc = yaml.safe_load(dump_flow(f, "yaml"))
    assert doc["nodes"][0]["id"] == "greet" and doc["schema_version"] == 1


@pytest.mark.parametrize("fmt", ["yaml", "agent2model"])
def test_yaml_line_separators_survive(fmt: str) -> None:
    """Regression: NEL and U+2028/2029 are line breaks to a YAML reader and were folded into spaces."""
    f = parse_flow(AGENT2MODEL, source="t.yaml")
    f.nodes[0].prompt = "one\x85two\u2028three\u2029four"
    back = parse_flow(dump_flow(f, fmt), source=f"back.{fmt}", fmt=None if fmt == "yaml" else fmt)
    assert back.nodes[0].prompt == "one\x85two\u2028three\u2029four"
