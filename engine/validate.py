"""Checking a flow: every problem at once, each with a stable code and a sentence saying what to change.

`validate(flow)` never raises on a `Flow` object, however broken its graph is; it returns problems
ordered errors first, then warnings, each group in the order the checks run (flow, nodes, edges).

Errors (the flow cannot be compiled as it is):
    no-nodes, missing-start, unknown-start, blank-id, duplicate-node, duplicate-edge, dangling-edge,
    no-terminal, unreachable, trap, dead-end, terminal-has-exits, hub-too-few-branches,
    hub-branch-no-condition, undefined-placeholder, empty-prompt, placeholder-prompt
Warnings (it compiles, but probably not as meant):
    branch-no-condition, parallel-edges, missing-outcome, no-examples, unused-variable, no-system-prompt
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Literal

import networkx as nx
from pydantic import BaseModel, ConfigDict, Field

from engine.flow import Edge, Flow, Node, placeholders

Severity = Literal["error", "warning"]

PLACEHOLDER_PREFIX = "TODO:"
"""How a prompt an importer could not know starts (LangGraph and Mermaid hold none); it is an error until
someone writes the real instruction."""
_PLACEHOLDER_PROMPT = re.compile(r"\s*TODO\b", re.I)


class Problem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    severity: Severity = Field(description="error: the flow cannot be used as it is; warning: it can, but check it.")
    code: str = Field(description="Stable machine-readable code, e.g. `unreachable`.")
    node: str | None = Field(None, description="Id of the node the problem is about, if any.")
    edge: str | None = Field(None, description="Id of the edge the problem is about, if any.")
    message: str = Field(description="A sentence saying what is wrong and what to change.")

    def __str__(self) -> str:
        return f"{self.severity} {self.code} {self.node or self.edge or '-'}: {self.message}"


def validate(flow: Flow) -> list[Problem]:
    """Every problem in `flow`, errors first. Never raises."""
    problems: list[Problem] = []
    for check in (_structure, _graph, _branches, _texts):
        try:
            problems.extend(check(flow))
        except Exception as e:  # a bug in one check must not hide the others' findings
            problems.append(_err("internal", f"the '{check.__name__.strip('_')}' check failed ({e!r}); "
                                 "please report this flow", None))
    return sorted(problems, key=lambda p: p.severity != "error")


def has_errors(problems: list[Problem]) -> bool:
    return any(p.severity == "error" for p in problems)


# ----------------------------------------------------------------------------------------------
# checks


def _structure(flow: Flow) -> Iterator[Problem]:
    """Ids and references: the things every other check relies on."""
    if not flow.nodes:
        yield _err("no-nodes", "The flow has no nodes; add a start node and at least one terminal.")
        return
    ids = {n.id for n in flow.nodes}
    if not flow.start.strip():
        yield _err("missing-start", "The flow has no start node; set `start` to the id of the first node.")
    elif flow.start not in ids:
        yield _err("unknown-start", f"The start node '{flow.start}' does not exist; set `start` to one of the "
                   f"node ids ({_few(n.id for n in flow.nodes)}).")
    seen: set[str] = set()
    for n in flow.nodes:
        if not n.id.strip():
            yield _err("blank-id", f"A node (role {n.role}) has an empty id; give it a unique id.", n.id or None)
        elif n.id in seen:
            yield _err("duplicate-node", f"Two nodes have the id '{n.id}'; rename one of them.", n.id)
        seen.add(n.id)
    seen = set()
    for e in flow.edges:
        if e.id in seen:
            yield _err("duplicate-edge", f"Two edges have the id '{e.id}'; rename one of them.", edge=e.id)
        seen.add(e.id)
        for end, name in (("source", e.source), ("target", e.target)):
            if name not in ids:
                yield _err("dangling-edge", f"The edge's {end} '{name}' is not a node; point it at an existing "
                           "node or delete the edge.", edge=e.id)
    if not flow.terminals:
        yield _err("no-terminal", "The flow has no terminal node, so no conversation can end; add a terminal "
                   "(success, abandoned or escalated) and connect the last turns to it.")


def _graph(flow: Flow) -> Iterator[Problem]:
    """Reachability: every node reachable from the start, and a terminal reachable from every node."""
    g = _digraph(flow)
    nodes = _unique_nodes(flow)
    if flow.start in g:
        reached = nx.descendants(g, flow.start) | {flow.start}
        for n in nodes:
            if n.id not in reached:
                yield _err("unreachable", f"No path from the start '{flow.start}' reaches this node; connect an "
                           "edge to it or delete it.", n.id)
    terminals = [n.id for n in nodes if n.role == "terminal"]
    ending: set[str] = set(terminals)
    for t in terminals:
        ending |= nx.ancestors(g, t)
    exits = _exits(flow)
    for n in nodes:
        outs = exits.get(n.id, [])
        if n.role == "terminal":
            if outs:
                yield _err("terminal-has-exits", f"A terminal ends the conversation but has {len(outs)} outgoing "
                           f"edge(s) (to {_few(e.target for e in outs)}); delete them or change the role.", n.id)
        elif not outs:
            yield _err("dead-end", f"This {n.role} node has no outgoing edge, so a conversation reaching it "
                       "never ends; connect it to the next node or to a terminal.", n.id)
        elif terminals and n.id not in ending:
            yield _err("trap", "No terminal can be reached from this node (a loop with no way out); add an edge "
                       "from the loop to a later node or a terminal.", n.id)


def _branches(flow: Flow) -> Iterator[Problem]:
    """Decision hubs need at least two conditional branches; other branches should say when."""
    exits = _exits(flow)
    for n in _unique_nodes(flow):
        outs = exits.get(n.id, [])
        if n.role == "decision":
            if len(outs) < 2:
                yield _err("hub-too-few-branches", f"A decision hub needs at least two outgoing edges and this "
                           f"one has {len(outs)}; add the missing branch or make it an agent/user node.", n.id)
            for e in outs:
                if not (e.when or "").strip():
                    yield _err("hub-branch-no-condition", f"The branch from decision hub '{n.id}' to '{e.target}' "
                               "has no condition; set `when` to the situation in which it is taken.", edge=e.id)
        elif n.role != "terminal" and len(outs) >= 2:
            for e in outs:
                if not (e.when or "").strip():
                    yield _warn("branch-no-condition", f"'{n.id}' branches, but the edge to '{e.target}' has no "
                                "condition, so the generator cannot tell when to take it; set `when`.", edge=e.id)
        targets: dict[str, int] = {}
        for e in outs:
            targets[e.target] = targets.get(e.target, 0) + 1
        for target, count in targets.items():
            if count > 1:
                yield _warn("parallel-edges", f"{count} edges lead from this node to '{target}'; paths cannot tell "
                            "them apart, so merge them into one edge with a combined condition.", n.id)


def _texts(flow: Flow) -> Iterator[Problem]:
    """Prompts, examples and variables: what the generator and the compiled agent read."""
    defined = set(flow.variables)
    used: set[str] = set()
    for n in _unique_nodes(flow):
        for where, text in _node_texts(n):
            used.update(placeholders(text))
            yield from _undefined(text, defined, f"the {where} of node '{n.id}'", node=n.id)
        if n.speaks and not n.prompt.strip():
            yield _err("empty-prompt", f"This {n.role} node has an empty prompt; write the instruction the "
                       "generator follows at this turn.", n.id)
        elif n.speaks and _PLACEHOLDER_PROMPT.match(n.prompt):
            yield _err("placeholder-prompt", f"This {n.role} node's prompt is a placeholder "
                       f"('{n.prompt.strip()[:60]}'); replace it with the instruction the generator follows at this "
                       "turn.", n.id)
        if n.speaks and not n.examples:
            yield _warn("no-examples", f"This {n.role} node has no example utterances, so the offline generator "
                        "cannot render it; add one or two examples.", n.id)
        if n.role == "terminal" and not (n.outcome or "").strip():
            yield _warn("missing-outcome", "This terminal has no outcome; set it to success, abandoned, escalated "
                        "or a word of your own so evaluations can score it.", n.id)
    for e in flow.edges:
        for where, text in _edge_texts(e):
            used.update(placeholders(text))
            yield from _undefined(text, defined, f"the {where} of edge '{e.id}'", edge=e.id)
    used.update(placeholders(flow.system_prompt))
    yield from _undefined(flow.system_prompt, defined, "the system prompt")
    yield from _dialogue_fields(flow, defined, used)
    for name in flow.variables:
        if name not in used:
            yield _warn("unused-variable", f"The variable '{name}' is not used by any prompt or example; use it "
                        f"as {{{name}}} or delete it.")
    if not flow.system_prompt.strip():
        yield _warn("no-system-prompt", "The flow has no system prompt for the compiled agent; add one short line "
                    "such as 'You are a helpful travel booking assistant.'")


def _dialogue_fields(flow: Flow, defined: set[str], used: set[str]) -> Iterator[Problem]:
    """The optional conversation-state fields: nodes' gathers/confirms/changes, variables' ask/state."""
    for n in _unique_nodes(flow):
        for fname in ("gathers", "confirms", "changes"):
            names = getattr(n, fname)
            used.update(names)
            for name in names:
                if name not in defined:
                    yield _err("unknown-dialogue-variable", f"`{fname}` of node '{n.id}' names '{name}', which is "
                               "not a variable; add it to `variables` or fix the spelling.", n.id)
            if names and not n.speaks:
                yield _warn("dialogue-field-unused", f"`{fname}` has no effect on a {n.role} node; move it to the "
                            "agent or user turn that asks, states or restates these facts.", n.id)
        if n.changes and n.role != "user":
            yield _warn("changes-not-user", "`changes` is read on customer turns only (a change of plan is the "
                        "customer's); move it to the user node whose loop-back changes the facts.", n.id)
        if n.confirms and n.role != "agent":
            yield _warn("confirms-not-agent", "`confirms` is read on assistant turns only; move it to the agent "
                        "node that restates these facts.", n.id)
    for name, var in flow.variables.items():
        for i, text in enumerate(var.ask):
            yield from _undefined(text, defined, f"ask {i + 1} of variable '{name}'")
        for i, text in enumerate(var.state):
            yield from _undefined(text, defined, f"state {i + 1} of variable '{name}'")
            if name not in placeholders(text):
                yield _warn("state-without-value", f"State {i + 1} of variable '{name}' ({text!r}) does not "
                            f"contain {{{name}}}, so the customer would not say the value; add {{{name}}}.")


# ----------------------------------------------------------------------------------------------
# helpers


def _undefined(text: str, defined: set[str], where: str, node: str | None = None,
               edge: str | None = None) -> Iterator[Problem]:
    for name in placeholders(text):
        if name not in defined:
            yield _err("undefined-placeholder", f"{where[0].upper()}{where[1:]} uses {{{name}}} but no variable "
                       f"'{name}' is defined; add it to `variables` or fix the spelling.", node, edge)


def _node_texts(n: Node) -> Iterator[tuple[str, str]]:
    yield "prompt", n.prompt
    for i, ex in enumerate(n.examples):
        yield f"example {i + 1}", ex


def _edge_texts(e: Edge) -> Iterator[tuple[str, str]]:
    yield "condition", e.when or ""
    for i, ex in enumerate(e.examples):
        yield f"example {i + 1}", ex


def _unique_nodes(flow: Flow) -> list[Node]:
    """Nodes with their first definition only (duplicates are reported once, by `_structure`)."""
    seen: dict[str, Node] = {}
    for n in flow.nodes:
        seen.setdefault(n.id, n)
    return list(seen.values())


def _exits(flow: Flow) -> dict[str, list[Edge]]:
    out: dict[str, list[Edge]] = {}
    for e in flow.edges:
        out.setdefault(e.source, []).append(e)
    return out


def _digraph(flow: Flow) -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_nodes_from(n.id for n in flow.nodes)
    g.add_edges_from((e.source, e.target) for e in flow.edges if e.source in g and e.target in g)
    return g


def _few(names: Iterable[str], limit: int = 5) -> str:
    items = list(dict.fromkeys(names))
    shown = ", ".join(f"'{x}'" for x in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "") if items else "none"


def _err(code: str, message: str, node: str | None = None, edge: str | None = None) -> Problem:
    return Problem(severity="error", code=code, node=node, edge=edge, message=message)


def _warn(code: str, message: str, node: str | None = None, edge: str | None = None) -> Problem:
    return Problem(severity="warning", code=code, node=node, edge=edge, message=message)
