"""LangGraph import: a `StateGraph` in a .py file becomes a flow.

Reading the graph means running the file, so it runs in a separate Python process (`langgraph_child`)
with a time limit, no stdin and its output kept apart; the caller warns the person first. Mapping:

- every LangGraph node is an agent turn (its function's docstring is the prompt, else a placeholder);
- START's edge gives the start node; a conditional edge from START starts with the customer's turn;
- LangGraph holds only the agent's side, so a customer turn is inserted after an agent node that leads to
  another agent node and before every branch (the branch then follows what the customer said);
- a conditional edge becomes a decision hub whose branches are the path map's entries (the key is the
  condition); a node's `Command` destinations are read the same way;
- END becomes terminals: `end` (success) and, where the node or path-map key says so by the outcome rule,
  `end_escalated` / `end_abandoned`.
Placeholder prompts start with `TODO:` and are validation errors until someone writes them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine.errors import FlowFileError
from engine.flow import Flow
from engine.interop import ImportResult
from engine.interop.outcomes import guess_outcome
from engine.validate import PLACEHOLDER_PREFIX

START, END = "__start__", "__end__"
DEFAULT_TIMEOUT = 30.0
MAX_SOURCE_BYTES = 2 * 1024 * 1024
_CHILD = Path(__file__).with_name("langgraph_child.py")


def import_langgraph(path: str | Path, name: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> ImportResult:
    """Run `path` in a child process, read its StateGraph and map it to a flow."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise FlowFileError(str(p), f"cannot read the file ({e.strerror}); check the path") from None
    if size > MAX_SOURCE_BYTES:
        raise FlowFileError(str(p), f"file is {size:,} bytes, over the {MAX_SOURCE_BYTES:,}-byte limit; is it the "
                            "right file?")
    t0 = time.monotonic()
    spec = _run_child(p, timeout)
    ms = (time.monotonic() - t0) * 1000
    result = flow_from_graph(spec, name or p.stem, source=str(p))
    result.notes.insert(0, f"ran {p.name} in a separate Python process ({ms:,.0f} ms) and read the StateGraph "
                           f"from {spec.get('found_in', 'the file')}")
    return result


def _run_child(p: Path, timeout: float) -> dict[str, Any]:
    source = _CHILD.read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="subterra-lg-") as tmp:
        out = Path(tmp) / "graph.json"
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
        try:
            proc = subprocess.Popen(  # noqa: S603 - our own child script, the file path as an argument
                [sys.executable, "-c", source, str(p.resolve()), str(out)], cwd=str(p.resolve().parent),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                env=env, start_new_session=True)
        except OSError as e:
            raise FlowFileError(str(p), f"cannot start Python to read the graph ({e.strerror})") from None
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise FlowFileError(str(p), f"did not finish loading within {timeout:g} s (does it loop forever, wait "
                                "for input or call a server at import time?); stopped it. Build the graph "
                                "without running it, or raise --timeout if it is only slow") from None
        finally:
            _kill_group(proc)  # anything the file started in the background goes too
        if out.is_file():
            try:
                result = json.loads(out.read_text(encoding="utf-8"))
            except ValueError:
                result = {}
            if "error" in result:
                raise FlowFileError(str(p), str(result["error"]))
            if isinstance(result.get("graph"), dict):
                return result["graph"]
        tail = (err or b"").decode("utf-8", "replace").strip().splitlines()
        why = f": {tail[-1][:200]}" if tail else ""
        raise FlowFileError(str(p), f"the process reading the graph ended with exit code {proc.returncode}{why}")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


# ----------------------------------------------------------------------------------------------
# the mapping (pure: tested on structures as well as on real graphs)


