"""The store: one SQLite file (via sqlite-utils) in the data dir.

Flows keep their full version history (every save is a version). Datasets, conversations,
jobs, models and evaluations have tables of their own. The schema changes only through the
named migrations at the bottom of this file; a `_migrations` table records what has run.
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
from engine.flow import Flow, name_problem
from engine.provenance import REPO_ROOT

SAMPLE_FLOWS_DIR = REPO_ROOT / "sample_flows"


def data_dir() -> Path:
    """`SUBTERRA_HOME`, or the per-user data folder; created on first use."""
    home = os.environ.get("SUBTERRA_HOME") or user_data_dir("subterra", appauthor=False)
    path = Path(home).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(
            f"cannot create the data dir {path} ({e.strerror}); set SUBTERRA_HOME to a writable folder") from None
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
            raise StoreError(
                f"cannot open the database {self.path} ({e}); move it aside or set SUBTERRA_HOME") from None
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
            out.append({"name": r["name"], "version": r["head_version"], "updated": r["updated"],
                        "created": r["created"],
                        "nodes": len(data.get("nodes", [])), "description": data.get("description", "")})
        return out

    def has_flow(self, name: str) -> bool:
        return bool(list(self.db.query("select 1 from flows where name = ?", [name])))

    def get_flow(self, name: str, version: int | None = None) -> Flow:
        row = self._flow_row(name)
        v = version or row["head_version"]
        vr = list(self.db.query("select data from flow_versions where flow_id = ? and version = ?", [row["id"], v]))
        if not vr:
            raise FlowNotFoundError(
                f"flow '{name}' has no version {v}; `subterra flows history {name}` lists its versions")
        flow = Flow.model_validate_json(vr[0]["data"])
        # versions saved before a rename carry the old name; the flow is known by its current one
        return flow if flow.name == row["name"] else flow.model_copy(update={"name": row["name"]})

    def flow_version(self, name: str) -> int:
        return int(self._flow_row(name)["head_version"])

    def save_flow(self, flow: Flow, message: str = "", expected_version: int | None = None,
                  _db: sqlite_utils.Database | None = None) -> int:
        """Save a new version (a no-op returning the head when nothing changed). Returns the version.

        With `expected_version`, refuse (VersionConflictError) when someone else saved since.
        """
        data = json.dumps(flow.model_dump(mode="json"), sort_keys=True)
        digest = hashlib.sha256(data.encode()).hexdigest()
        t = now()
        with (_nullcontext(_db) if _db is not None else self.transaction()) as db:
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
                check_name(flow.name, "flow")  # a new name enters the store (older flows keep theirs)
                fid = db.table("flows").insert(
                    {"name": flow.name, "head_version": 1, "created": t, "updated": t}).last_pk
                version = 1
            db.table("flow_versions").insert(
                {"flow_id": fid, "version": version, "created": t, "message": message, "hash": digest, "data": data}
            )
        return version

    def versions(self, name: str) -> list[dict[str, Any]]:
        row = self._flow_row(name)
        return list(self.db.query(
            "select version, created, message, hash from flow_versions where flow_id = ? order by version desc",
            [row["id"]],
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

    def create_flow(self, flow: Flow, message: str = "") -> int:
        """Store a flow under a name no stored flow has (atomic: of two concurrent creators, one wins)."""
        check_name(flow.name, "flow")
        with self.transaction() as db:
            if list(db.query("select 1 from flows where name = ?", [flow.name])):
                raise StoreError(f"a flow named '{flow.name}' already exists; pick another name")
            return self.save_flow(flow, message=message, expected_version=0, _db=db)

    def rename_flow(self, old: str, new: str) -> int:
        """Rename (the history moves along); records the rename as a new version."""
        check_name(new, "flow")
        flow = self.get_flow(old)
        with self.transaction() as db:  # the check and the rename in one write: nobody takes `new` in between
            if list(db.query("select 1 from flows where name = ?", [new])):
                raise StoreError(f"a flow named '{new}' already exists; pick another name")
            row = self._flow_row(old)
            db.table("flows").update(row["id"], {"name": new})
            return self.save_flow(flow.model_copy(update={"name": new}), message=f"renamed from {old}", _db=db)

    def duplicate_flow(self, name: str, new: str) -> int:
        return self.create_flow(self.get_flow(name).model_copy(update={"name": new}), message=f"copied from {name}")

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

    # -- datasets and their conversations -------------------------------------------------------
    def dataset_summaries(self) -> list[dict[str, Any]]:
        """Every dataset: id, name, flow, flow_version, target, conversations per split, created/updated."""
        rows = self.db.query(
            "select d.id, d.name, d.flow, d.flow_version, d.target, d.created, d.updated, "
            "sum(c.split = 'train') as train, sum(c.split = 'eval') as eval, count(c.id) as conversations "
            "from datasets d left join conversations c on c.dataset_id = d.id group by d.id order by d.name"
        )
        return [dict(r, train=r["train"] or 0, eval=r["eval"] or 0) for r in rows]

    def dataset_names(self) -> list[str]:
        return [r["name"] for r in self.db.query("select name from datasets order by name")]

    def dataset_row(self, name: str) -> dict[str, Any] | None:
        """The dataset's row (id, flow, flow_version, config, provenance, ...), or None."""
        rows = list(self.db.query("select * from datasets where name = ?", [name]))
        return dict(rows[0]) if rows else None

    def create_dataset(self, name: str, flow: str, flow_version: int, config: dict[str, Any],
                       provenance: dict[str, Any]) -> int:
        """The id of dataset `name`, created atomically when absent (a concurrent creator wins, once)."""
        check_name(name, "dataset")
        t = now()
        with self.transaction() as db:
            again = list(db.query("select id from datasets where name = ?", [name]))
            if again:
                return int(again[0]["id"])
            return int(db.table("datasets").insert({  # type: ignore[arg-type]
                "name": name, "flow": flow, "flow_version": flow_version, "created": t, "updated": t, "target": 0,
                "config": json.dumps(config), "provenance": json.dumps(provenance),
            }).last_pk)

    def touch_dataset(self, dataset_id: int) -> None:
        self.db.table("datasets").update(dataset_id, {"updated": now()})

    def claim_slots(self, dataset_id: int, seed: int, n: int) -> list[int]:
        """The first `n` slot numbers owned by `seed` in the dataset, claiming a new segment at the end when
        the seed owns fewer (in one transaction, so concurrent runs never collide); updates the target."""
        with self.transaction() as db:
            segs = list(db.query("select slot_base, n from dataset_runs where dataset_id = ? and seed = ? order by id",
                                 [dataset_id, seed]))
            have = sum(s["n"] for s in segs)
            if have < n:
                end = list(db.query("select max(slot_base + n) as e from dataset_runs where dataset_id = ?",
                                    [dataset_id]))
                base = end[0]["e"] or 0
                db.table("dataset_runs").insert({"dataset_id": dataset_id, "seed": seed, "slot_base": base,
                                                 "n": n - have, "created": now()})
                segs.append({"slot_base": base, "n": n - have})
            target = list(db.query("select coalesce(sum(n), 0) as t from dataset_runs where dataset_id = ?",
                                   [dataset_id]))
            db.table("datasets").update(dataset_id, {"target": target[0]["t"]})
        return [s["slot_base"] + i for s in segs for i in range(s["n"])][:n]

    def add_conversation(self, dataset_id: int, slot: int, split: str, messages: list[dict[str, str]],
                         meta: dict[str, Any]) -> bool:
        """Store one finished conversation in one autocommitted INSERT (fully stored or absent). False when
        the slot was already filled (a concurrent run that filled it first wins; nothing is duplicated)."""
        cur = self.db.execute(
            "insert or ignore into conversations (dataset_id, slot, split, messages, meta, created) "
            "values (?, ?, ?, ?, ?, ?)", [dataset_id, slot, split, json.dumps(messages), json.dumps(meta), now()])
        return bool(cur.rowcount)

    def filled_slots(self, dataset_id: int) -> set[int]:
        return {r["slot"] for r in self.db.query("select slot from conversations where dataset_id = ?", [dataset_id])}

    def iter_conversation_rows(self, dataset_id: int, split: str | None = None) -> Iterator[dict[str, Any]]:
        """The dataset's stored conversations in slot order: `messages`, `meta` (JSON text) and `split`."""
        where, args = "dataset_id = ?", [dataset_id]
        if split is not None:
            where += " and split = ?"
            args.append(split)  # type: ignore[arg-type]
        yield from self.db.query(f"select slot, messages, meta, split from conversations where {where} order by slot",
                                 args)

    def add_generation_failure(self, dataset_id: int, slot: int, attempt: int, reason: str) -> None:
        self.db.execute("insert into generation_failures (dataset_id, slot, attempt, reason, created) "
                        "values (?, ?, ?, ?, ?)", [dataset_id, slot, attempt, reason[:2000], now()])

    def generation_failures(self, dataset_id: int, limit: int | None = None) -> list[dict[str, Any]]:
        """Failed attempts of a dataset's generation, newest first: slot, attempt, reason."""
        sql = "select slot, attempt, reason from generation_failures where dataset_id = ? order by id desc"
        return list(self.db.query(sql + (f" limit {int(limit)}" if limit else ""), [dataset_id]))

    def count_generation_failures(self, dataset_id: int) -> int:
        rows = list(self.db.query("select count(*) as n from generation_failures where dataset_id = ?", [dataset_id]))
        return int(rows[0]["n"])

    def delete_dataset(self, dataset_id: int) -> int:
        """Remove a dataset, its conversations, failures and runs; returns how many conversations went."""
        with self.transaction() as db:
            n = db.execute("delete from conversations where dataset_id = ?", [dataset_id]).rowcount
            for table in ("generation_failures", "dataset_runs"):
                db.execute(f"delete from {table} where dataset_id = ?", [dataset_id])
            db.execute("delete from datasets where id = ?", [dataset_id])
        return int(n)

    @contextmanager
    def fast_writes(self) -> Iterator[None]:
        """synchronous=NORMAL for a burst of small commits. In WAL mode a killed process still loses
        nothing (commits are in the WAL before they return); only a power cut can drop the last few.
        It saves an fsync per conversation, which otherwise dominates offline generation."""
        sync = self.db.execute("pragma synchronous").fetchone()[0]
        self.db.execute("pragma synchronous=NORMAL")
        try:
            yield
        finally:
            self.db.execute(f"pragma synchronous={int(sync)}")

    def flow_version_with_hash(self, name: str, digest: str) -> int | None:
        """The newest stored version of flow `name` whose content hash is `digest`."""
        rows = list(self.db.query(
            "select v.version from flow_versions v join flows f on f.id = v.flow_id where f.name = ? and v.hash = ? "
            "order by v.version desc limit 1", [name, digest]))
        return int(rows[0]["version"]) if rows else None

    # -- the model registry ----------------------------------------------------------------------
    def put_model(self, row: dict[str, Any]) -> None:
        """Add or replace the registry row named `row["name"]` (meta as a dict)."""
        check_name(row["name"], "model")
        row = {**row, "meta": json.dumps(row.get("meta") or {})}
        with self.transaction() as db:
            db.execute("delete from models where name = ?", [row["name"]])
            db.table("models").insert(row)

    def model_rows(self, name: str | None = None) -> list[dict[str, Any]]:
        """Registry rows, newest first (only `name`'s when given), meta decoded."""
        where, args = ("where name = ?", [name]) if name else ("", [])
        rows = self.db.query(f"select * from models {where} order by created desc", args)
        return [dict(r, meta=json.loads(r.get("meta") or "{}")) for r in rows]

    # -- evaluations -----------------------------------------------------------------------------
    def add_evaluation(self, name: str, flow: str, flow_version: int | None, created: float,
                       config: dict[str, Any], report: str, path: str) -> int:
        """Store an evaluation run (its report as JSON text); returns its id."""
        row = self.db.table("evaluations").insert({
            "name": name, "flow": flow, "flow_version": flow_version, "created": created,
            "config": json.dumps(config), "report": report, "path": path})
        return int(row.last_pk)  # type: ignore[arg-type]

    def list_evaluations(self, flow: str | None = None) -> list[dict[str, Any]]:
        """Evaluation runs, newest first (id, name, flow, flow_version, created, path), without reports."""
        where, args = ("where flow = ?", [flow]) if flow else ("", [])
        return list(self.db.query(f"select id, name, flow, flow_version, created, path from evaluations {where} "
                                  "order by id desc", args))

    def get_evaluation(self, evaluation_id: int) -> dict[str, Any]:
        """One evaluation run with its config and report decoded."""
        try:
            row = dict(self.db.table("evaluations").get(evaluation_id))
        except sqlite_utils.db.NotFoundError:
            raise StoreError(f"no evaluation with id {evaluation_id}; `subterra eval` stores them") from None
        return row | {"config": json.loads(row["config"] or "{}"), "report": json.loads(row["report"] or "{}")}

    # -- jobs (progress for the UI) ------------------------------------------------------------
    def create_job(self, kind: str, config: dict[str, Any] | None = None, name: str = "") -> int:
        """A job row for work this process does. Inside a job-runner worker (`engine.jobs`), the
        worker's own row is adopted for its kind instead, so the work reports to the job the user sees."""
        adopted = self._adopt_runner_job(kind)
        if adopted is not None:
            return adopted
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

    # -- the job runner's rows (engine.jobs) -----------------------------------------------------
    def insert_runner_job(self, fields: dict[str, Any]) -> int:
        """Insert a queued job, refusing (JobConflictError) while a live job writes the same `output`."""
        from engine.errors import JobConflictError

        t = now()
        row = {"status": "queued", "progress": 0.0, "message": "queued", "result": None, "events": None, "pid": None,
               "created": t, "updated": t, "cancel_requested": 0, **fields}
        row["config"] = json.dumps(row.get("config") or {})
        with self.transaction() as db:
            if row.get("output"):
                self._refuse_live_output(db, row["output"], None, JobConflictError)
            return int(db.table("jobs").insert(row).last_pk)  # type: ignore[arg-type]

    def requeue_runner_job(self, job_id: int) -> None:
        """A failed/cancelled job back to `queued` for a resume (same output check as a new one)."""
        from engine.errors import JobConflictError

        with self.transaction() as db:
            row = dict(db.table("jobs").get(job_id))
            if row.get("output"):
                self._refuse_live_output(db, row["output"], job_id, JobConflictError)
            db.table("jobs").update(job_id, {"status": "queued", "message": "queued (resume)", "pid": None,
                                             "heartbeat": None, "finished": None, "cancel_requested": 0,
                                             "updated": now()})

    def claim_runner_job(self, job_id: int, pid: int) -> bool:
        """queued → running for the worker `pid`; False when the job was cancelled before it started."""
        t = now()
        cur = self.db.execute(
            "update jobs set status = 'running', pid = ?, heartbeat = ?, started = coalesce(started, ?), "
            "updated = ?, message = 'started' where id = ? and status = 'queued'", [pid, t, t, t, job_id])
        return bool(cur.rowcount)

    def job_heartbeat(self, job_id: int) -> None:
        self.db.execute("update jobs set heartbeat = ? where id = ?", [now(), job_id])

    def live_jobs(self) -> list[dict[str, Any]]:
        """Jobs whose status says queued or running (the runner checks whether they really are)."""
        return list(self.db.query("select * from jobs where status in ('queued', 'running') order by id"))

    def _refuse_live_output(self, db: sqlite_utils.Database, output: str, job_id: int | None, error: type) -> None:
        others = list(db.query("select id, kind, status from jobs where output = ? and status in ('queued', 'running') "
                               "and id != ?", [output, job_id or -1]))
        if others:
            o = others[0]
            raise error(f"job {o['id']} ({o['kind']}, {o['status']}) already writes {output}; wait for it, "
                        f"or cancel it with `subterra jobs cancel {o['id']}`, or pick another output")

    def is_runner_job(self, job_id: int) -> bool:
        """Whether `job_id` is the job-runner worker's own row this process adopted: the worker ends it (after
        the log's last line, so whoever sees the finished row also sees the whole log), not the stage."""
        return os.environ.get("SUBTERRA_JOB_ID") == str(job_id)

    def _adopt_runner_job(self, kind: str) -> int | None:
        jid = os.environ.get("SUBTERRA_JOB_ID")
        if not jid or not jid.isdigit() or os.environ.get("SUBTERRA_JOB_KIND") != kind:
            return None
        rows = list(self.db.query("select id from jobs where id = ? and kind = ?", [int(jid), kind]))
        return int(rows[0]["id"]) if rows else None


