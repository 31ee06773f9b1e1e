"""The store: one SQLite file (via sqlite-utils) in the data dir.

Flows keep their full version history (every save is a version). Datasets, conversations,
jobs, models and evaluations have tables of their own. The schema changes only through the
numbered migrations at the bottom of this file; a `_migrations` table records what has run.
WAL mode lets the studio and a background job write at the same time.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlite_utils
from platformdirs import user_data_dir

from engine.errors import FlowNotFoundError, StoreError, VersionConflictError
from engine.flow import Flow

SAMPLE_FLOWS_DIR = Path(__file__).resolve().parent.parent / "sample_flows"


def data_dir() -> Path:
    """`SUBTERRA_HOME`, or the per-user data folder; created on first use."""
    home = os.environ.get("SUBTERRA_HOME") or user_data_dir("subterra", appauthor=False)
    path = Path(home).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the data dir {path} ({e.strerror}); set SUBTERRA_HOME to a writable folder") from None
    return path


def now() -> float:
    return time.time()


class Store:
    """Typed access to the database. Cheap to open; open one per thread or process."""

    def __init__(self, path: str | Path | None = None, seed: bool = True):
        self.path = Path(path) if path else data_dir() / "subterra.db"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as e:
            raise StoreError(f"cannot open the database {self.path} ({e}); move it aside or set SUBTERRA_HOME") from None
        self.db = sqlite_utils.Database(conn)
        migrate(self.db)
        if seed:
            self.seed_samples()

    # -- transactions ----------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite_utils.Database]:
        """BEGIN IMMEDIATE ... COMMIT: all-or-nothing writes that serialize with other writers."""
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    # -- flows ---------------------------------------------------------------------------------
    def list_flows(self) -> list[dict[str, Any]]:
        """Every stored flow: name, head version, node count, updated time."""
        rows = self.db.query(
            "select f.name, f.head_version, f.updated, f.created, v.data from flows f "
            "join flow_versions v on v.flow_id = f.id and v.version = f.head_version order by f.name"
        )
        out = []
        for r in rows:
            data = json.loads(r["data"])
            out.append({"name": r["name"], "version": r["head_version"], "updated": r["updated"], "created": r["created"],
                        "nodes": len(data.get("nodes", [])), "description": data.get("description", "")})
        return out

    def has_flow(self, name: str) -> bool:
        return bool(list(self.db.query("select 1 from flows where name = ?", [name])))

    def get_flow(self, name: str, version: int | None = None) -> Flow:
        row = self._flow_row(name)
        v = version or row["head_version"]
        vr = list(self.db.query("select data from flow_versions where flow_id = ? and version = ?", [row["id"], v]))
        if not vr:
            raise FlowNotFoundError(f"flow '{name}' has no version {v}; `subterra flows history {name}` lists its versions")
        flow = Flow.model_validate_json(vr[0]["data"])
        # versions saved before a rename carry the old name; the flow is known by its current one
        return flow if flow.name == row["name"] else flow.model_copy(update={"name": row["name"]})

    def flow_version(self, name: str) -> int:
        return int(self._flow_row(name)["head_version"])

    def save_flow(self, flow: Flow, message: str = "", expected_version: int | None = None) -> int:
        """Save a new version (a no-op returning the head when nothing changed). Returns the version.

        With `expected_version`, refuse (VersionConflictError) when someone else saved since.
        """
        data = json.dumps(flow.model_dump(mode="json"), sort_keys=True)
        digest = hashlib.sha256(data.encode()).hexdigest()
        t = now()
        with self.transaction() as db:
            rows = list(db.query("select id, head_version from flows where name = ?", [flow.name]))
            if rows:
                fid, head = rows[0]["id"], rows[0]["head_version"]
                if expected_version is not None and expected_version != head:
                    raise VersionConflictError(flow.name, expected_version, head)
                cur = list(db.query("select hash from flow_versions where flow_id = ? and version = ?", [fid, head]))
                if cur and cur[0]["hash"] == digest:
                    return int(head)
                version = head + 1
                db.table("flows").update(fid, {"head_version": version, "updated": t})
            else:
                if expected_version not in (None, 0):
                    raise VersionConflictError(flow.name, expected_version, 0)
                fid = db.table("flows").insert({"name": flow.name, "head_version": 1, "created": t, "updated": t}).last_pk
                version = 1
            db.table("flow_versions").insert(
                {"flow_id": fid, "version": version, "created": t, "message": message, "hash": digest, "data": data}
            )
        return version

    def versions(self, name: str) -> list[dict[str, Any]]:
        row = self._flow_row(name)
        return list(self.db.query(
            "select version, created, message, hash from flow_versions where flow_id = ? order by version desc", [row["id"]]
        ))

    def restore_version(self, name: str, version: int) -> int:
        """Make an old version the head again, as a new version (history is never rewritten)."""
        old = self.get_flow(name, version)
        return self.save_flow(old, message=f"restored version {version}")

    def delete_flow(self, name: str) -> None:
        row = self._flow_row(name)
        with self.transaction() as db:
            db.execute("delete from flow_versions where flow_id = ?", [row["id"]])
            db.execute("delete from flows where id = ?", [row["id"]])

    def rename_flow(self, old: str, new: str) -> int:
        """Rename (the history moves along); records the rename as a new version."""
        if self.has_flow(new):
            raise StoreError(f"a flow named '{new}' already exists; pick another name")
        flow = self.get_flow(old)
        row = self._flow_row(old)
        with self.transaction() as db:
            db.table("flows").update(row["id"], {"name": new})
        renamed = flow.model_copy(update={"name": new})
        return self.save_flow(renamed, message=f"renamed from {old}")

    def duplicate_flow(self, name: str, new: str) -> int:
        if self.has_flow(new):
            raise StoreError(f"a flow named '{new}' already exists; pick another name")
        return self.save_flow(self.get_flow(name).model_copy(update={"name": new}), message=f"copied from {name}")

    def _flow_row(self, name: str) -> dict[str, Any]:
        rows = list(self.db.query("select id, name, head_version from flows where name = ?", [name]))
        if not rows:
            raise FlowNotFoundError(f"no stored flow named '{name}' and no such file; stored flows: "
                                    + (", ".join(f["name"] for f in self.list_flows()) or "none"))
        return rows[0]

    # -- sample flows ----------------------------------------------------------------------------
    def seed_samples(self) -> None:
        """Store the bundled sample flows once (a deleted sample is not brought back)."""
        if self.get_meta("samples_seeded") or not SAMPLE_FLOWS_DIR.is_dir():
            return
        from engine.formats import load_flow_file

        for path in sorted(SAMPLE_FLOWS_DIR.glob("*.yaml")):
            flow = load_flow_file(path)
            if not self.has_flow(flow.name):
                self.save_flow(flow, message="sample flow")
        self.set_meta("samples_seeded", "1")

    def get_meta(self, key: str) -> str | None:
        rows = list(self.db.query("select value from meta where key = ?", [key]))
        return rows[0]["value"] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self.db.table("meta").upsert({"key": key, "value": value}, pk="key")

    # -- jobs (progress for the UI) ------------------------------------------------------------
    def create_job(self, kind: str, config: dict[str, Any] | None = None, name: str = "") -> int:
        t = now()
        row = self.db.table("jobs").insert({
            "kind": kind, "name": name, "status": "running", "progress": 0.0, "message": "",
            "config": json.dumps(config or {}), "result": None, "pid": os.getpid(), "created": t, "updated": t,
        })
        return int(row.last_pk)  # type: ignore[arg-type]  # an integer rowid after an insert

    def update_job(self, job_id: int, **fields: Any) -> None:
        for k in ("config", "result", "events"):
            if k in fields and not isinstance(fields[k], str | None):
                fields[k] = json.dumps(fields[k])
        fields["updated"] = now()
        self.db.table("jobs").update(job_id, fields)

    def get_job(self, job_id: int) -> dict[str, Any]:
        return dict(self.db.table("jobs").get(job_id))

    def list_jobs(self, kind: str | None = None) -> list[dict[str, Any]]:
        where, args = ("where kind = ?", [kind]) if kind else ("", [])
        return list(self.db.query(f"select * from jobs {where} order by id desc", args))


# ----------------------------------------------------------------------------------------------
# migrations: append only; never edit one that has shipped

Migration = Callable[[sqlite_utils.Database], None]
MIGRATIONS: list[Migration] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append(fn)
    return fn


def migrate(db: sqlite_utils.Database) -> None:
    db.execute("create table if not exists _migrations (name text primary key, applied real)")
    done = {r["name"] for r in db.query("select name from _migrations")}
    for i, fn in enumerate(MIGRATIONS, start=1):
        name = f"{i:03d}_{fn.__name__}"
        if name in done:
            continue
        conn = db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            # another process may have run it while we waited for the lock
            if not list(db.query("select 1 from _migrations where name = ?", [name])):
                fn(db)
                db.execute("insert into _migrations (name, applied) values (?, ?)", [name, now()])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


@migration
def initial(db: sqlite_utils.Database) -> None:
    db.table("meta").create({"key": str, "value": str}, pk="key")
    db.table("flows").create({"id": int, "name": str, "head_version": int, "created": float, "updated": float}, pk="id")
    db.table("flows").create_index(["name"], unique=True)
    db.table("flow_versions").create(
        {"id": int, "flow_id": int, "version": int, "created": float, "message": str, "hash": str, "data": str},
        pk="id", foreign_keys=[("flow_id", "flows", "id")],
    )
    db.table("flow_versions").create_index(["flow_id", "version"], unique=True)
    db.table("datasets").create(
        {"id": int, "name": str, "flow": str, "flow_version": int, "created": float, "updated": float,
         "target": int, "config": str, "provenance": str},
        pk="id",
    )
    db.table("datasets").create_index(["name"], unique=True)
    # one row per finished conversation; (dataset_id, slot) is unique so resumed runs never duplicate
    db.table("conversations").create(
        {"id": int, "dataset_id": int, "slot": int, "split": str, "messages": str, "meta": str, "created": float},
        pk="id", foreign_keys=[("dataset_id", "datasets", "id")],
    )
    db.table("conversations").create_index(["dataset_id", "slot"], unique=True)
    db.table("generation_failures").create(
        {"id": int, "dataset_id": int, "slot": int, "attempt": int, "reason": str, "created": float}, pk="id"
    )
    db.table("jobs").create(
        {"id": int, "kind": str, "name": str, "status": str, "progress": float, "message": str, "config": str,
         "result": str, "events": str, "pid": int, "created": float, "updated": float},
        pk="id",
    )
    db.table("models").create(
        {"id": int, "name": str, "path": str, "base": str, "flow": str, "flow_version": int, "dataset": str,
         "created": float, "meta": str},
        pk="id",
    )
    db.table("models").create_index(["name"], unique=True)
    db.table("evaluations").create(
        {"id": int, "name": str, "flow": str, "flow_version": int, "created": float, "config": str, "report": str,
         "path": str},
        pk="id",
    )


def load_flow(ref: str, store: Store | None = None) -> Flow:
    """FLOW on the command line: a file path, `name` of a stored flow, or `name@version`."""
    from engine.formats import load_flow_file

    p = Path(ref)
    if p.suffix.lower() in (".json", ".yaml", ".yml") or p.exists():
        return load_flow_file(p)
    name, _, ver = ref.partition("@")
    st = store or Store()
    return st.get_flow(name, int(ver) if ver.isdigit() else None)


@migration
def dataset_runs(db: sqlite_utils.Database) -> None:
    # Which slots of a dataset each generation seed owns: several seeds concatenate into one
    # dataset, and re-running a seed resumes its own slots. A seed asked for more conversations
    # later gets another segment at the end, so slot numbers never collide.
    db.table("dataset_runs").create(
        {"id": int, "dataset_id": int, "seed": int, "slot_base": int, "n": int, "created": float},
        pk="id", foreign_keys=[("dataset_id", "datasets", "id")],
    )
    db.table("dataset_runs").create_index(["dataset_id", "seed"])
