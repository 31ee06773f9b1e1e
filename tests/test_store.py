"""The store: a real SQLite file in a temp data dir (see conftest), versions, diff, restore, rename,
two processes writing at once, migrations and the seeding of sample flows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import engine.store as store_mod
from engine.diff import diff_flows
from engine.errors import FlowNotFoundError, StoreError, VersionConflictError
from engine.flow import Flow
from engine.formats import dump_flow, load_flow_file
from engine.store import Store, load_flow

ROOT = Path(__file__).resolve().parent.parent


def flow(name: str = "demo", prompt: str = "Greet the customer.") -> Flow:
    return Flow.model_validate({
        "name": name, "start": "a",
        "nodes": [{"id": "a", "role": "agent", "prompt": prompt},
                  {"id": "t", "role": "terminal", "outcome": "success"}],
        "edges": [{"source": "a", "target": "t"}],
    })


def test_database_lives_in_the_data_dir(store: Store, subterra_home: Path) -> None:
    assert store.path == subterra_home / "subterra.db" and store.path.exists()
    assert store.db.execute("pragma journal_mode").fetchone()[0] == "wal"
    assert {"flows", "flow_versions", "datasets", "conversations", "generation_failures", "jobs", "models",
            "evaluations", "meta", "_migrations"} <= set(store.db.table_names())


def test_every_save_is_a_version(store: Store) -> None:
    assert store.save_flow(flow(), message="first") == 1
    assert store.save_flow(flow()) == 1  # nothing changed: no new version
    assert store.save_flow(flow(prompt="Greet warmly."), message="warmer") == 2
    assert store.flow_version("demo") == 2
    assert [(v["version"], v["message"]) for v in store.versions("demo")] == [(2, "warmer"), (1, "first")]
    assert store.get_flow("demo").node("a").prompt == "Greet warmly."
    assert store.get_flow("demo", 1).node("a").prompt == "Greet the customer."
    [row] = [f for f in store.list_flows() if f["name"] == "demo"]
    assert (row["version"], row["nodes"]) == (2, 2)


def test_diff_two_versions(store: Store) -> None:
    store.save_flow(flow())
    doc = flow(prompt="Greet {name}.").model_dump()
    doc["nodes"].append(doc["nodes"][0] | {"id": "b", "prompt": "Ask."})
    doc["edges"][0] |= {"target": "b", "when": "always"}
    doc["variables"] = {"name": {"kind": "text", "pool": ["Ann"]}}
    store.save_flow(Flow.model_validate(doc))
    d = diff_flows(store.get_flow("demo", 1), store.get_flow("demo", 2))
    assert d.summary() == [
        "+ node b",
        "~ node a: prompt 'Greet the customer.' -> 'Greet {name}.'",
        "~ edge a->t: target 't' -> 'b'",
        "~ edge a->t: when None -> 'always'",
        "+ variable name",
    ]
    assert d.prompts_changed == ["a"] and not d.is_empty
    assert diff_flows(store.get_flow("demo", 2), store.get_flow("demo", 2)).is_empty


def test_diff_flow_settings_removals_and_moves() -> None:
    old = flow()
    doc = old.model_dump() | {"start": "t", "system_prompt": "Be brief.", "edges": []}
    doc["nodes"][0]["position"] = {"x": 3, "y": 4}
    new = Flow.model_validate(doc)
    d = diff_flows(old, new)
    assert d.summary() == ["~ start: 'a' -> 't'", "~ system_prompt: '' -> 'Be brief.'", "~ node a: moved",
                           "- edge a->t"]


def test_restore_makes_a_new_version(store: Store) -> None:
    store.save_flow(flow())
    store.save_flow(flow(prompt="v2"))
    assert store.restore_version("demo", 1) == 3
    assert store.get_flow("demo").node("a").prompt == "Greet the customer."
    assert store.versions("demo")[0]["message"] == "restored version 1"
    with pytest.raises(FlowNotFoundError, match="flow 'demo' has no version 9; `subterra flows history demo`"):
        store.get_flow("demo", 9)


def test_rename_keeps_history_and_restore_after_rename(store: Store) -> None:
    store.save_flow(flow())
    store.save_flow(flow(prompt="v2"))
    assert store.rename_flow("demo", "renamed") == 3
    assert not store.has_flow("demo")
    assert [v["version"] for v in store.versions("renamed")] == [3, 2, 1]
    assert store.get_flow("renamed", 1).name == "renamed"
    # regression: restoring a version saved before the rename must not resurrect the old name
    store.restore_version("renamed", 1)
    assert not store.has_flow("demo") and store.flow_version("renamed") == 4
    store.save_flow(flow("other"))
    with pytest.raises(StoreError, match="a flow named 'other' already exists; pick another name"):
        store.rename_flow("renamed", "other")


def test_duplicate_delete_and_not_found(store: Store) -> None:
    store.save_flow(flow())
    store.duplicate_flow("demo", "copy")
    assert store.get_flow("copy").name == "copy" and store.flow_version("copy") == 1
    store.delete_flow("demo")
    with pytest.raises(FlowNotFoundError, match="no stored flow named 'demo' and no such file; stored flows: copy"):
        store.get_flow("demo")


def test_version_conflict(store: Store) -> None:
    store.save_flow(flow())
    store.save_flow(flow(prompt="someone else"), expected_version=1)
    with pytest.raises(VersionConflictError) as info:
        store.save_flow(flow(prompt="mine"), expected_version=1)
    assert str(info.value) == ("flow 'demo' was saved elsewhere (now version 2, you edited version 1); reload it "
                               "to see the other change, or save yours as a copy")


def test_load_flow_resolves_files_names_and_versions(store: Store, tmp_path: Path) -> None:
    store.save_flow(flow())
    store.save_flow(flow(prompt="v2"))
    path = tmp_path / "f.json"
    path.write_text(dump_flow(flow("filed"), "json"))
    assert load_flow(str(path)).name == "filed"
    assert load_flow("demo").node("a").prompt == "v2"
    assert load_flow("demo@1").node("a").prompt == "Greet the customer."
    with pytest.raises(FlowNotFoundError):
        load_flow("missing")


def test_unusable_database_is_a_store_error(tmp_path: Path) -> None:
    bad = tmp_path / "junk.db"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="junk.db"):
        Store(bad)


# ----------------------------------------------------------------------------------------------
# two processes at once

WRITER = textwrap.dedent("""
    import sys
    from engine.flow import Flow
    from engine.store import Store
    who, n = sys.argv[1], int(sys.argv[2])
    st = Store(seed=False)
    job = st.create_job("test", name=who)
    for i in range(n):
        f = Flow.model_validate({"name": "shared", "description": f"{who}-{i}", "start": "a",
                                 "nodes": [{"id": "a", "role": "terminal"}]})
        st.save_flow(f, message=f"{who}-{i}")
        st.update_job(job, progress=(i + 1) / n, message=f"{who} {i}")
        st.save_flow(f.model_copy(update={"name": f"own-{who}"}), message=str(i))
    st.update_job(job, status="done")
