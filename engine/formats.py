"""Reading and writing flows: native JSON/YAML (lossless), and the other tools' formats through
`engine.interop`: agent2model YAML (both ways), Mermaid flowcharts (both ways), LangGraph (import).

Reading is defensive: a file that is too big, binary, not JSON/YAML, uses YAML aliases (alias
bombs), or does not match the model becomes one `FlowFileError` naming the file and the field.
Imports return an `ImportResult` (the flow and what was guessed); exports an `ExportResult` (the text
and one warning per kind of loss). `parse_flow`/`dump_flow` are the short forms that keep only the
flow or the text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from engine.errors import FlowFileError
from engine.flow import Flow
from engine.interop import ExportResult, ImportResult
from engine.interop.agent2model import agent2model_to_native, export_agent2model
from engine.interop.langgraph import DEFAULT_TIMEOUT, import_langgraph
from engine.interop.mermaid import export_mermaid, import_mermaid, looks_like_mermaid
from engine.interop.yamlio import dump_yaml, load_yaml

MAX_FLOW_BYTES = 2 * 1024 * 1024
FORMATS = ("json", "yaml", "agent2model", "mermaid")
"""What a flow can be exported as."""
IMPORT_FORMATS = ("json", "yaml", "agent2model", "mermaid", "langgraph")
"""What a flow can be imported from (langgraph only from a file: reading it runs the file)."""

__all__ = ["FORMATS", "IMPORT_FORMATS", "MAX_FLOW_BYTES", "DEFAULT_TIMEOUT", "ExportResult", "ImportResult",
           "dump_flow", "export_flow", "import_file", "import_text", "load_flow_file", "parse_flow", "flow_from_dict"]


# ----------------------------------------------------------------------------------------------
# public API


def load_flow_file(path: str | Path, fmt: str | None = None) -> Flow:
    """Read a flow from a file (native JSON/YAML, agent2model YAML or Mermaid, detected unless `fmt` says)."""
    p = Path(path)
    return parse_flow(_read(p), source=str(p), fmt=fmt)


def parse_flow(data: bytes | str, source: str = "<input>", fmt: str | None = None) -> Flow:
    """Parse flow text. `fmt` is json, yaml, agent2model or mermaid; None detects it."""
    return import_text(data, source, fmt).flow


def import_file(path: str | Path, fmt: str | None = None, name: str | None = None,
                timeout: float = DEFAULT_TIMEOUT) -> ImportResult:
    """Import a file in any of IMPORT_FORMATS (detected from the suffix and content unless `fmt` says).
    A LangGraph .py file is run in a child process with `timeout`: warn the person before calling this."""
    p = Path(path)
    if fmt == "langgraph" or (fmt is None and p.suffix.lower() == ".py"):
        return import_langgraph(p, name=name, timeout=timeout)
    return import_text(_read(p), str(p), fmt, name=name)


def import_text(data: bytes | str, source: str = "<input>", fmt: str | None = None,
                name: str | None = None) -> ImportResult:
    """Import flow text: json, yaml, agent2model or mermaid (None detects it). `name` replaces the file's."""
    if fmt == "langgraph":
        raise FlowFileError(source, "a LangGraph graph is read by running its file; import it from a .py file")
    if fmt is not None and fmt not in IMPORT_FORMATS:
        raise ValueError(f"unknown format '{fmt}'; use one of {', '.join(IMPORT_FORMATS)}")
    text = _decode(data, source)
    if fmt == "mermaid" or (fmt is None and (Path(source).suffix.lower() in (".mmd", ".mermaid")
                                             or looks_like_mermaid(text))):
        return import_mermaid(text, source, name=name)
    doc = _parse_document(text, source, prefer_json=(fmt == "json") or source.endswith(".json"))
    if not isinstance(doc, dict):
        raise FlowFileError(source, f"expected a mapping at the top level, found {_kind(doc)}")
    if fmt == "agent2model" or (fmt is None and isinstance(doc.get("nodes"), dict)):
        notes: list[str] = []
        native = agent2model_to_native(doc, source, text=text, notes=notes)
        if name:
            native["name"] = name
        return ImportResult(flow=flow_from_dict(native, source, agent2model=True), format="agent2model", notes=notes)
    if name:
        doc = {**doc, "name": name}
    return ImportResult(flow=flow_from_dict(doc, source), format="json" if text.lstrip().startswith("{") else "yaml")


def export_flow(flow: Flow, fmt: str = "json", outcomes: dict[str, str] | None = None) -> ExportResult:
    """Serialize a flow: json/yaml are lossless; agent2model and mermaid say what they leave out.
    `outcomes` (agent2model): custom outcome word -> success, abandonment or escalation."""
    if fmt == "json":
        return ExportResult(text=json.dumps(flow.model_dump(mode="json"), indent=2, ensure_ascii=False) + "\n")
    if fmt == "yaml":
        return ExportResult(text=dump_yaml(flow.model_dump(mode="json")))
    if fmt == "agent2model":
        return export_agent2model(flow, outcomes)
    if fmt == "mermaid":
        return export_mermaid(flow)
    raise ValueError(f"unknown format '{fmt}'; use one of {', '.join(FORMATS)}")


def dump_flow(flow: Flow, fmt: str = "json") -> str:
    """The text of `export_flow` (its warnings dropped)."""
    return export_flow(flow, fmt).text


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


# ----------------------------------------------------------------------------------------------
# helpers


def _read(p: Path) -> bytes:
    try:
        size = p.stat().st_size
        if size > MAX_FLOW_BYTES:
            raise FlowFileError(
                str(p),
                f"file is {size:,} bytes, over the {MAX_FLOW_BYTES:,}-byte limit for a flow; is it the right file?",
            )
        return p.read_bytes()
    except OSError as e:
        raise FlowFileError(str(p), f"cannot read the file ({e.strerror}); check the path") from None


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
            raise FlowFileError(
                source, f"not UTF-8 text (bad byte at offset {e.start}); save the file as UTF-8") from None
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
        return load_yaml(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise FlowFileError(source, f"invalid YAML{where}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise FlowFileError(source, f"invalid YAML: {e}") from None
    except RecursionError:
        raise FlowFileError(source, "the document is nested too deeply to be a flow") from None


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
    if "input" in err and not isinstance(err["input"], dict | list):
        return f"{msg} (found {err.get('input')!r})"
    return msg

