"""Reading and writing flows: native JSON/YAML (lossless), the agent2model YAML format, Mermaid.

Reading is defensive: a file that is too big, binary, not JSON/YAML, uses YAML aliases (alias
bombs), or does not match the model becomes one `FlowFileError` naming the file and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from engine.errors import FlowFileError
from engine.flow import ChoiceVariable, Edge, Flow, Node, RangeVariable, TextVariable

MAX_FLOW_BYTES = 2 * 1024 * 1024
FORMATS = ("json", "yaml", "agent2model", "mermaid")

_A2M_TERMINALS = {"success": "success", "abandonment": "abandoned", "escalation": "escalated"}
_A2M_TERMINALS_BACK = {v: k for k, v in _A2M_TERMINALS.items()}


# ----------------------------------------------------------------------------------------------
# public API


def load_flow_file(path: str | Path, fmt: str | None = None) -> Flow:
    """Read a flow from a file (native JSON/YAML or agent2model YAML, detected unless `fmt` says)."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise FlowFileError(str(p), f"cannot read the file ({e.strerror}); check the path") from None
    if size > MAX_FLOW_BYTES:
        raise FlowFileError(
            str(p), f"file is {size:,} bytes, over the {MAX_FLOW_BYTES:,}-byte limit for a flow; is it the right file?"
        )
    return parse_flow(p.read_bytes(), source=str(p), fmt=fmt)


def parse_flow(data: bytes | str, source: str = "<input>", fmt: str | None = None) -> Flow:
    """Parse flow text. `fmt` is json, yaml or agent2model; None detects it."""
    text = _decode(data, source)
    doc = _parse_document(text, source, prefer_json=(fmt == "json") or source.endswith(".json"))
    if not isinstance(doc, dict):
        raise FlowFileError(source, f"expected a mapping at the top level, found {_kind(doc)}")
    if fmt == "agent2model" or (fmt is None and isinstance(doc.get("nodes"), dict)):
        return flow_from_dict(agent2model_to_native(doc, source), source, agent2model=True)
    return flow_from_dict(doc, source)


def flow_from_dict(doc: dict[str, Any], source: str = "<input>", agent2model: bool = False) -> Flow:
    """Validate a native flow dict. `agent2model`: name fields as the agent2model file has them."""
    try:
        return Flow.model_validate(doc)
    except ValidationError as e:
        err = e.errors()[0]
        more = f" (and {e.error_count() - 1} more problem(s))" if e.error_count() > 1 else ""
        loc = _agent2model_loc(err["loc"], doc) if agent2model else _loc(err["loc"])
        raise FlowFileError(source, _describe_pydantic(err, doc) + more, field=loc) from None


def _agent2model_loc(loc: tuple[Any, ...], doc: dict[str, Any]) -> str:
    """Native `nodes[3].prompt` / `edges[2].when` back to the agent2model file's `nodes.greet.prompt` /
    `nodes.greet.next`, so the message points at a line the user wrote."""
    if len(loc) >= 2 and loc[0] in ("nodes", "edges") and isinstance(loc[1], int):
        try:
            item = doc[loc[0]][loc[1]]
            if loc[0] == "nodes":
                return _loc(("nodes", str(item["id"])) + tuple(loc[2:]))
            return _loc(("nodes", str(item["source"]), "next"))
        except (IndexError, KeyError, TypeError):
            pass
    if loc and loc[0] == "variables":
        return _loc(("scenario_variables",) + tuple(loc[1:]))
    return _loc(loc)


