"""The fields of a pydantic config, read once for every front end (CLI flags, studio forms).

A config's `Field(description=..., ge=..., lt=...)` is the single source of an option's default,
bounds, choices and help: `engine.cli.options` turns a `FieldSpec` into a click option and the
studio turns it into a form input, so a new field appears everywhere at once.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

import annotated_types as at
from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticUndefined


class FieldSpec(BaseModel):
    """One option: what it is, its default, and what values it accepts."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The config field's name.")
    kind: Literal["int", "float", "str", "bool", "choice", "list"] = Field(description="Value kind.")
    item_kind: Literal["int", "float", "str"] | None = Field(None, description="For lists: the items' kind.")
    help: str = Field("", description="The field's description.")
    default: Any = Field(None, description="The default (None when it has none or it is None).")
    required: bool = Field(False, description="No default: the user must give it.")
    optional: bool = Field(False, description="None is an allowed value.")
    choices: list[str] | None = Field(None, description="Allowed values of a choice.")
    minimum: float | None = Field(None, description="Lower bound.")
    minimum_open: bool = Field(False, description="The lower bound itself is excluded.")
    maximum: float | None = Field(None, description="Upper bound.")
    maximum_open: bool = Field(False, description="The upper bound itself is excluded.")


def field_specs(model: type[BaseModel], names: typing.Iterable[str] | None = None) -> list[FieldSpec]:
    """Specs of `model`'s fields (all of them, or `names` in that order)."""
    fields = model.model_fields
    return [field_spec(model, n) for n in (names if names is not None else fields)]


def field_spec(model: type[BaseModel], name: str) -> FieldSpec:
    info = model.model_fields[name]
    ann, optional = _unwrap_optional(info.annotation)
    spec: dict[str, Any] = {"name": name, "help": info.description or "", "optional": optional}
    if info.default is not PydanticUndefined:
        spec["default"] = info.default
    elif info.default_factory is not None:
        spec["default"] = info.default_factory()  # type: ignore[call-arg]
    else:
        spec["required"] = True
    origin = typing.get_origin(ann)
    if origin is Literal:
        spec.update(kind="choice", choices=[str(a) for a in typing.get_args(ann)])
    elif origin in (list, tuple):
        spec.update(kind="list", item_kind=_scalar(typing.get_args(ann)[0]))
    elif ann is bool:
        spec["kind"] = "bool"
    else:
        spec["kind"] = _scalar(ann)
    for m in info.metadata:
        if isinstance(m, at.Ge):
            spec.update(minimum=m.ge)
        elif isinstance(m, at.Gt):
            spec.update(minimum=m.gt, minimum_open=True)
        elif isinstance(m, at.Le):
            spec.update(maximum=m.le)
        elif isinstance(m, at.Lt):
            spec.update(maximum=m.lt, maximum_open=True)
    return FieldSpec(**spec)


def _unwrap_optional(ann: Any) -> tuple[Any, bool]:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(typing.get_args(ann))
    return ann, False


def _scalar(ann: Any) -> Literal["int", "float", "str"]:
    if ann is int:
        return "int"
    if ann is float:
        return "float"
    return "str"
