"""Scenario sampling: the values of a flow's variables for one conversation.

Scenarios are what make two conversations along the same path differ (a name, a destination,
an amount); templates in node prompts and examples refer to them as `{variable}`.
"""

from __future__ import annotations

import math
import random
from typing import Any

from engine.flow import ChoiceVariable, Flow, RangeVariable, TextVariable

PERSONA_VARIABLES = ("user_style", "satisfaction", "challenge")
"""Variables that describe the simulated customer rather than the case (read by simulators and the judge)."""


def sample_scenario(flow: Flow, rng: random.Random) -> dict[str, Any]:
    """One value per variable, drawn with `rng` (in the order the variables are declared)."""
    out: dict[str, Any] = {}
    for name, var in flow.variables.items():
        out[name] = sample_value(var, rng)
    return out


def fit_to_path(flow: Flow, path: list[str], scenario: dict[str, Any]) -> dict[str, Any]:
    """The scenario with each choice variable named like a decision hub on the path set to the value the
    path's branch there names (hub `claim_type` -> `auto_ask_incident` gives claim_type = auto), so the
    scenario agrees with the path. Variables whose branch names none of their values keep theirs."""
    out = dict(scenario)
    for k, nid in enumerate(path[:-1]):
        var = flow.variables.get(nid)
        if not isinstance(var, ChoiceVariable) or flow.node_map.get(nid) is None or flow.node(nid).role != "decision":
            continue
        target = path[k + 1].lower()
        label = flow.node(path[k + 1]).label.lower() if path[k + 1] in flow.node_map else ""
        for value in var.values:
            v = str(value).lower()
            if v and (target.startswith(v) or v in target.split("_") or v in label.split()):
                out[nid] = value
                break
    return out


def sample_value(var: ChoiceVariable | RangeVariable | TextVariable, rng: random.Random) -> Any:
    if isinstance(var, ChoiceVariable):
        return rng.choices(var.values, weights=var.weights)[0]
    if isinstance(var, RangeVariable):
        lo, hi = math.ceil(var.min), math.floor(var.max)
        if var.integer and lo <= hi:
            return rng.randint(lo, hi)
        return round(rng.uniform(var.min, var.max), 2)
    return rng.choice(var.pool)