def dump_flow(flow: Flow, fmt: str = "json") -> str:
    """Serialize a flow: json/yaml are lossless; agent2model and mermaid are exports."""
    if fmt == "json":
        return json.dumps(flow.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n"
    if fmt == "yaml":
        return _yaml_dump(flow.model_dump(mode="json"))
    if fmt == "agent2model":
        return _yaml_dump(native_to_agent2model(flow))
    if fmt == "mermaid":
        return to_mermaid(flow)
    raise ValueError(f"unknown format '{fmt}'; use one of {', '.join(FORMATS)}")


# ----------------------------------------------------------------------------------------------
# agent2model


def agent2model_to_native(doc: dict[str, Any], source: str = "<input>") -> dict[str, Any]:
    """Convert an agent2model YAML document into the native flow dict."""
    known = {"name", "description", "start", "nodes", "scenario_variables", "system_prompt"}
    for key in doc:
        if key not in known:
            raise FlowFileError(source, f"unknown field; agent2model files have {', '.join(sorted(known))}", field=str(key))
    nodes_in = doc.get("nodes")
    if not isinstance(nodes_in, dict):
        raise FlowFileError(source, f"expected a map of node id to node, found {_kind(nodes_in)}", field="nodes")
    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    for nid, spec in nodes_in.items():
        where = f"nodes.{nid}"
        if not isinstance(spec, dict):
            raise FlowFileError(source, f"expected a mapping, found {_kind(spec)}", field=where)
        if "terminal" in spec:
            outcome = spec["terminal"]
            if not isinstance(outcome, str):
                raise FlowFileError(source, "terminal must be success, abandonment or escalation", field=f"{where}.terminal")
            extra = set(spec) - {"terminal", "prompt", "label"}
            if extra:
                raise FlowFileError(source, "a terminal node takes only terminal, prompt and label", field=f"{where}.{sorted(extra)[0]}")
            nodes.append({"id": str(nid), "role": "terminal", "outcome": _A2M_TERMINALS.get(outcome, outcome),
                          "prompt": spec.get("prompt", "") or "", "label": spec.get("label", "") or ""})
            continue
        extra = set(spec) - {"role", "prompt", "next", "label", "examples"}
        if extra:
            raise FlowFileError(source, "unknown field; a node takes role, prompt, next (or terminal)", field=f"{where}.{sorted(extra)[0]}")
        role = spec.get("role")
        if role not in ("agent", "user", "decision"):
            raise FlowFileError(source, f"role must be agent, user or decision (or give terminal: ...), found {role!r}", field=f"{where}.role")
        nodes.append({"id": str(nid), "role": role, "prompt": spec.get("prompt", "") or "",
                      "label": spec.get("label", "") or "", "examples": spec.get("examples", []) or []})
        for i, nxt in enumerate(_as_list(spec.get("next"))):
            if isinstance(nxt, str | int) and not isinstance(nxt, bool):
                edges.append({"source": str(nid), "target": str(nxt)})
            elif isinstance(nxt, dict) and "to" in nxt:
                bad = set(nxt) - {"to", "when", "weight"}
                if bad:
                    raise FlowFileError(source, "a branch takes to, when and weight", field=f"{where}.next[{i}].{sorted(bad)[0]}")
                when = nxt.get("when")
                if when is not None and not isinstance(when, str):
                    raise FlowFileError(source, f"a condition must be text, found {when!r}; put it in quotes "
                                        "(YAML reads yes/no/on/off as true/false)", field=f"{where}.next[{i}].when")
                edge = {"source": str(nid), "target": str(nxt["to"]), "when": when}
                if nxt.get("weight") is not None:
                    edge["weight"] = nxt["weight"]
                edges.append(edge)
            else:
                raise FlowFileError(source, "each entry of next is a node id or {to, when}", field=f"{where}.next[{i}]")
    variables: dict[str, Any] = {}
    scenario = doc.get("scenario_variables") or {}
    if not isinstance(scenario, dict):
        raise FlowFileError(source, f"expected a map of variable name to values, found {_kind(scenario)}",
                            field="scenario_variables")
    for name, spec in scenario.items():
        where = f"scenario_variables.{name}"
        if isinstance(spec, list):
            variables[str(name)] = {"kind": "choice", "values": spec}
        elif isinstance(spec, dict) and {"min", "max"} <= set(spec):
            integer = all(isinstance(spec[k], int) for k in ("min", "max"))
            variables[str(name)] = {"kind": "range", "min": spec["min"], "max": spec["max"], "integer": integer}
        else:
            raise FlowFileError(source, "expected a list of values or {min, max}", field=where)
    start = doc.get("start") or (next(iter(nodes_in)) if nodes_in else "")
    return {
        "name": str(doc.get("name") or Path(source).stem or "imported"),
        "description": doc.get("description", "") or "",
        "start": str(start),
        "system_prompt": doc.get("system_prompt", "") or "",
        "variables": variables,
        "nodes": nodes,
        "edges": edges,
    }


def native_to_agent2model(flow: Flow) -> dict[str, Any]:
    nodes: dict[str, Any] = {}
    for n in flow.nodes:
        if n.role == "terminal":
            entry: dict[str, Any] = {"terminal": _A2M_TERMINALS_BACK.get(n.outcome or "success", n.outcome)}
            if n.prompt:
                entry["prompt"] = n.prompt
            if n.label:
                entry["label"] = n.label
            nodes[n.id] = entry
            continue
        entry = {"role": n.role, "prompt": n.prompt}
        if n.label:
            entry["label"] = n.label
        if n.examples:
            entry["examples"] = list(n.examples)
        outs = flow.out_edges(n.id)
        if len(outs) == 1 and not outs[0].when and outs[0].weight is None:
            entry["next"] = outs[0].target
        elif outs:
            entry["next"] = [_a2m_branch(e.target, e.when, e.weight) for e in outs]
        nodes[n.id] = entry
    variables: dict[str, Any] = {}
    for name, v in flow.variables.items():
        if isinstance(v, ChoiceVariable):
            variables[name] = list(v.values)
        elif isinstance(v, RangeVariable):
            variables[name] = {"min": int(v.min) if v.integer else v.min, "max": int(v.max) if v.integer else v.max}
        elif isinstance(v, TextVariable):
            variables[name] = list(v.pool)
    out: dict[str, Any] = {"name": flow.name, "description": flow.description, "start": flow.start}
    if flow.system_prompt:
        out["system_prompt"] = flow.system_prompt
    out["nodes"] = nodes
    if variables:
        out["scenario_variables"] = variables
    return out


def _a2m_branch(target: str, when: str | None, weight: float | None) -> str | dict[str, Any]:
    if not when and weight is None:
        return target
    out: dict[str, Any] = {"to": target}
    if when:
        out["when"] = when
    if weight is not None:
        out["weight"] = weight
    return out


# ----------------------------------------------------------------------------------------------
# Mermaid


def to_mermaid(flow: Flow) -> str:
    """`flowchart TD` with the paper's colours: agent blue, user orange, success green, exits red."""
    ids = {n.id: f"n{i}" for i, n in enumerate(flow.nodes)}
    lines = ["flowchart TD"]
    for n in flow.nodes:
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
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# helpers


class _Dumper(yaml.SafeDumper):
    """Safe dumper that double-quotes strings holding characters YAML would otherwise read back
    differently (NEL and the Unicode line/paragraph separators are line breaks to a YAML reader)."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if any(c in value for c in "\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _yaml_dump(doc: Any) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


class _NoAliasLoader(yaml.SafeLoader):
    """Safe loader that refuses anchors/aliases: flows never need them and they enable alias bombs."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed in flow files; write the value out", event.start_mark
            )
        return super().compose_node(parent, index)


