"""agent2model YAML: the format of the paper's other public implementation (agent2model 0.1.0).

Its schema (`agent2model.ir.schema`, every model `extra="forbid"`):

    name, description, start, scenario_variables: {name: list | [lo, hi] | scalar}
    nodes: {id: {role: agent|user|decision, prompt?, next: id | [id | {to, when?}]}
            | {terminal: success|abandonment|escalation}}

The export writes only that. What the schema has no field for (labels, example utterances, edge
weights, the runtime system prompt, terminal prompts, canvas positions, variable kinds, descriptions and
weights, custom outcomes, and whatever else a Flow carries) goes into a trailing YAML comment block that
agent2model ignores and `import` reads back, with one warning line per kind. Custom outcomes map to the
three kinds by `outcomes.RULE` unless the caller says otherwise (`--outcome denied=abandonment`).

The import takes agent2model's own files and subterra's older exports (which also wrote `label`,
`examples`, `system_prompt` and branch `weight`), reads `[lo, hi]` number pairs as ranges (agent2model's
convention), repeated values of a list as weights, and applies the comment block where the visible
fields still agree with it (an edited file wins over a stale comment).
"""

from __future__ import annotations

import math
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from engine.errors import FlowFileError
from engine.flow import ChoiceVariable, Flow, RangeVariable, TextVariable
from engine.interop import ExportResult
from engine.interop.outcomes import A2M_KINDS, KIND_FOR_NATIVE, NATIVE_FOR_KIND, RULE, guess_kind
from engine.interop.yamlio import InlineList, dump_yaml, load_yaml

EXTRAS_MARKER = "# --- subterra extras (v1): fields agent2model has no place for; `subterra import` reads them ---"
MAX_EXPANDED = 200  # a weighted choice is written as repeated values when that takes at most this many items

_FLOW_VISIBLE = {"schema_version", "name", "description", "start", "nodes", "edges", "variables"}
_KIND_NAMES = {  # field -> how a warning names that kind of loss
    "label": "node labels", "examples": "example utterances", "position": "canvas positions",
    "prompt": "terminal prompts", "weight": "edge weights", "system_prompt": "the runtime system prompt",
    "id": "edge ids", "variables": "variable kinds, descriptions, weights and other variable fields",
    "canvas": "the canvas (sticky notes, groups, layout direction)",
}


# ----------------------------------------------------------------------------------------------
# export