""")


def test_two_processes_write_at_once(store: Store, subterra_home: Path) -> None:
    n = 40
    env = os.environ | {"SUBTERRA_HOME": str(subterra_home), "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, who, str(n)], env=env, stderr=subprocess.PIPE)
             for who in ("ui", "job")]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    st = Store()
    assert st.db.execute("pragma integrity_check").fetchone()[0] == "ok"
    versions = st.versions("shared")
    assert sorted(v["version"] for v in versions) == list(range(1, 2 * n + 1))  # no lost or duplicate version
    assert sorted(v["message"] for v in versions) == sorted(f"{w}-{i}" for w in ("ui", "job") for i in range(n))
    assert st.flow_version("own-ui") == st.flow_version("own-job") == n
    assert {j["status"] for j in st.list_jobs("test")} == {"done"}


# ----------------------------------------------------------------------------------------------
# migrations and seeding


def test_migrations_run_once_in_order(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    assert [r["name"] for r in store.db.query("select name from _migrations order by name")][0] == "001_initial"
    calls: list[str] = []

    def add_notes(db) -> None:  # type: ignore[no-untyped-def]
        calls.append("ran")
        db["flows"].add_column("notes", str)

    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, ("900_add_notes", add_notes)])
    Store()
    Store()
    assert calls == ["ran"]
    assert "900_add_notes" in {r["name"] for r in store.db.query("select name from _migrations")}
    assert "notes" in store.db["flows"].columns_dict


def test_a_migration_is_known_by_its_own_name_not_its_position(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Inserting a migration before the others renames none of them: nothing that already ran runs again."""
    before = {r["name"] for r in store.db.query("select name from _migrations")}
    ran: list[str] = []
    monkeypatch.setattr(store_mod, "MIGRATIONS",
                        [("000_early", lambda db: ran.append("early")), *store_mod.MIGRATIONS])
    Store()
    assert ran == ["early"]
    assert {r["name"] for r in store.db.query("select name from _migrations")} == before | {"000_early"}
    with pytest.raises(ValueError, match="used twice"):
        store_mod.migration("001_initial")(lambda db: None)


def test_seeding_stores_each_sample_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    samples = tmp_path / "samples"
    samples.mkdir()
    (samples / "one.yaml").write_text(dump_flow(flow("one"), "yaml"))
    (samples / "two.yaml").write_text(dump_flow(flow("two"), "yaml"))
    monkeypatch.setattr(store_mod, "SAMPLE_FLOWS_DIR", samples)
    st = Store()
    assert {f["name"] for f in st.list_flows()} == {"one", "two"}
    assert st.versions("one")[0]["message"] == "sample flow"
    st.delete_flow("one")
    Store()  # a deleted sample is not brought back
    assert {f["name"] for f in Store().list_flows()} == {"two"}


def test_real_sample_flows_are_seeded(store: Store) -> None:
    paths = sorted((ROOT / "sample_flows").glob("*.yaml"))
    if not paths:
        pytest.skip("sample_flows/*.yaml not written yet")
    names = {load_flow_file(p).name for p in paths}
    assert names <= {f["name"] for f in store.list_flows()}


def test_jobs_progress(store: Store) -> None:
    job = store.create_job("generate", {"n": 3}, name="d1")
    store.update_job(job, progress=0.5, result={"ok": 1})
    row = store.get_job(job)
    assert (row["status"], row["progress"], json.loads(row["result"])) == ("running", 0.5, {"ok": 1})
