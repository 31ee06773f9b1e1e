"""The model registry: compiled (and imported) models in the store's `models` table.

A row names a model directory and carries its provenance (`subterra.json`) in `meta`, so
`subterra models` can show where a model came from without opening its directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engine.errors import TrainingError


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Unique registry name (used by `subterra agents`/`evaluate` to pick the model).")
    path: str = Field(description="The Hugging Face model directory.")
    base: str | None = Field(None, description="Base model it was compiled from.")
    flow: str | None = Field(None, description="Flow name it was compiled for.")
    flow_version: int | None = Field(None, description="Flow version of the training data.")
    dataset: str | None = Field(None, description="Dataset name or data files.")
    created: float = Field(description="Registration time (unix seconds).")
    meta: dict[str, Any] = Field(default_factory=dict, description="The model's provenance (`subterra.json`).")

    @property
    def best_eval_loss(self) -> float | None:
        return self.meta.get("best_eval_loss")


def register_model(name: str, path: str | Path, provenance: dict[str, Any] | None = None,
                   store: Any = None) -> ModelEntry:
    """Add or replace `name` (a re-compile into the same name replaces the entry, not the old files)."""
    from engine.store import Store, now

    path = Path(path).resolve()
    if not (path / "config.json").is_file():
        raise TrainingError(f"{path} is not a model directory (no config.json); point at a compiled model")
    prov = provenance if provenance is not None else _read_provenance(path)
    dataset = prov.get("dataset")
    entry = ModelEntry(name=name, path=str(path), base=prov.get("base"), flow=prov.get("flow"),
                       flow_version=prov.get("flow_version"),
                       dataset=dataset if isinstance(dataset, str | None) else ",".join(dataset), created=now(),
                       meta=prov)
    (store or Store(seed=False)).put_model(entry.model_dump())
    return entry


def list_models(store: Any = None) -> list[ModelEntry]:
    from engine.store import Store

    st = store or Store(seed=False)
    return [_entry(r) for r in st.model_rows()]


def get_model(name: str, store: Any = None) -> ModelEntry:
    from engine.store import Store

    st = store or Store(seed=False)
    rows = st.model_rows(name)
    if not rows:
        known = ", ".join(m.name for m in list_models(st)) or "none"
        raise TrainingError(f"no model named '{name}' in the registry (known: {known}); `subterra models` lists them")
    return _entry(rows[0])


def _entry(row: dict[str, Any]) -> ModelEntry:
    row = dict(row)
    row.pop("id", None)
    return ModelEntry(**row)


def _read_provenance(path: Path) -> dict[str, Any]:
    f = path / "subterra.json"
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except ValueError:
        raise TrainingError(
            f"{f} is not valid JSON; restore it or delete it to register the model without provenance") from None
