"""Form inputs derived from a pydantic config's fields (`engine.fields`): the same source as the CLI flags,
so a field's label, default, bounds, choices and help are written once, in the config."""

from __future__ import annotations

from typing import Any

from nicegui import ui
from pydantic import BaseModel

from engine.fields import FieldSpec, field_specs


class ConfigForm:
    """One input per field; `values()` gives them back as the config's keyword arguments."""

    def __init__(self, model: type[BaseModel], names: list[str] | tuple[str, ...],
                 defaults: dict[str, Any] | None = None, labels: dict[str, str] | None = None, marker: str = "field",
                 on_change: Any = None):
        self.specs = field_specs(model, names)
        self.inputs: dict[str, Any] = {}
        defaults, labels = defaults or {}, labels or {}
        for spec in self.specs:
            value = defaults.get(spec.name, spec.default)
            self.inputs[spec.name] = field_input(spec, value, labels.get(spec.name), on_change) \
                .mark(f"{marker}-{spec.name}")

    def values(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for spec in self.specs:
            v = self.inputs[spec.name].value
            if v in ("", None):
                if spec.optional or spec.default is None:
                    out[spec.name] = None
                continue
            if spec.kind == "int":
                v = int(v)
            elif spec.kind == "float":
                v = float(v)
            out[spec.name] = v
        return out

    def set(self, name: str, value: Any) -> None:
        self.inputs[name].value = value


def field_input(spec: FieldSpec, value: Any = None, label: str | None = None, on_change: Any = None) -> Any:
    """The input for one field, with the field's description as its tooltip."""
    text = label or spec.name.replace("_", " ").capitalize()
    if spec.kind == "bool":
        el: Any = ui.checkbox(text, value=bool(value), on_change=on_change)
    elif spec.kind == "choice":
        el = ui.select(spec.choices or [], label=text, value=value, on_change=on_change)
    elif spec.kind in ("int", "float"):
        lo = spec.minimum if spec.minimum is not None and not spec.minimum_open else None
        hi = spec.maximum if spec.maximum is not None and not spec.maximum_open else None
        el = ui.number(text, value=value, min=lo, max=hi, step=1 if spec.kind == "int" else None,
                       format="%d" if spec.kind == "int" else None, on_change=on_change)
        if spec.optional:
            el.props("clearable")
    else:
        el = ui.input(text, value=value or "", on_change=on_change)
    if spec.help:
        el.tooltip(spec.help)
    return el.classes("w-full")
