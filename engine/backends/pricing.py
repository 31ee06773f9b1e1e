"""What LLM calls cost: a price table per model, in USD per million tokens.

The built-in table holds the providers' published list prices as of PRICES_TAKEN (written from
their public price pages, not re-checked since: this machine has no internet). Prices change,
so a JSON file `prices.json` in the data dir overrides or extends it:

    {"my-model": {"input": 1.0, "output": 2.0, "cache_read": 0.1, "cache_write": 1.25}}

Lookup is by exact name, then by the longest known prefix (so dated snapshots such as
`claude-sonnet-4-5-20250929` find `claude-sonnet-4-5`). Local and scripted models cost 0.
An unknown model costs 0 and is flagged (`Cost.known is False`) so callers can warn.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.backends.base import Usage, is_local_backend
from engine.errors import StoreError

PRICES_TAKEN = "2025-11"
PRICES_FILE = "prices.json"


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: float = Field(ge=0, description="USD per million uncached input tokens.")
    output: float = Field(ge=0, description="USD per million output tokens.")
    cache_read: float | None = Field(None, ge=0, description="USD per million cache-read tokens (default: input).")
    cache_write: float | None = Field(None, ge=0, description="USD per million cache-write tokens (default: input).")


class Cost(BaseModel):
    model_config = ConfigDict(extra="forbid")
    usd: float = Field(description="Total cost in US dollars.")
    known: bool = Field(description="False when the model has no price (the cost is then 0).")


# USD per million tokens. Anthropic: cache write = 1.25x input (5-minute TTL), cache read = 0.1x input.
BUILTIN_PRICES: dict[str, Price] = {
    "claude-opus-4-5": Price(input=5.0, output=25.0, cache_read=0.5, cache_write=6.25),
    "claude-opus-4-1": Price(input=15.0, output=75.0, cache_read=1.5, cache_write=18.75),
    "claude-opus-4": Price(input=15.0, output=75.0, cache_read=1.5, cache_write=18.75),
    "claude-sonnet-4-5": Price(input=3.0, output=15.0, cache_read=0.3, cache_write=3.75),
    "claude-sonnet-4": Price(input=3.0, output=15.0, cache_read=0.3, cache_write=3.75),
    "claude-3-7-sonnet": Price(input=3.0, output=15.0, cache_read=0.3, cache_write=3.75),
    "claude-haiku-4-5": Price(input=1.0, output=5.0, cache_read=0.1, cache_write=1.25),
    "claude-3-5-haiku": Price(input=0.8, output=4.0, cache_read=0.08, cache_write=1.0),
    "gpt-5": Price(input=1.25, output=10.0, cache_read=0.125),
    "gpt-5-mini": Price(input=0.25, output=2.0, cache_read=0.025),
    "gpt-5-nano": Price(input=0.05, output=0.4, cache_read=0.005),
    "gpt-4.1": Price(input=2.0, output=8.0, cache_read=0.5),
    "gpt-4.1-mini": Price(input=0.4, output=1.6, cache_read=0.1),
    "gpt-4o": Price(input=2.5, output=10.0, cache_read=1.25),
    "gpt-4o-mini": Price(input=0.15, output=0.6, cache_read=0.075),
}



def prices() -> dict[str, Price]:
    """The built-in table overlaid with the data dir's `prices.json` (re-read when it changes)."""
    from engine.store import data_dir

    path = data_dir() / PRICES_FILE
    mtime = path.stat().st_mtime if path.exists() else None
    return dict(BUILTIN_PRICES) | _overrides(str(path), mtime)


def price_for(model: str) -> Price | None:
    table = prices()
    if model in table:
        return table[model]
    matches = [k for k in table if model.startswith(k)]
    return table[max(matches, key=len)] if matches else None


def cost(usage: Usage, model: str, backend: str = "") -> Cost:
    """The cost of `usage` tokens on `model`; free for local and scripted backends."""
    if is_local_backend(backend) or is_local_backend(model):
        return Cost(usd=0.0, known=True)
    p = price_for(model)
    if p is None:
        return Cost(usd=0.0, known=False)
    usd = (
        usage.input_tokens * p.input
        + usage.output_tokens * p.output
        + usage.cache_read_tokens * (p.input if p.cache_read is None else p.cache_read)
        + usage.cache_write_tokens * (p.input if p.cache_write is None else p.cache_write)
    ) / 1_000_000
    return Cost(usd=usd, known=True)


def cost_usd(usage: Usage, model: str, backend: str = "") -> float:
    """Shorthand for `cost(...).usd`; an unknown model counts as 0 (check `cost(...).known` to warn)."""
    return cost(usage, model, backend).usd


@lru_cache(maxsize=4)
def _overrides(path: str, mtime: float | None) -> dict[str, Price]:
    if mtime is None:
        return {}
    try:
        raw = json.loads(Path(path).read_text())
        if not isinstance(raw, dict):
            raise ValueError("the top level must be an object of model name -> prices")
        return {str(k): Price.model_validate(v) for k, v in raw.items()}
    except (OSError, ValueError, ValidationError) as e:
        raise StoreError(
            f"{path}: cannot read the price overrides ({str(e).splitlines()[0]}); fix it or delete it. "
            'Format: {"model": {"input": USD_per_Mtok, "output": ..., "cache_read": ..., "cache_write": ...}}'
        ) from None
