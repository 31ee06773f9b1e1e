"""The flow CLI contract: `subterra validate|paths|import|export` and `subterra flows ...`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli import main
from engine.formats import dump_flow, load_flow_file
from engine.paths import path_stats
from engine.store import Store

ROOT = Path(__file__).resolve().parent.parent

AGENT2MODEL = """\
name: shop
start: hi
system_prompt: You are a helpful shop assistant.
nodes:
  hi: {role: agent, prompt: Say hello., examples: [Hello!], next: want}
  want:
    role: user
    prompt: "Ask for {item}."
    examples: ["I want {item}."]
    next: hub
  hub:
    role: decision
    next:
      - {to: sell, when: the item is in stock}
      - {to: sorry, when: the item is sold out}
  sell: {role: agent, prompt: Sell it., examples: [Here you go.], next: done}
  sorry:
    role: agent
    prompt: Apologise.
    examples: [Sorry.]
    next: [{to: want, when: they want another item}, {to: gone, when: they leave}]
  done: {terminal: success}
  gone: {terminal: abandonment}
scenario_variables:
  item: [bread, milk]
"""

BROKEN = {
    "name": "broken", "start": "a", "system_prompt": "Hi.",
    "nodes": [{"id": "a", "role": "agent", "prompt": "", "examples": ["x"]},
              {"id": "b", "role": "user", "prompt": "Say {what}.", "examples": ["x"]},
              {"id": "t", "role": "terminal", "outcome": "success"}],
    "edges": [{"source": "a", "target": "t"}, {"source": "b", "target": "t"}],
}


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    p = tmp_path / "shop.yaml"
    p.write_text(AGENT2MODEL)
    return p


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    p = tmp_path / "broken.json"
    p.write_text(json.dumps(BROKEN))
    return p


# ----------------------------------------------------------------------------------------------
# validate


def test_validate_clean_flow_exits_0(capsys: pytest.CaptureFixture[str], shop: Path) -> None:
    code, out, err = run(capsys, "validate", str(shop))
    assert (code, out) == (0, "")
    assert err == "flow 'shop' is valid: 0 error(s), 0 warning(s)\n"


def test_validate_prints_one_problem_per_line_and_exits_1(capsys: pytest.CaptureFixture[str], broken: Path) -> None:
    code, out, _ = run(capsys, "validate", str(broken))
    assert code == 1
    assert out.splitlines() == [
        "error unreachable b: No path from the start 'a' reaches this node; connect an edge to it or delete it.",
        "error empty-prompt a: This agent node has an empty prompt; write the instruction the generator follows "
        "at this turn.",
        "error undefined-placeholder b: The prompt of node 'b' uses {what} but no variable 'what' is defined; add "
        "it to `variables` or fix the spelling.",
    ]


def test_validate_json(capsys: pytest.CaptureFixture[str], broken: Path) -> None:
    code, out, _ = run(capsys, "validate", str(broken), "--json")
    doc = json.loads(out)
    assert code == 1 and (doc["ok"], doc["errors"], doc["warnings"]) == (False, 3, 0)
    assert doc["problems"][0] == {"severity": "error", "code": "unreachable", "node": "b", "edge": None,
                                  "message": "No path from the start 'a' reaches this node; connect an edge to it "
                                             "or delete it."}


@pytest.mark.parametrize("content, message", [
    ("name: x\nnodes: [a, b\n", "invalid YAML at line 3, column 1"),
    ("name: x\nnodes:\n  - {id: a, role: bot}\n", "nodes[0].role: role must be agent, user, decision or terminal"),
    ("\x00\x01junk", "this is a binary file, not a flow"),
])
def test_unreadable_file_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                               content: str, message: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(content)
    code, out, err = run(capsys, "validate", str(p))
    assert code == 2 and out == ""
    assert err.startswith(f"error: {p}: ") and message in err and err.count("\n") == 1


def test_missing_flow_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "validate", "no-such-flow")
    assert code == 2 and err.startswith("error: no stored flow named 'no-such-flow' and no such file")
    code, _, err = run(capsys, "paths", "missing.yaml")
    assert code == 2
    assert err == "error: missing.yaml: cannot read the file (No such file or directory); check the path\n"


# ----------------------------------------------------------------------------------------------
# paths


def test_paths_json(capsys: pytest.CaptureFixture[str], shop: Path) -> None:
    code, out, _ = run(capsys, "paths", str(shop), "--json")
    doc = json.loads(out)
    assert code == 0
    assert {k: doc[k] for k in ("nodes", "decision_hubs", "terminals", "paths", "exact", "min_len", "max_len")} == {
        "nodes": 7, "decision_hubs": 2, "terminals": 2, "paths": 2, "exact": True, "min_len": 3, "max_len": 3}
    assert doc["hub_ids"] == ["hub", "sorry"] and doc["length_histogram"] == {"3": 2}


def test_paths_max_visits_and_sample(capsys: pytest.CaptureFixture[str], shop: Path) -> None:
    code, out, _ = run(capsys, "paths", str(shop), "--max-visits", "2", "--sample", "5", "--seed", "1", "--json")
    doc = json.loads(out)
    flow = load_flow_file(shop)
    assert doc["paths"] == path_stats(flow, max_visits=2).paths == 4
    assert len(doc["samples"]) == 5 and all(p[0] == "hi" for p in doc["samples"])
    code, out, _ = run(capsys, "paths", str(shop), "--sample", "3", "--coverage", "1")
    lines = out.splitlines()
    assert lines[:4] == ["flow 'shop' (max visits 1)", "nodes 7, decision hubs 2 (hub, sorry), terminals 2",
                         lines[2], "length 3-3 turns; histogram 3:2"]
    assert lines[2].startswith("paths 2 (exact, ")
    assert {"hi > want > hub > sell > done", "hi > want > hub > sorry > gone"} <= set(lines[4:])


def test_paths_over_the_cap(capsys: pytest.CaptureFixture[str], shop: Path) -> None:
    code, out, _ = run(capsys, "paths", str(shop), "--max-visits", "3", "--cap", "2")
    assert code == 0 and "paths at least 2 (over the cap of 2; exact total 6)" in out
    code, out, _ = run(capsys, "paths", str(shop), "--max-visits", "3", "--cap", "2", "--json")
    doc = json.loads(out)
    assert (doc["paths"], doc["exact"], doc["total"]) == (2, False, 6)


def test_paths_rejects_bad_options(capsys: pytest.CaptureFixture[str], shop: Path) -> None:
    code, _, err = run(capsys, "paths", str(shop), "--max-visits", "0")
    assert code == 2 and "Invalid value for '--max-visits'" in err


# ----------------------------------------------------------------------------------------------
# import / export and the store


def test_import_to_file_and_export_round_trip(capsys: pytest.CaptureFixture[str], shop: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "shop.json"
    code, _, err = run(capsys, "import", str(shop), "--format", "agent2model", "-o", str(out_json))
    assert code == 0 and err == f"wrote flow 'shop' (7 nodes) to {out_json}\n"
    native = load_flow_file(out_json)
    assert native.model_dump() == load_flow_file(shop).model_dump()
    for fmt in ("json", "yaml", "agent2model", "mermaid"):
        code, out, _ = run(capsys, "export", str(out_json), "--format", fmt)
        assert code == 0 and out == dump_flow(native, fmt)
    back = tmp_path / "back.yaml"
    code, _, _ = run(capsys, "export", str(out_json), "--format", "agent2model", "-o", str(back))
    assert code == 0 and load_flow_file(back).model_dump() == native.model_dump()


def test_import_into_the_store_then_use_by_name(capsys: pytest.CaptureFixture[str], shop: Path) -> None:
    code, _, err = run(capsys, "import", str(shop))
    assert code == 0 and err == "stored flow 'shop' as version 1\n"
    code, out, _ = run(capsys, "paths", "shop", "--json")
    assert code == 0 and json.loads(out)["paths"] == 2
    code, out, _ = run(capsys, "validate", "shop@1")
    assert code == 0


def test_import_output_needs_a_known_extension(capsys: pytest.CaptureFixture[str], shop: Path, tmp_path: Path) -> None:
    code, _, err = run(capsys, "import", str(shop), "-o", str(tmp_path / "out.txt"))
    assert code == 2
    assert err == (f"error: {tmp_path / 'out.txt'}: cannot tell the format from the extension; name the output "
                   ".json or .yaml\n")


def test_flows_history_diff_restore(capsys: pytest.CaptureFixture[str], shop: Path) -> None:
    st = Store()
    flow = load_flow_file(shop)
    st.save_flow(flow, message="first")
    doc = flow.model_dump()
    doc["nodes"][0]["prompt"] = "Say hello warmly."
    st.save_flow(type(flow).model_validate(doc), message="warmer")
    code, out, _ = run(capsys, "flows", "list")
    assert code == 0 and any(line.startswith("shop\tv2\t7 nodes") for line in out.splitlines())
    code, out, _ = run(capsys, "flows", "history", "shop")
    assert [line.split("\t")[::2] for line in out.splitlines()] == [["v2", "warmer"], ["v1", "first"]]
    code, out, _ = run(capsys, "flows", "diff", "shop@1", "shop@2")
    assert out == "~ node hi: prompt 'Say hello.' -> 'Say hello warmly.'\n"
    code, out, _ = run(capsys, "flows", "diff", "shop@1", "shop@2", "--json")
    assert json.loads(out)["nodes_changed"][0]["new"] == "Say hello warmly."
    code, _, err = run(capsys, "flows", "restore", "shop", "1")
    assert code == 0 and err == "flow 'shop' restored from v1 as v3\n"
    code, out, _ = run(capsys, "flows", "diff", "shop@1", "shop")
    assert out == "no changes\n"


def test_real_console_script_no_traceback(tmp_path: Path, subterra_home: Path) -> None:
    """The installed `subterra` entry point: exit codes and one-line errors, in a fresh process."""
    exe = Path(sys.executable).parent / "subterra"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "engine"]
    env = os.environ | {"SUBTERRA_HOME": str(subterra_home)}
    junk = tmp_path / "junk.json"
    junk.write_bytes(b'{"name": "x", "nodes": [{"id": 1}]')
    r = subprocess.run([*cmd, "validate", str(junk)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: {junk}: invalid JSON")
    good = tmp_path / "shop.yaml"
    good.write_text(AGENT2MODEL)
    r = subprocess.run([*cmd, "paths", str(good), "--json"], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0 and json.loads(r.stdout)["paths"] == 2


@pytest.mark.parametrize("name", ["travel", "zoom", "insurance"])
def test_sample_flows_through_the_cli(capsys: pytest.CaptureFixture[str], name: str) -> None:
    path = ROOT / "sample_flows" / f"{name}.yaml"
    if not path.exists():
        pytest.skip(f"sample_flows/{name}.yaml not written yet")
    code, out, _ = run(capsys, "validate", name)
    assert code == 0, out
    code, out, _ = run(capsys, "paths", name, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["exact"] and doc["paths"] > 0