def _decode(data: bytes | str, source: str) -> str:
    if isinstance(data, str):
        text = data
    else:
        if len(data) > MAX_FLOW_BYTES:
            raise FlowFileError(source, f"input is {len(data):,} bytes, over the {MAX_FLOW_BYTES:,}-byte limit")
        if b"\x00" in data[:8192]:
            raise FlowFileError(source, "this is a binary file, not a flow; export the flow as JSON or YAML")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise FlowFileError(source, f"not UTF-8 text (bad byte at offset {e.start}); save the file as UTF-8") from None
    if "\x00" in text:
        raise FlowFileError(source, "this is a binary file, not a flow; export the flow as JSON or YAML")
    return text


def _parse_document(text: str, source: str, prefer_json: bool) -> Any:
    if not text.strip():
        raise FlowFileError(source, "the file is empty")
    if prefer_json or text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except RecursionError:
            raise FlowFileError(source, "the document is nested too deeply to be a flow") from None
        except json.JSONDecodeError as e:
            if prefer_json:
                raise FlowFileError(source, f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - safe loader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise FlowFileError(source, f"invalid YAML{where}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise FlowFileError(source, f"invalid YAML: {e}") from None
    except RecursionError:
        raise FlowFileError(source, "the document is nested too deeply to be a flow") from None


def _as_list(v: Any) -> list[Any]:
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def _kind(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(type(v), type(v).__name__)


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("choice", "range", "text") and out.startswith("variables"):
            continue  # discriminator tag, not a user field
        else:
            out += ("." if out else "") + str(part)
    return out


def _describe_pydantic(err: Any, doc: dict[str, Any]) -> str:
    typ, msg = err.get("type", ""), err.get("msg", "invalid value")
    if typ == "extra_forbidden":
        return "unknown field; remove it or check its spelling"
    if typ == "missing":
        return "required field is missing"
    if typ == "literal_error" and err["loc"][-1] == "role":
        return f"role must be agent, user, decision or terminal, found {err.get('input')!r}"
    if typ == "string_type" and isinstance(err.get("input"), bool):
        return (f"expected text, found {str(err['input']).lower()}; put the value in quotes "
                "(YAML reads yes/no/on/off as true/false)")
    if typ == "union_tag_invalid":
        return "variable kind must be choice, range or text"
    msg = msg.removeprefix("Value error, ")
    return f"{msg} (found {err.get('input')!r})" if "input" in err and not isinstance(err["input"], dict | list) else msg


def _mm(text: str | None) -> str:
    return (text or "").replace('"', "'").replace("\n", " ")


def node_from_dict(d: dict[str, Any]) -> Node:
    return Node.model_validate(d)


def edge_from_dict(d: dict[str, Any]) -> Edge:
    return Edge.model_validate(d)
