"""Mermaid flowcharts: export for docs, import of `flowchart TD/LR` (or `graph ...`) text.

Shapes are roles: `[text]` agent, `[/text/]` user, `{text}` decision, `([text])` terminal (the export's
vocabulary; other shapes are read by the nearest meaning and the summary says so). Edge labels are
conditions, the first node is the start, and every node without an outgoing edge is a terminal. The
export also writes one `%% subterra {...}` comment with the node ids, the start and the terminal
outcomes, so a round trip gives back the same graph; prompts, examples, variables and weights are not in
a diagram and do not survive.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import FlowFileError
from engine.flow import Flow
from engine.interop import ExportResult, ImportResult
from engine.interop.outcomes import guess_outcome
from engine.validate import PLACEHOLDER_PREFIX

MAX_NODES = 5000
_COMMENT = "%% subterra "

_HEADER = re.compile(r"^(flowchart|graph)(?:\s+(TD|TB|LR|RL|BT))?\s*;?\s*$", re.I)
_ID = re.compile(r"[A-Za-z0-9_\u00c0-\uffff]+")
# (open, close, shape name), longest first so `([` wins over `(`
_SHAPES = [
    ("(((", ")))", "double circle"), ("([", "])", "stadium"), ("[[", "]]", "subroutine"), ("[(", ")]", "cylinder"),
    ("((", "))", "circle"), ("{{", "}}", "hexagon"), ("[/", "/]", "parallelogram"), ("[\\", "\\]", "parallelogram"),
    ("[/", "\\]", "trapezoid"), ("[\\", "/]", "trapezoid"), ("[", "]", "rectangle"), ("(", ")", "rounded"),
    ("{", "}", "rhombus"), (">", "]", "flag"),
]
_ROLE_OF_SHAPE = {"rhombus": "decision", "hexagon": "decision", "parallelogram": "user", "trapezoid": "user",
                  "stadium": "terminal", "circle": "terminal", "double circle": "terminal"}
_LINK_TEXT = re.compile(r"(?P<open><?--|<?==|<?-\.)\s*(?P<text>\"[^\"]*\"|[^\s\"\-=.|>][^|]*?)\s*"
                        r"(?P<close>-{2,}[>ox]|-{3,}|={2,}[>ox]|={3,}|\.-+[>ox]|\.-)(?=\s|$|\w|\"|[\[({>])")
_LINK = re.compile(r"(?P<arrow><?(?:-{2,}[>ox]|-{3,}|={2,}[>ox]|={3,}|-\.+-[>ox]|-\.+-|~{3,}))"
                   r"(?:\s*\|(?P<text>[^|]*)\|)?")
_IGNORED = ("classdef", "style", "linkstyle", "click", "direction", "acctitle", "accdescr")
_ENTITY = re.compile(r"#(quot|amp|lt|gt|\d+);")
_CLASS_ROLE = {"agent": "agent", "user": "user", "decision": "decision"}


# ----------------------------------------------------------------------------------------------
# export


def export_mermaid(flow: Flow) -> ExportResult:
    """`flowchart TD` with the paper's colours: agent blue, user orange, success green, exits red."""
    ids = {n.id: f"n{i}" for i, n in enumerate(flow.nodes)}
    lines = ["flowchart TD"]
    meta = {"ids": {ids[n.id]: n.id for n in flow.nodes}, "start": ids.get(flow.start, flow.start),
            "outcomes": {ids[n.id]: n.outcome for n in flow.nodes if n.role == "terminal"}}
    lines.append(_COMMENT + json.dumps(meta, ensure_ascii=False, separators=(",", ":")))
    ordered = sorted(flow.nodes, key=lambda n: n.id != flow.start)  # the start first: import takes the first node
    for n in ordered:
        label = _mm(n.label or n.id)
        shape = {"decision": ("{", "}"), "terminal": ("([", "])"), "user": ("[/", "/]")}.get(n.role, ("[", "]"))
        lines.append(f"    {ids[n.id]}{shape[0]}\"{label}\"{shape[1]}")
    for e in flow.edges:
        if e.source not in ids or e.target not in ids:
            continue
        arrow = f"-- \"{_mm(e.when)}\" -->" if e.when else "-->"
        lines.append(f"    {ids[e.source]} {arrow} {ids[e.target]}")
    lines += [
        "    classDef agent fill:#dbeafe,stroke:#2563eb",
        "    classDef user fill:#ffedd5,stroke:#ea580c",
        "    classDef decision fill:#f3f4f6,stroke:#4b5563",
        "    classDef success fill:#dcfce7,stroke:#16a34a",
        "    classDef exit fill:#fee2e2,stroke:#dc2626",
    ]
    for n in flow.nodes:
        cls = n.role if n.role != "terminal" else ("success" if n.outcome == "success" else "exit")
        lines.append(f"    class {ids[n.id]} {cls}")
    lost = [what for what, has in (
        ("prompts", any(n.prompt for n in flow.nodes)), ("example utterances", any(n.examples for n in flow.nodes)
                                                         or any(e.examples for e in flow.edges)),
        ("variables", bool(flow.variables)), ("the system prompt", bool(flow.system_prompt)),
        ("edge weights", any(e.weight is not None for e in flow.edges)),
        ("canvas positions", any(n.position for n in flow.nodes))) if has]
    warnings = [f"a Mermaid diagram shows the graph only: {', '.join(lost)} are not written"] if lost else []
    return ExportResult(text="\n".join(lines) + "\n", warnings=warnings)