def flow_from_graph(spec: dict[str, Any], name: str, source: str = "<graph>") -> ImportResult:
    """A flow from the child's structure: {"nodes": [{name, doc, destinations}], "edges": [[a, b]],
    "branches": [{source, name, ends: [[key, target]] | None}]}."""
    lg_nodes = [n for n in spec.get("nodes", []) if n["name"] not in (START, END)]
    if not lg_nodes:
        raise FlowFileError(source, "the StateGraph has no nodes; add nodes with add_node()")
    names = [n["name"] for n in lg_nodes]
    taken = set(names)
    plain: dict[str, list[str]] = {}
    for a, b in spec.get("edges", []):
        plain.setdefault(a, []).append(b)
    branches: dict[str, list[tuple[str, str]]] = {}
    for br in spec.get("branches", []):
        if br.get("ends") is None:
            raise FlowFileError(source, f"the conditional edge '{br['name']}' from '{br['source']}' has no path map, "
                                "so its targets cannot be read without running it; pass one, e.g. "
                                f"add_conditional_edges('{br['source']}', route, {{'yes': 'next_node'}}), or "
                                "annotate the router's return type with Literal[...]")
        branches.setdefault(br["source"], []).extend((str(k), str(t)) for k, t in br["ends"])
    for n in lg_nodes:
        if n.get("destinations"):
            branches.setdefault(n["name"], []).extend((d, d) for d in n["destinations"])
    for src, targets in list(plain.items()) + [(s, [t for _, t in b]) for s, b in branches.items()]:
        for t in targets:
            if t not in taken and t != END:
                raise FlowFileError(source, f"an edge from '{src}' goes to '{t}', which is not a node of the graph")

    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    notes: list[str] = []
    inserted: list[str] = []
    terminals: dict[str, str] = {}  # outcome -> terminal id
    docs = 0

    def fresh(base: str) -> str:
        nid, k = base, 2
        while nid in taken:
            nid, k = f"{base}_{k}", k + 1
        taken.add(nid)
        return nid

    def target(t: str, why: str) -> str:
        if t != END:
            return t
        outcome = guess_outcome(why)
        if outcome not in terminals:
            terminals[outcome] = fresh("end" if outcome == "success" else f"end_{outcome}")
        return terminals[outcome]

    def customer_turn(after: str | None, label: str) -> str:
        uid = fresh(f"{after or 'start'}_reply")
        prompt = f"what the customer says after '{after}'" if after else "how the customer opens the conversation"
        nodes.append({"id": uid, "role": "user", "label": label, "prompt": f"{PLACEHOLDER_PREFIX} {prompt}"})
        if after:
            edges.append({"source": after, "target": uid})
        inserted.append(uid)
        return uid

    def branch(frm: str, owner: str, outs: list[tuple[str, str]], extra_plain: list[str]) -> None:
        hub = fresh(f"{owner}_route")
        nodes.append({"id": hub, "role": "decision", "label": f"route after {owner}"})
        edges.append({"source": frm, "target": hub})
        for key, t in outs:
            edges.append({"source": hub, "target": target(t, f"{owner} {key} {t}"), "when": key})
        for t in extra_plain:
            edges.append({"source": hub, "target": target(t, f"{owner} {t}")})

    starts = plain.get(START, [])
    start_branches = branches.get(START, [])
    if len(starts) > 1:
        raise FlowFileError(source, f"START has {len(starts)} edges ({', '.join(starts)}), which LangGraph runs in "
                            "parallel; a conversation has one first turn, so route START to a single node")
    if not starts and not start_branches:
        raise FlowFileError(source, "the graph has no edge from START; add add_edge(START, 'first_node')")
    if start_branches:
        start = customer_turn(None, "customer opens")
        branch(start, "start", start_branches, starts)
    else:
        start = starts[0]

    fan_out: list[str] = []
    mixed: list[str] = []
    for n in lg_nodes:
        nid = n["name"]
        doc = n.get("doc") or ""
        docs += bool(doc)
        nodes.append({"id": nid, "role": "agent", "label": nid.replace("_", " "),
                      "prompt": doc or f"{PLACEHOLDER_PREFIX} what the agent does at '{nid}'"})
        outs_plain = plain.get(nid, [])
        outs_branch = branches.get(nid, [])
        if not outs_plain and not outs_branch:
            outs_plain = [END]  # LangGraph ends the run after a node with no outgoing edge
        needs_reply = bool(outs_branch) or any(t != END for t in outs_plain)
        frm = customer_turn(nid, "customer replies") if needs_reply else nid
        if outs_branch:
            if outs_plain:
                mixed.append(nid)
            branch(frm, nid, outs_branch, outs_plain)
        else:
            if len(outs_plain) > 1:
                fan_out.append(nid)
            for t in outs_plain:
                edges.append({"source": frm, "target": target(t, f"{nid} {t}")})
    for outcome, tid in terminals.items():
        nodes.append({"id": tid, "role": "terminal", "outcome": outcome, "label": tid.replace("_", " ")})

    try:
        flow = Flow.model_validate({"name": name, "start": start, "nodes": nodes, "edges": edges})
    except Exception as e:
        raise FlowFileError(source, f"cannot build a flow from the graph ({str(e).splitlines()[0]})") from None
    notes.append(f"{len(lg_nodes)} LangGraph node(s) became agent turns with their names as ids; make one a "
                 "decision hub on the canvas if it only routes")
    if inserted:
        notes.append(f"inserted {len(inserted)} customer turn(s) ({_few(inserted)}): LangGraph holds only the agent's "
                     "side, so one goes after every agent node that leads to another and before every branch")
    hubs = sum(1 for x in nodes if x["role"] == "decision")
    if hubs:
        notes.append(f"{hubs} conditional edge source(s) became decision hubs; the path-map keys became the branch "
                     "conditions: rewrite them as sentences the generator can judge")
    notes.append("END became " + ", ".join(f"'{tid}' ({o}{'' if o == 'success' else ', from the node name'})"
                                           for o, tid in terminals.items())
                 + "; check each terminal's outcome")
    placeholders = len(nodes) - hubs - len(terminals) - docs
    if placeholders:
        notes.append(f"{placeholders} prompt(s) are placeholders ({PLACEHOLDER_PREFIX} ...): write them on the canvas; "
                     "the validator reports each as placeholder-prompt")
    if docs:
        notes.append(f"took {docs} prompt(s) from the node functions' docstrings")
    if fan_out:
        notes.append(f"{_few(fan_out)} fan out to several nodes at once in LangGraph; a conversation takes one of "
                     "them: give each edge a condition")
    if mixed:
        notes.append(f"{_few(mixed)} have a plain edge besides their conditional one (LangGraph runs both); it became "
                     "a branch without a condition: give it one or delete it")
    return ImportResult(flow=flow, format="langgraph", notes=notes)


def _few(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
