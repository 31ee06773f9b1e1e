"""Stored work replaced without asking: a file in the current folder named like a stored flow never
stands in for it silently; creates are atomic (see also test_hardening_names)."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import editing
from engine.errors import FlowNotFoundError, StoreError
from engine.formats import dump_flow
from engine.store import Store, load_flow


def test_a_file_named_like_a_stored_flow_is_refused_as_ambiguous(store: Store, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    stored = store.get_flow("travel")
    impostor = stored.model_copy(update={"description": "from the file in this folder"})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "travel").write_text(dump_flow(impostor, "yaml"))
    with pytest.raises(FlowNotFoundError, match=r"'travel' is both a stored flow and a file in this folder; "
                                                r"write ./travel for the file"):
        load_flow("travel", store)
    assert load_flow("./travel", store).description == "from the file in this folder"
    assert load_flow("travel@1", store).description == stored.description


def test_a_folder_named_like_a_flow_does_not_shadow_it(store: Store, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "travel").mkdir()  # e.g. a compile --out travel
    assert load_flow("travel", store) == store.get_flow("travel")


def test_a_bare_name_with_no_stored_flow_reads_the_file(store: Store, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").write_text(dump_flow(editing.new_flow("mine"), "json"))
    assert load_flow("mine", store).name == "mine"


def test_create_never_replaces(store: Store) -> None:
    store.create_flow(editing.new_flow("once"))
    with pytest.raises(StoreError, match="a flow named 'once' already exists"):
        store.create_flow(editing.new_flow("once").model_copy(update={"description": "other"}))
    with pytest.raises(StoreError, match="already exists"):
        store.duplicate_flow("travel", "once")
    with pytest.raises(StoreError, match="already exists"):
        store.rename_flow("travel", "once")
    assert store.flow_version("once") == 1 and store.get_flow("once").description == ""