def _mm(text: str | None) -> str:
    """Text inside a quoted Mermaid label: entities for what would end or change it, <br> for new lines."""
    out = (text or "").replace("#", "#35;").replace('"', "#quot;").replace("<", "#lt;").replace(">", "#gt;")
    out = "".join(c if c.isprintable() or c == "\n" else f"#{ord(c)};" for c in out)
    return out.replace("\n", "<br>")


# ----------------------------------------------------------------------------------------------
# import


@dataclass
class _Node:
    id: str
    text: str | None = None
    shape: str | None = None
    classes: list[str] = field(default_factory=list)


@dataclass
class _Graph:
    nodes: dict[str, _Node] = field(default_factory=dict)
    edges: list[tuple[str, str, str | None]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    ignored: set[str] = field(default_factory=set)
    open_links: int = 0
    both_ways: int = 0
    subgraphs: int = 0


def import_mermaid(text: str, source: str = "<input>", name: str | None = None) -> ImportResult:
    """Read Mermaid flowchart text into a flow; raises FlowFileError naming the line it cannot read."""
    g = _parse(text, source)
    if not g.nodes:
        raise FlowFileError(source, "the flowchart has no nodes; add at least `A[Start] --> B([Done])`")
    return _to_flow(g, source, name)


def looks_like_mermaid(text: str) -> bool:
    """True when the first line that says something is `flowchart ...`/`graph ...` (after any front matter,
    which a YAML document's `---` alone does not make)."""
    lines = [x.strip() for x in text.lstrip("\ufeff").splitlines()]
    lines = [x for x in lines if x and not x.startswith("%%")]
    if lines and lines[0] == "---" and "---" in lines[1:]:
        lines = lines[lines.index("---", 1) + 1:]
    return bool(lines) and bool(re.match(r"^(flowchart|graph)\b", lines[0], re.I))


def _parse(text: str, source: str) -> _Graph:
    g = _Graph()
    lines = text.lstrip("\ufeff").replace("\r\n", "\n").split("\n")
    i = 0
    if lines and lines[0].strip() == "---":  # front matter: `title:` becomes the description
        end = next((k for k in range(1, len(lines)) if lines[k].strip() == "---"), None)
        if end is None:
            raise FlowFileError(source, "line 1: the front matter starting with --- is never closed; add a --- line")
        for raw in lines[1:end]:
            if raw.strip().lower().startswith("title:"):
                g.meta["title"] = raw.split(":", 1)[1].strip().strip("\"'")
        i = end + 1
    header_seen = False
    depth = 0
    for lineno in range(i + 1, len(lines) + 1):
        line = lines[lineno - 1].strip()
        if not line:
            continue
        if line.startswith("%%"):
            if line.startswith(_COMMENT.strip() + " ") and not g.meta.get("ids"):
                try:
                    meta = json.loads(line[len(_COMMENT):])
                    if isinstance(meta, dict):
                        g.meta.update(meta)
                except ValueError:
                    pass
            continue
        if not header_seen:
            m = _HEADER.match(line)
            if not m:
                raise FlowFileError(source, f"line {lineno}: expected `flowchart TD` or `flowchart LR` first, found "
                                    f"'{_short(line)}'; subterra reads Mermaid flowcharts only")
            header_seen = True
            continue
        for stmt in _split_statements(line):
            depth = _statement(g, stmt, lineno, source, depth)
        if len(g.nodes) > MAX_NODES:
            raise FlowFileError(source, f"line {lineno}: more than {MAX_NODES} nodes; is this the right file?")
    if not header_seen:
        raise FlowFileError(source, "no `flowchart TD` (or `flowchart LR`) line; this is not a Mermaid flowchart")
    if depth:
        raise FlowFileError(source, f"{depth} subgraph(s) are never closed; add an `end` line for each")
    return g


def _statement(g: _Graph, stmt: str, lineno: int, source: str, depth: int) -> int:
    word = stmt.split(None, 1)[0].lower() if stmt.split() else ""
    if word == "subgraph":
        g.subgraphs += 1
        return depth + 1
    if word == "end" and stmt.strip().lower() == "end":
        if not depth:
            raise FlowFileError(source, f"line {lineno}: `end` closes no subgraph; remove it, or name the node "
                                "differently (end is a Mermaid keyword)")
        return depth - 1
    if word == "class":
        parts = stmt.split()
        if len(parts) != 3:
            raise FlowFileError(source, f"line {lineno}: expected `class NODE[,NODE] CLASS`, found '{_short(stmt)}'")
        for nid in parts[1].split(","):
            _node(g, nid).classes.append(parts[2])
        return depth
    if word in _IGNORED or word.startswith(("acctitle", "accdescr")):
        g.ignored.add(word)
        return depth
    _chain(g, stmt, lineno, source)
    return depth


def _chain(g: _Graph, stmt: str, lineno: int, source: str) -> None:
    """`A[x] --> B & C -- label --> D`: groups of nodes joined by links."""
    pos = 0
    groups: list[list[str]] = []
    links: list[tuple[str | None, str]] = []

    def fail(why: str) -> FlowFileError:
        return FlowFileError(source, f"line {lineno}: cannot read '{_short(stmt)}' at column {pos + 1}: {why}; "
                             "subterra reads nodes (A[text], A{text}, A([text]), ...), links (-->, -- text -->, "
                             "-->|text|), class, classDef, style and subgraph lines")

    while True:
        group: list[str] = []
        while True:
            pos = _skip(stmt, pos)
            nid, pos = _node_ref(g, stmt, pos, fail)
            group.append(nid)
            pos = _skip(stmt, pos)
            if pos < len(stmt) and stmt[pos] == "&":
                pos += 1
                continue
            break
        groups.append(group)
        if pos >= len(stmt):
            break
        m = _LINK_TEXT.match(stmt, pos) or _LINK.match(stmt, pos)
        if not m:
            raise fail("expected a link such as --> or the end of the line")
        arrow = m.group("close") if "close" in m.groupdict() else m.group("arrow")
        label = m.group("text")
        links.append((_text(label.strip()) if label and label.strip() else None, m.group(0)))
        pos = m.end()
        if pos >= len(stmt.rstrip()):
            raise fail("the link points nowhere; add the target node")
        if arrow.startswith("~"):
            g.ignored.add("~~~ (invisible link)")
    for k, (label, token) in enumerate(links):
        if token.lstrip().startswith("~"):
            continue
        both = token.startswith("<")
        plain = not re.search(r"[>ox](\s*\|.*)?$", token.strip())
        if plain:
            g.open_links += 1
        for a in groups[k]:
            for b in groups[k + 1]:
                g.edges.append((a, b, label))
                if both:
                    g.edges.append((b, a, label))
                    g.both_ways += 1


def _node_ref(g: _Graph, s: str, pos: int, fail: Any) -> tuple[str, int]:
    m = _ID.match(s, pos)
    if not m:
        raise fail("expected a node id (letters, digits, _)")
    nid, pos = m.group(0), m.end()
    if nid.lower() in ("end", "subgraph", "class", "classdef", "style"):
        raise fail(f"'{nid}' is a Mermaid keyword and cannot be a node id")
    node = _node(g, nid)
    if s.startswith("@{", pos):
        raise fail("the `A@{ shape: ... }` syntax is not supported; write A[text], A{text} or A([text])")
    for open_, close, shape in _SHAPES:
        if not s.startswith(open_, pos):
            continue
        start = pos + len(open_)
        if s.startswith('"', start):
            end_q = s.find('"', start + 1)
            if end_q < 0:
                raise fail("a quoted label is never closed")
            label, after = s[start:end_q + 1], end_q + 1  # with its quotes: _text keeps inner spaces
            if not s.startswith(close, after):
                continue
            end = after
        else:
            end = s.find(close, start)
            if end < 0:
                continue
            label = s[start:end].strip()
        if node.text is not None and (node.text, node.shape) != (_text(label), shape):
            pass  # Mermaid keeps the last definition, so do we
        node.text, node.shape = _text(label), shape
        pos = end + len(close)
        break
    else:
        if pos < len(s) and s[pos] in "[({>":
            raise fail("a node shape is never closed")
    while s.startswith(":::", pos):
        m = re.compile(r":::([\w-]+)").match(s, pos)
        if not m:
            raise fail("expected a class name after :::")
        node.classes.append(m.group(1))
        pos = m.end()
    return nid, pos


def _node(g: _Graph, nid: str) -> _Node:
    if nid not in g.nodes:
        g.nodes[nid] = _Node(nid)
    return g.nodes[nid]


def _to_flow(g: _Graph, source: str, name: str | None) -> ImportResult:
    meta = g.meta
    real_ids: dict[str, str] = {}
    saved = meta.get("ids") if isinstance(meta.get("ids"), dict) else {}
    used: set[str] = set()
    for mid in g.nodes:
        rid = str(saved.get(mid, mid)) if saved else mid
        if rid in used:
            rid = mid
        real_ids[mid] = rid
        used.add(rid)
    outs: dict[str, list[tuple[str, str | None]]] = {m: [] for m in g.nodes}
    for a, b, when in g.edges:
        outs[a].append((b, when))
    start_m = str(meta.get("start")) if meta.get("start") in g.nodes else next(iter(g.nodes))
    marker = None
    first = g.nodes[start_m]
    if (not meta.get("ids") and _ROLE_OF_SHAPE.get(first.shape or "") == "terminal" and len(outs[start_m]) == 1
            and not any(b == start_m for _, b, _ in g.edges) and not first.classes):
        # a `([Start])` marker: no turn of its own, the flow starts where it points
        marker, start_m = start_m, outs[start_m][0][0]
        del g.nodes[marker], outs[marker]
        g.edges = [x for x in g.edges if x[0] != marker]
    outcomes: dict[str, Any] = meta["outcomes"] if isinstance(meta.get("outcomes"), dict) else {}
    guessed_roles: dict[str, list[str]] = {}
    guessed_outcomes: list[str] = []
    nodes: list[dict[str, Any]] = []
    for mid, n in g.nodes.items():
        classes = [c.lower() for c in n.classes]
        role = next((_CLASS_ROLE[c] for c in classes if c in _CLASS_ROLE), None)
        if role is None and any(c in ("success", "exit") for c in classes):
            role = "terminal"
        if role is None:
            shape_role = _ROLE_OF_SHAPE.get(n.shape or "rectangle", "agent")
            if not outs[mid]:
                role = "terminal"
                if shape_role != "terminal":
                    guessed_roles.setdefault("terminal (no outgoing link)", []).append(mid)
            elif shape_role == "terminal":
                role = "agent"
                guessed_roles.setdefault(f"agent ({n.shape} with outgoing links)", []).append(mid)
            else:
                role = shape_role
                if n.shape not in (None, "rectangle", "rhombus", "parallelogram"):
                    guessed_roles.setdefault(f"{role} ({n.shape})", []).append(mid)
        rid = real_ids[mid]
        label = n.text if n.text is not None else ""
        node: dict[str, Any] = {"id": rid, "role": role, "label": "" if label == rid else label}
        if role == "terminal":
            if mid in outcomes:
                node["outcome"] = outcomes[mid]
            else:
                word = guess_outcome(f"{label} {mid}")
                if "success" in classes:
                    word = "success"
                elif "exit" in classes and word == "success":
                    word = "abandoned"
                node["outcome"] = word
                guessed_outcomes.append(f"{rid} {word}")
        elif role in ("agent", "user"):
            node["prompt"] = f"{PLACEHOLDER_PREFIX} what the {'customer' if role == 'user' else 'agent'} says at " \
                             f"'{label or rid}'"
        nodes.append(node)
    if saved:  # the export declares the start first; put the nodes back in the flow's order
        rank = {mid: i for i, mid in enumerate(saved)}
        order = sorted(range(len(nodes)), key=lambda i: rank.get(list(g.nodes)[i], len(rank) + i))
        nodes = [nodes[i] for i in order]
    edges = [{"source": real_ids[a], "target": real_ids[b], "when": when} for a, b, when in g.edges]
    flow_name = name or str(meta.get("name") or "") or Path(source).stem or "imported"
    doc = {"name": flow_name, "description": meta.get("title", ""), "start": real_ids[start_m],
           "nodes": nodes, "edges": edges}
    try:
        flow = Flow.model_validate(doc)
    except Exception as e:  # ids and texts come from the file; a model error names the first bad field
        raise FlowFileError(source, f"cannot build a flow from the diagram ({str(e).splitlines()[0]})") from None
    how = "as exported" if meta.get("start") in g.nodes else "the first node"
    if marker:
        how = f"'{marker}' only marks the start, so it was left out"
    notes = [f"took '{real_ids[start_m]}' as the start ({how})"]
    if saved:
        notes.append("node ids and outcomes come from the diagram's subterra comment")
    for what, ids in guessed_roles.items():
        notes.append(f"read {_few([real_ids[i] for i in ids])} as {what}")
    if guessed_outcomes:
        notes.append(f"guessed terminal outcomes from their labels: {_few(guessed_outcomes)}")
    speakers = sum(n["role"] in ("agent", "user") for n in nodes)
    if speakers:
        notes.append(f"{speakers} agent/user node(s) have placeholder prompts (a diagram holds none): write them "
                     "on the canvas; the validator reports each as placeholder-prompt")
    if g.open_links:
        notes.append(f"read {g.open_links} link(s) without an arrowhead as pointing left to right")
    if g.both_ways:
        notes.append(f"split {g.both_ways} two-way link(s) into an edge each way")
    if g.subgraphs:
        notes.append(f"dropped the grouping of {g.subgraphs} subgraph(s); their nodes are kept")
    if g.ignored - {"classdef"}:
        notes.append(f"ignored {', '.join(sorted(g.ignored - {'classdef'}))} lines (styling and interaction only)")
    return ImportResult(flow=flow, format="mermaid", notes=notes)


# ----------------------------------------------------------------------------------------------
# helpers


def _split_statements(line: str) -> list[str]:
    """Split on `;` outside quotes and shapes (Mermaid's statement separator)."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur))
    return [s.strip() for s in out if s.strip()]


def _skip(s: str, pos: int) -> int:
    while pos < len(s) and s[pos].isspace():
        pos += 1
    return pos


def _text(label: str) -> str:
    """A label as written (quoted labels keep their inner spaces) with <br> and entities decoded."""
    label = label.strip()
    if len(label) >= 2 and label[0] == label[-1] == '"':
        label = label[1:-1]
        if len(label) >= 2 and label[0] == label[-1] == "`":  # a markdown string
            label = label[1:-1]
    label = re.sub(r"<br\s*/?>", "\n", label, flags=re.I)

    def ent(m: re.Match[str]) -> str:
        v = m.group(1)
        named = {"quot": '"', "amp": "&", "lt": "<", "gt": ">"}.get(v)
        return named or (chr(int(v)) if int(v) <= 0x10FFFF else m.group(0))

    return _ENTITY.sub(ent, label)


def _short(s: str, limit: int = 60) -> str:
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _few(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