def export_agent2model(flow: Flow, outcomes: dict[str, str] | None = None) -> ExportResult:
    """The flow as an agent2model file. `outcomes`: custom outcome word -> agent2model kind."""
    overrides = dict(outcomes or {})
    losses: dict[str, set[str]] = {}
    extras: dict[str, Any] = {}

    def lose(kind: str, where: str) -> None:
        losses.setdefault(kind, set()).add(where)

    flow_extra = flow.model_dump(mode="json", exclude=_FLOW_VISIBLE, exclude_defaults=True)
    for key in flow_extra:
        lose(key, "flow")
    extras.update(flow_extra)
    if not flow.start:
        extras["start"] = ""  # the import would otherwise take the first node

    ids = {n.id for n in flow.nodes}
    mapped: dict[str, tuple[str, str]] = {}  # custom outcome -> (kind, why)
    nodes: dict[str, Any] = {}
    node_extras: dict[str, Any] = {}
    for n in flow.nodes:
        if n.role == "terminal":
            kind, why = _kind_for(n.outcome, overrides)
            if why:
                mapped[n.outcome or ""] = (kind, why)
            entry: dict[str, Any] = {"terminal": kind}
            extra = n.model_dump(mode="json", exclude={"id", "role", "outcome"}, exclude_defaults=True)
            if n.outcome != NATIVE_FOR_KIND[kind]:
                extra["outcome"] = n.outcome
                extra["exported_as"] = kind
        else:
            entry = {"role": n.role}
            if n.prompt:
                entry["prompt"] = n.prompt
            outs = flow.out_edges(n.id)
            if len(outs) == 1 and not outs[0].when:
                entry["next"] = outs[0].target
            elif outs:
                entry["next"] = [{"to": e.target, "when": e.when} if e.when else e.target for e in outs]
            extra = n.model_dump(mode="json", exclude={"id", "role", "prompt"}, exclude_defaults=True)
        for key in extra:
            if key not in ("outcome", "exported_as") or n.role != "terminal":
                lose(key, n.id)
        if extra:
            node_extras[n.id] = extra
        nodes[n.id] = entry
    if node_extras:
        extras["nodes"] = node_extras

    edge_extras: list[dict[str, Any]] = []
    dropped: list[str] = []
    for e in flow.edges:
        if e.source not in ids or flow.node(e.source).role == "terminal":
            dropped.append(e.id)
        extra = e.model_dump(mode="json", exclude={"source", "target", "when", "id"}, exclude_defaults=True)
        if e.id != _auto_id(flow, e):
            extra["id"] = e.id
        for key in extra:
            lose(key, e.id)
        edge_extras.append({"source": e.source, "target": e.target, "when": e.when, **extra})
    if any(len(x) > 3 for x in edge_extras) or dropped or _edge_order(flow) != list(range(len(flow.edges))):
        extras["edges"] = edge_extras

    scenario: dict[str, Any] = {}
    var_extras: dict[str, Any] = {}
    for name, v in flow.variables.items():
        visible, exact = _variable_out(v)
        scenario[name] = InlineList(visible) if all(
            isinstance(x, int | float | bool) or (isinstance(x, str) and len(x) <= 40 and "\n" not in x)
            for x in visible) else visible
        if not exact:
            var_extras[name] = v.model_dump(mode="json")
            lose("variables", name)
    if var_extras:
        extras["variables"] = var_extras

    doc: dict[str, Any] = {"name": flow.name, "description": flow.description, "start": flow.start, "nodes": nodes}
    if scenario:
        doc["scenario_variables"] = scenario
    text = dump_yaml(doc)
    if extras:
        block = dump_yaml(extras).rstrip("\n").split("\n")
        text += "\n" + EXTRAS_MARKER + "\n" + "\n".join("# " + line if line else "#" for line in block) + "\n"

    warnings = [_loss_line(kind, where) for kind, where in losses.items()]
    if mapped:
        shown = ", ".join(f"'{w}' -> {k} ({why})" for w, (k, why) in mapped.items())
        example = next((w for w in mapped if w), "denied")
        warnings.append(f"agent2model knows only the outcomes success, abandonment and escalation: wrote {shown}; "
                        f"override with --outcome {example}=abandonment (subterra reads the original back)")
    if dropped:
        warnings.append(f"agent2model cannot hold edges that leave a terminal or an unknown node: dropped "
                        f"{_few(dropped)} (subterra reads them back)")
    return ExportResult(text=text, warnings=warnings)


def _kind_for(outcome: str | None, overrides: dict[str, str]) -> tuple[str, str]:
    """(kind, why it was chosen); why is '' for subterra's three standard outcomes."""
    word = outcome or ""
    if word in overrides:
        return overrides[word], "your --outcome"
    if word in KIND_FOR_NATIVE:
        return KIND_FOR_NATIVE[word], ""
    if word in A2M_KINDS:
        return word, ""
    if not word:
        return "success", "no outcome set; default success"
    return guess_kind(word), "default rule"


def _variable_out(v: ChoiceVariable | RangeVariable | TextVariable) -> tuple[Any, bool]:
    """agent2model's pool for a variable, and whether reading it back gives the same variable."""
    if isinstance(v, RangeVariable):
        if v.integer:
            lo, hi = math.ceil(v.min), math.floor(v.max)
            return [lo, hi], (lo, hi) == (v.min, v.max) and not v.description
        return [float(v.min), float(v.max)], not v.description
    if isinstance(v, TextVariable):
        return _pool(list(v.pool)), False  # agent2model has no text kind: it reads back as a choice
    values = list(v.values)
    if v.weights is None:
        return _pool(values), not v.description and len(set(map(repr, values))) == len(values)
    counts = _integer_weights(v.weights)
    if counts is None:
        return _pool(values), False
    expanded = [x for x, c in zip(values, counts, strict=True) for _ in range(c)]
    return _pool(expanded), False


