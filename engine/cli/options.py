"""Click options derived from a pydantic config's fields (`engine.fields`): one source for every option.

    @options_from(TrainConfig, "epochs", "lr", flags={"lr": "--lr"}, choices={"backend": backend_names})

gives `--epochs` with the field's bound, default and description as help. The command receives the
values under the fields' names; `config_values(kwargs, TrainConfig)` picks those that belong to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import click
from pydantic import BaseModel

from engine.fields import FieldSpec, field_spec

_SCALARS: dict[str, Any] = {"int": int, "float": float, "str": str}


def options_from(model: type[BaseModel], *names: str, flags: dict[str, str] | None = None,
                 choices: dict[str, Callable[[], Iterable[str]]] | None = None,
                 defaults: dict[str, Any] | None = None, helps: dict[str, str] | None = None,
                 bounds: bool = True) -> Callable[[Any], Any]:
    """A decorator adding one option per field in `names` (in that order in `--help`).

    `bounds=False` leaves the fields' bounds to the pydantic model, whose error then names the flag.
    """
    flags, choices, defaults, helps = flags or {}, choices or {}, defaults or {}, helps or {}

    def decorate(fn: Any) -> Any:
        for name in reversed(names):
            spec = field_spec(model, name)
            if name in defaults:
                spec = spec.model_copy(update={"default": defaults[name], "required": False})
            if name in helps:
                spec = spec.model_copy(update={"help": helps[name]})
            if not bounds:
                spec = spec.model_copy(update={"minimum": None, "maximum": None})
            extra = list(choices[name]()) if name in choices else None
            fn = click_option(spec, flags.get(name), extra)(fn)
        return fn

    return decorate


def click_option(spec: FieldSpec, flag: str | None = None, choices: list[str] | None = None) -> Any:
    flag = flag or "--" + spec.name.replace("_", "-")
    kw: dict[str, Any] = {"help": spec.help, "show_default": spec.default is not None and spec.default != []}
    if spec.kind == "bool":
        return click.option(f"{flag}/--no-{flag[2:]}", spec.name, default=bool(spec.default), **kw)
    if spec.kind == "list":
        return click.option(flag, spec.name, multiple=True, type=_SCALARS[spec.item_kind or "str"],
                            default=spec.default or (), **kw)
    if choices is not None or spec.kind == "choice":
        typ: Any = click.Choice(choices if choices is not None else spec.choices or [])
    elif spec.kind in ("int", "float") and (spec.minimum is not None or spec.maximum is not None):
        cast: Any = int if spec.kind == "int" else float
        lo, hi = (None if b is None else cast(b) for b in (spec.minimum, spec.maximum))
        rng = click.IntRange if spec.kind == "int" else click.FloatRange
        typ = rng(min=lo, max=hi, min_open=spec.minimum_open, max_open=spec.maximum_open)
    else:
        typ = _SCALARS[spec.kind if spec.kind in _SCALARS else "str"]
    return click.option(flag, spec.name, type=typ, default=spec.default, required=spec.required, **kw)


def config_values(values: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    """The entries of a command's keyword arguments that are fields of `model` (lists as lists)."""
    fields = model.model_fields
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items() if k in fields}
