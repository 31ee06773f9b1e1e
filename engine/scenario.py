"""Scenario sampling: the values of a flow's variables for one conversation.

Scenarios are what make two conversations along the same path differ (a name, a destination,
an amount); templates in node prompts and examples refer to them as `{variable}`.
"""

from __future__ import annotations

import math
import random
from typing import Any

from engine.flow import ChoiceVariable, Flow, RangeVariable, TextVariable


def sample_scenario(flow: Flow, rng: random.Random) -> dict[str, Any]:
    """One value per variable, drawn with `rng` (in the order the variables are declared)."""
    out: dict[str, Any] = {}
    for name, var in flow.variables.items():
        out[name] = sample_value(var, rng)
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