def _pool(values: list[Any]) -> list[Any]:
    """A list agent2model reads as categorical: two numbers alone would be a range, so write them twice."""
    if len(values) == 2 and all(isinstance(x, int | float) and not isinstance(x, bool) for x in values):
        return values * 2
    return values


def _integer_weights(weights: list[float]) -> list[int] | None:
    fracs = [Fraction(w).limit_denominator(100) for w in weights]
    if any(float(f) != w for f, w in zip(fracs, weights, strict=True)):
        return None
    denom = math.lcm(*(f.denominator for f in fracs))
    ints = [int(f * denom) for f in fracs]
    g = math.gcd(*ints) or 1
    ints = [i // g for i in ints]
    return ints if 0 < sum(ints) <= MAX_EXPANDED else None


def _auto_id(flow: Flow, e: Any) -> str:
    """The id the import would give this edge (the first `source->target` edge gets the bare form)."""
    base = f"{e.source}->{e.target}"
    same = [x for x in flow.edges if x.source == e.source and x.target == e.target]
    k = same.index(e)
    return base if k == 0 else f"{base}#{k + 1}"


def _edge_order(flow: Flow) -> list[int]:
    """The order the import rebuilds edges in (grouped by source, in node order) as indices of flow.edges."""
    order: list[int] = []
    for n in flow.nodes:
        order += [i for i, e in enumerate(flow.edges) if e.source == n.id and n.role != "terminal"]
    return order


def _loss_line(kind: str, where: set[str]) -> str:
    name = _KIND_NAMES.get(kind, f"'{kind}'")
    items = sorted(where)
    at = "" if items == ["flow"] else f" ({len(items)}: {_few(items, 3)})"
    return (f"agent2model has no field for {name}{at}; kept only in the file's subterra comment, which "
            "agent2model ignores and `subterra import` reads back")


def _few(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


# ----------------------------------------------------------------------------------------------
# import


def agent2model_to_native(doc: dict[str, Any], source: str = "<input>", text: str = "",
                          notes: list[str] | None = None) -> dict[str, Any]:
    """An agent2model document (and its file text, for the comment block) as a native flow dict."""
    notes = notes if notes is not None else []
    known = {"name", "description", "start", "nodes", "scenario_variables", "system_prompt"}
    for key in doc:
        if key not in known:
            raise FlowFileError(source, f"unknown field; agent2model files have {', '.join(sorted(known))}",
                                field=str(key))
    nodes_in = doc.get("nodes")
    if not isinstance(nodes_in, dict):
        raise FlowFileError(source, f"expected a map of node id to node, found {_kind(nodes_in)}", field="nodes")
    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    for nid, spec in nodes_in.items():
        where = f"nodes.{nid}"
        if not isinstance(spec, dict):
            raise FlowFileError(source, f"expected a mapping, found {_kind(spec)}", field=where)
        # agent2model's own dumps (its compiled flowchart.json) write absent fields as null and `next: []`
        spec = {k: v for k, v in spec.items() if v is not None}
        if "terminal" in spec and spec.get("next") == []:
            del spec["next"]
        if "terminal" in spec:
            outcome = spec["terminal"]
            if not isinstance(outcome, str):
                raise FlowFileError(source, "terminal must be success, abandonment or escalation",
                                    field=f"{where}.terminal")
            extra = set(spec) - {"terminal", "prompt", "label"}
            if extra:
                raise FlowFileError(source, "a terminal node takes only terminal, prompt and label",
                                    field=f"{where}.{sorted(extra)[0]}")
            nodes.append({"id": str(nid), "role": "terminal", "outcome": NATIVE_FOR_KIND.get(outcome, outcome),
                          "prompt": spec.get("prompt", "") or "", "label": spec.get("label", "") or ""})
            continue
        extra = set(spec) - {"role", "prompt", "next", "label", "examples"}
        if extra:
            raise FlowFileError(source, "unknown field; a node takes role, prompt, next (or terminal)",
                                field=f"{where}.{sorted(extra)[0]}")
        role = spec.get("role")
        if role not in ("agent", "user", "decision"):
            raise FlowFileError(source, f"role must be agent, user or decision (or give terminal: ...), found {role!r}",
                                field=f"{where}.role")
        nodes.append({"id": str(nid), "role": role, "prompt": spec.get("prompt", "") or "",
                      "label": spec.get("label", "") or "", "examples": spec.get("examples", []) or []})
        for i, nxt in enumerate(_as_list(spec.get("next"))):
            if isinstance(nxt, str | int) and not isinstance(nxt, bool):
                edges.append({"source": str(nid), "target": str(nxt)})
            elif isinstance(nxt, dict) and "to" in nxt:
                bad = set(nxt) - {"to", "when", "weight"}
                if bad:
                    raise FlowFileError(source, "a branch takes to, when and weight",
                                        field=f"{where}.next[{i}].{sorted(bad)[0]}")
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
    scenario = doc.get("scenario_variables") or {}
    if not isinstance(scenario, dict):
        raise FlowFileError(source, f"expected a map of variable name to values, found {_kind(scenario)}",
                            field="scenario_variables")
    variables = {str(name): _variable_in(spec, f"scenario_variables.{name}", source) for name, spec in scenario.items()}
    start = doc.get("start") or (next(iter(nodes_in)) if nodes_in else "")
    out = {
        "name": str(doc.get("name") or Path(source).stem or "imported"),
        "description": doc.get("description", "") or "",
        "start": str(start),
        "system_prompt": doc.get("system_prompt", "") or "",
        "variables": variables,
        "nodes": nodes,
        "edges": edges,
    }
    extras = _read_extras(text, source, notes)
    if not doc.get("start") and nodes_in and extras.get("start") != "":
        notes.append(f"the file names no start node: took the first node, '{start}'")
    if extras:
        _apply_extras(out, extras, scenario, notes)
    else:
        ranges = [n for n, v in variables.items() if v["kind"] == "range" and isinstance(scenario[n], list)]
        if ranges:
            notes.append(f"read the two-number lists {', '.join(ranges)} as ranges (agent2model draws a number "
                         "between them); make them choices on the canvas if they are two options")
    return out


def _variable_in(spec: Any, where: str, source: str) -> dict[str, Any]:
    if isinstance(spec, list):
        if len(spec) == 2 and all(isinstance(x, int | float) and not isinstance(x, bool) for x in spec):
            lo, hi = sorted(spec)
            return {"kind": "range", "min": lo, "max": hi, "integer": all(isinstance(x, int) for x in spec)}
        if not spec:
            raise FlowFileError(source, "an empty list has nothing to draw from; give at least one value", field=where)
        counts = Counter(_hashable(x) for x in spec)
        values = list(dict.fromkeys(_hashable(x) for x in spec))
        bad = [x for x in values if not isinstance(x, str | int | float | bool)]
        if bad:
            raise FlowFileError(source, f"values must be text, numbers or true/false, found {bad[0]!r}", field=where)
        weights = [counts[x] for x in values]
        out: dict[str, Any] = {"kind": "choice", "values": values}
        if len(set(weights)) > 1:
            out["weights"] = [float(w) for w in weights]
        return out
    if isinstance(spec, dict) and {"min", "max"} <= set(spec):
        integer = all(isinstance(spec[k], int) for k in ("min", "max"))
        return {"kind": "range", "min": spec["min"], "max": spec["max"], "integer": integer}
    if isinstance(spec, str | int | float) and not isinstance(spec, bool):
        return {"kind": "choice", "values": [spec]}
    raise FlowFileError(source, "expected a list of values, a [low, high] pair or {min, max}", field=where)


def _hashable(x: Any) -> Any:
    return x if isinstance(x, str | int | float | bool) or x is None else repr(x)


# -- the comment block -------------------------------------------------------------------------


def _read_extras(text: str, source: str, notes: list[str]) -> dict[str, Any]:
    if EXTRAS_MARKER not in text:
        return {}
    lines = text.split(EXTRAS_MARKER, 1)[1].split("\n")[1:]
    body: list[str] = []
    for line in lines:
        if not line.strip():
            continue
        if not line.startswith("#"):
            break
        body.append(line[2:] if line.startswith("# ") else line[1:])
    try:
        extras = load_yaml("\n".join(body))
    except (yaml.YAMLError, RecursionError) as e:
        notes.append(f"the subterra comment block cannot be read ({str(e).splitlines()[0]}); imported only what "
                     "agent2model's own fields hold")
        return {}
    if not isinstance(extras, dict):
        return {}
    return extras


def _apply_extras(out: dict[str, Any], extras: dict[str, Any], scenario: dict[str, Any], notes: list[str]) -> None:
    """Put back what the export kept in the comment, wherever the visible fields still agree with it."""
    stale: list[str] = []
    for key, value in extras.items():
        if key not in ("nodes", "edges", "variables"):
            out[key] = value
    by_id = {n["id"]: n for n in out["nodes"]}
    for nid, extra in (extras.get("nodes") or {}).items():
        node = by_id.get(str(nid))
        if node is None or not isinstance(extra, dict):
            stale.append(f"node {nid}")
            continue
        extra = dict(extra)
        exported_as = extra.pop("exported_as", None)
        if "outcome" in extra and exported_as is not None:
            outcome = extra.pop("outcome")
            if node["role"] == "terminal" and KIND_FOR_NATIVE.get(node["outcome"], node["outcome"]) == exported_as:
                node["outcome"] = outcome
            else:
                stale.append(f"outcome of {nid}")
        node.update(extra)
    if "edges" in extras:
        _apply_edge_extras(out, extras["edges"], stale)
    for name, spec in (extras.get("variables") or {}).items():
        if name not in out["variables"] or not isinstance(spec, dict):
            stale.append(f"variable {name}")
            continue
        try:
            native = Flow.model_validate({"name": "x", "variables": {name: spec}}).variables[name]
        except Exception:
            stale.append(f"variable {name}")
            continue
        if _variable_out(native)[0] == scenario.get(name):
            out["variables"][name] = spec
        else:
            stale.append(f"variable {name}")
    if stale:
        notes.append(f"the file was edited after export: the subterra comment no longer matches {_few(stale)}; "
                     "kept what agent2model's fields say there")


def _apply_edge_extras(out: dict[str, Any], saved: Any, stale: list[str]) -> None:
    if not isinstance(saved, list):
        return
    visible = [(e["source"], e["target"], e.get("when")) for e in out["edges"]]
    keyed = [(str(s.get("source")), str(s.get("target")), s.get("when")) for s in saved if isinstance(s, dict)]
    writable = [k for k, s in zip(keyed, saved, strict=False) if _is_visible_edge(k, out)]
    if Counter(writable) == Counter(visible) and len(keyed) == len(saved):
        # the graph is unchanged: rebuild the edges in their original order with their extra fields
        out["edges"] = [{**{k: v for k, v in s.items() if k not in ("source", "target", "when")},
                         "source": str(s["source"]), "target": str(s["target"]), "when": s.get("when")}
                        for s in saved]
        return
    pool = {k: [s for kk, s in zip(keyed, saved, strict=False) if kk == k] for k in set(keyed)}
    for e in out["edges"]:
        matches = pool.get((e["source"], e["target"], e.get("when"))) or []
        if matches:
            s = matches.pop(0)
            e.update({k: v for k, v in s.items() if k not in ("source", "target", "when")})
    if any(pool.values()):
        stale.append("some edges")


def _is_visible_edge(key: tuple[str, str, Any], out: dict[str, Any]) -> bool:
    """Would the export have written this edge into `next` (its source a non-terminal node)?"""
    for n in out["nodes"]:
        if n["id"] == key[0]:
            return n["role"] != "terminal"
    return False


def _as_list(v: Any) -> list[Any]:
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def _kind(v: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(type(v), type(v).__name__)


__all__ = ["EXTRAS_MARKER", "RULE", "agent2model_to_native", "export_agent2model"]