# ----------------------------------------------------------------------------------------------
# migrations: append only; never edit one that has shipped

Migration = Callable[[sqlite_utils.Database], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(name: str) -> Callable[[Migration], Migration]:
    """Register a schema change under its own permanent `name` (recorded in `_migrations` once run).

    Migrations run in the order they are registered; a new one goes at the end with a new name, so
    adding one never renames the others.
    """
    def deco(fn: Migration) -> Migration:
        if any(n == name for n, _ in MIGRATIONS):
            raise ValueError(f"migration name {name!r} is used twice")
        MIGRATIONS.append((name, fn))
        return fn

    return deco


def migrate(db: sqlite_utils.Database) -> None:
    db.execute("create table if not exists _migrations (name text primary key, applied real)")
    done = {r["name"] for r in db.query("select name from _migrations")}
    for name, fn in MIGRATIONS:
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


@migration("001_initial")
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
    """FLOW on the command line: a file path, `name` of a stored flow, or `name@version`.

    Which one is meant is never a guess: a path (a flow-file suffix, a folder part, a leading `.` or `~`)
    is a file; a bare name is the stored flow. A bare name is read as a file only when no flow has that
    name, and a name that is both a stored flow and a file here is refused, so a file in the current
    folder never silently stands in for (and is then saved over) the stored flow.
    """
    from engine.formats import load_flow_file

    p = Path(ref)
    if p.suffix.lower() in (".json", ".yaml", ".yml") or "/" in ref or os.sep in ref or ref.startswith((".", "~")):
        return load_flow_file(p.expanduser())
    name, _, ver = ref.partition("@")
    st = store or Store()
    stored = st.has_flow(name)
    if p.is_file() and stored:
        raise FlowNotFoundError(f"'{ref}' is both a stored flow and a file in this folder; write ./{ref} for the "
                                f"file, or rename one of them")
    if p.is_file():
        return load_flow_file(p)
    return st.get_flow(name, int(ver) if ver.isdigit() else None)


def check_name(name: str, kind: str) -> None:
    """Names become folder and file names: one rule (engine.flow.NAME_RULE) where each enters the store."""
    problem = name_problem(name)
    if problem:
        raise StoreError(f"{kind} {problem}")


@contextmanager
def _nullcontext(value: Any) -> Iterator[Any]:
    yield value


@migration("002_dataset_runs")
def dataset_runs(db: sqlite_utils.Database) -> None:
    # Which slots of a dataset each generation seed owns: several seeds concatenate into one
    # dataset, and re-running a seed resumes its own slots. A seed asked for more conversations
    # later gets another segment at the end, so slot numbers never collide.
    db.table("dataset_runs").create(
        {"id": int, "dataset_id": int, "seed": int, "slot_base": int, "n": int, "created": float},
        pk="id", foreign_keys=[("dataset_id", "datasets", "id")],
    )
    db.table("dataset_runs").create_index(["dataset_id", "seed"])


@migration("job_runner")
def job_runner(db: sqlite_utils.Database) -> None:
    # Jobs run by engine.jobs in worker processes: what they are about (flow), what they write
    # (output, so two jobs never write one model folder), how to run them (entry) and how to tell
    # whether they are alive (pid + heartbeat), their log file and times.
    jobs = db.table("jobs")
    for col, typ in (("flow", str), ("flow_version", int), ("output", str), ("entry", str), ("log", str),
                     ("heartbeat", float), ("started", float), ("finished", float), ("cancel_requested", int)):
        jobs.add_column(col, typ)
    jobs.create_index(["status"])
    jobs.create_index(["output"])
