"""Background jobs: generation, compilation and evaluation in worker processes that outlive the page.

One runner for the CLI (`subterra jobs`) and the studio (`/jobs`, the generate and compile panels):

    from engine.jobs import start_job, list_jobs, cancel_job, resume_job

    job = start_job("generate", {"flow": "travel", "generate": {"n": 20}},
                    env={"ANTHROPIC_API_KEY": key}, flow="travel", output="dataset:travel")
    list_jobs()            # JobRecord per row, dead workers already marked failed
    cancel_job(job.id)     # SIGTERM to the worker's process group; the worker marks it cancelled
    resume_job(job.id)     # a failed or cancelled job runs again on the same row, continuing its work

A job is a row in the store's `jobs` table (kind, flow, status, progress, message, pid, heartbeat,
log file, config without secrets, result) and a detached `python -m engine.jobs.worker ID` process
in its own session, writing its log to `<data dir>/jobs/ID.log`. The worker heartbeats every
`HEARTBEAT_S` seconds. `refresh()` (run by every listing) marks a queued/running job `failed`
when its process is gone or its heartbeat is older than `HEARTBEAT_TIMEOUT_S`, with the reason and
the tail of its log in `result`; a job is never left "running" after `kill -9`.

Kinds plug in by name: `KINDS` maps a kind to the `"module:function"` its worker calls with a
`JobContext` (generate and compile here; evaluation adds its own line or calls `register_kind`).
The entry is stored on the row when the job starts, so a worker never depends on what the starting
process registered. Compile targets (this machine, DeepSpeed, launch bundle, and clusters later)
are a second registry in `engine.jobs.compile` (`TARGETS`, `register_target`).

Secrets (API keys) travel only in `env`, the worker's environment: never in the row, the config,
the log or an export. `config` is also scrubbed of any key that looks like a secret.

Statuses: queued → running → done | failed | cancelled; failed and cancelled can be resumed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.errors import JobError
from engine.provenance import REPO_ROOT
from engine.store import Store, data_dir, now

Status = Literal["queued", "running", "done", "failed", "cancelled"]
LIVE: tuple[str, ...] = ("queued", "running")
RESUMABLE: tuple[str, ...] = ("failed", "cancelled")
HEARTBEAT_S = 2.0
"""How often a worker writes its heartbeat."""
HEARTBEAT_TIMEOUT_S = 45.0
"""A running job whose heartbeat is older than this is dead (hung, or its machine restarted)."""
START_TIMEOUT_S = 60.0
"""A queued job whose worker has not claimed it after this long never started."""
LOG_TAIL_LINES = 20

KINDS: dict[str, str] = {
    "generate": "engine.jobs.generate:run",
    "compile": "engine.jobs.compile:run",
}
"""Job kind → `"module:function"` the worker calls with a `JobContext`; returns the job's result dict."""

_SECRET = re.compile(r"(api_?key|secret|password|passwd|credential|auth_?token|access_?token)$", re.I)


class JobSpec(BaseModel):
    """What to run: the request `start_job` turns into a row and a worker."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="Job kind: a key of KINDS (generate, compile, evaluate, ...).")
    config: dict[str, Any] = Field(default_factory=dict, description="The kind's own config (no secrets).")
    flow: str | None = Field(None, description="Flow the job is about (shown in lists, used for filters).")
    flow_version: int | None = Field(None, description="Flow version the job works from.")
    name: str = Field("", description="Short label: the dataset or model it produces.")
    output: str | None = Field(None, description="What it writes, e.g. `model:/abs/dir` or `dataset:travel`; "
                                                 "two live jobs with one output are refused.")
    entry: str | None = Field(None, description="`module:function` to run (default: KINDS[kind]).")


class JobRecord(BaseModel):
    """A job as the CLI and the studio see it (`subterra jobs --json` prints these)."""

    model_config = ConfigDict(extra="forbid")

    id: int
    kind: str
    flow: str | None = None
    flow_version: int | None = None
    name: str = ""
    status: str = Field(description="queued, running, done, failed or cancelled.")
    progress: float = Field(0.0, description="0..1.")
    message: str = Field("", description="The latest progress line, or why it failed.")
    pid: int | None = None
    created: float
    started: float | None = None
    finished: float | None = None
    updated: float | None = None
    heartbeat: float | None = None
    duration_s: float | None = Field(None, description="Started → finished (or → now while it runs).")
    output: str | None = None
    log: str | None = Field(None, description="Path of the worker's log file.")
    config: dict[str, Any] = Field(default_factory=dict)
    result: dict[str, Any] | None = None
    events: dict[str, Any] | None = Field(None, description="Kind-specific live data (loss curve, rates).")

    @property
    def live(self) -> bool:
        return self.status in LIVE

    @property
    def resumable(self) -> bool:
        return self.status in RESUMABLE and bool(self.log)


class JobContext:
    """What a kind's function gets: its config, the store, and ways to report and to notice a cancel.

    `report()` is throttled (at most every 0.5 s unless `force`), so call it as often as you like.
    `stop` is set when the user cancels; functions that can stop cleanly (compile saves a checkpoint)
    watch it, and the worker raises `JobCancelled` in the others.
    """

    def __init__(self, job_id: int, store: Store, row: dict[str, Any]):
        self.job_id = job_id
        self.store = store
        self.kind: str = row["kind"]
        self.flow: str | None = row.get("flow")
        self.flow_version: int | None = row.get("flow_version")
        self.config: dict[str, Any] = json.loads(row.get("config") or "{}")
        self.log_path = Path(row["log"]) if row.get("log") else None
        self.stop = threading.Event()
        self.graceful_stop = False
        self._last = 0.0

    def report(self, progress: float | None = None, message: str | None = None,
               events: dict[str, Any] | None = None, force: bool = False) -> None:
        t = time.monotonic()
        if not force and t - self._last < 0.5:
            return
        self._last = t
        fields: dict[str, Any] = {}
        if progress is not None:
            fields["progress"] = max(0.0, min(1.0, float(progress)))
        if message is not None:
            fields["message"] = message
        if events is not None:
            fields["events"] = events
        if fields:
            self.store.update_job(self.job_id, **fields)

    def log(self, line: str) -> None:
        print(line, flush=True)


class JobCancelled(BaseException):
    """Raised in a worker's main thread by SIGTERM (a BaseException so `except Exception` keeps out of its way)."""


# ------------------------------------------------------------------------------------------------
# the API


def start_job(kind: str, config: dict[str, Any] | None = None, env: dict[str, str] | None = None, *,
              flow: str | None = None, flow_version: int | None = None, name: str = "",
              output: str | None = None, entry: str | None = None, store: Store | None = None) -> JobRecord:
    """Queue a job and start its worker process; returns at once with the queued record.

    `env` is added to the worker's environment only (API keys go here). Raises JobError for an
    unknown kind and JobConflictError while another live job writes the same `output`.
    """
    spec = JobSpec(kind=kind, config=scrub(config or {}), flow=flow, flow_version=flow_version, name=name,
                   output=output, entry=entry)
    return start(spec, env, store)


def start(spec: JobSpec, env: dict[str, str] | None = None, store: Store | None = None) -> JobRecord:
    """`start_job` taking a JobSpec."""
    st = store or Store(seed=False)
    entry = spec.entry or KINDS.get(spec.kind)
    if not entry:
        raise JobError(f"unknown job kind '{spec.kind}'; known kinds: {', '.join(sorted(KINDS))}")
    refresh(st)  # a dead job must not block its output
    job_id = st.insert_runner_job({"kind": spec.kind, "name": spec.name, "flow": spec.flow,
                                   "flow_version": spec.flow_version, "output": spec.output, "entry": entry,
                                   "config": scrub(spec.config)})
    log = jobs_dir() / f"{job_id}.log"
    st.update_job(job_id, log=str(log))
    _spawn(job_id, log, env)
    return get_job(job_id, st)


def register_kind(kind: str, entry: str) -> None:
    """Add a job kind: `entry` is `"module:function"`, called in the worker with a JobContext."""
    if ":" not in entry:
        raise JobError(f"job entry '{entry}' must be 'module:function'")
    KINDS[kind] = entry


def get_job(job_id: int, store: Store | None = None) -> JobRecord:
    st = store or Store(seed=False)
    refresh(st)
    row = st.db.table("jobs").get(job_id) if _exists(st, job_id) else None
    if row is None:
        raise JobError(f"no job {job_id}; `subterra jobs` lists them")
    return record(dict(row))


def list_jobs(store: Store | None = None, kind: str | None = None, flow: str | None = None,
              limit: int | None = None) -> list[JobRecord]:
    """Every job, newest first, after marking dead ones failed."""
    st = store or Store(seed=False)
    refresh(st)
    where, args = [], []
    if kind:
        where.append("kind = ?")
        args.append(kind)
    if flow:
        where.append("flow = ?")
        args.append(flow)
    sql = "select * from jobs" + (" where " + " and ".join(where) if where else "") + " order by id desc"
    if limit:
        sql += f" limit {int(limit)}"
    return [record(dict(r)) for r in st.db.query(sql, args)]


def cancel_job(job_id: int, store: Store | None = None, wait_s: float = 10.0) -> JobRecord:
    """Ask the worker to stop (SIGTERM to its process group) and wait up to `wait_s` for it to say so;
    a worker that does not stop by then is killed and the job marked cancelled."""
    st = store or Store(seed=False)
    job = get_job(job_id, st)
    if not job.live:
        raise JobError(f"job {job_id} is {job.status}; only a queued or running job can be cancelled")
    st.update_job(job_id, cancel_requested=1)
    if job.status == "queued" and not job.pid:
        # not claimed yet: the worker will see it is no longer queued and exit
        st.db.execute("update jobs set status = 'cancelled', message = 'cancelled before it started', finished = ? "
                      "where id = ? and status = 'queued'", [now(), job_id])
        job = get_job(job_id, st)
        if not job.live:
            return job
    pid = job.pid
    if pid and job.log and pid_alive(pid):
        _signal_group(pid, signal.SIGTERM)
    elif pid and pid_alive(pid) and pid != os.getpid():
        os.kill(pid, signal.SIGINT)  # a job run in a terminal (`subterra compile`): as if Ctrl-C
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        row = st.get_job(job_id)
        if row["status"] not in LIVE:
            return record(row)
        if not pid or not pid_alive(pid):
            break
        time.sleep(0.2)
    if pid and pid_alive(pid):
        _signal_group(pid, signal.SIGKILL) if job.log else os.kill(pid, signal.SIGKILL)
    row = st.get_job(job_id)
    if row["status"] in LIVE:
        _finish(st, job_id, "cancelled", f"cancelled (the worker did not stop within {wait_s:.0f}s and was killed)")
    return get_job(job_id, st)


def resume_job(job_id: int, env: dict[str, str] | None = None, store: Store | None = None) -> JobRecord:
    """Run a failed or cancelled job again on the same row; its kind continues where it stopped
    (generation fills only the empty slots, compile loads `<out>/.train/last`)."""
    st = store or Store(seed=False)
    job = get_job(job_id, st)
    if job.status not in RESUMABLE:
        raise JobError(f"job {job_id} is {job.status}; only a failed or cancelled job can be resumed")
    if not job.log:
        raise JobError(f"job {job_id} was not started by the job runner (it ran in a terminal); re-run its command")
    st.requeue_runner_job(job_id)
    _spawn(job_id, Path(job.log), env)
    return get_job(job_id, st)


def refresh(store: Store | None = None) -> list[int]:
    """Mark queued/running jobs whose worker is gone as failed, with the reason and their log's tail.
    Returns the ids it marked."""
    st = store or Store(seed=False)
    marked = []
    t = now()
    for row in st.live_jobs():
        reason = dead_reason(row, t)
        if reason is None:
            continue
        tail = log_tail(row.get("log"))
        status = "cancelled" if row.get("cancel_requested") else "failed"
        cur = st.db.execute(
            "update jobs set status = ?, message = ?, result = ?, finished = ?, updated = ? "
            "where id = ? and status in ('queued', 'running') and coalesce(heartbeat, 0) = coalesce(?, 0)",
            [status, reason, json.dumps({"reason": reason, "log_tail": tail}), t, t, row["id"], row.get("heartbeat")])
        if cur.rowcount:
            marked.append(int(row["id"]))
    return marked


def dead_reason(row: dict[str, Any], t: float | None = None) -> str | None:
    """Why a queued/running row has no live worker behind it, or None when it looks alive."""
    t = t or now()
    pid, hb = row.get("pid"), row.get("heartbeat")
    if row["status"] == "queued" and not pid:
        age = t - (row.get("updated") or row["created"])
        return None if age < START_TIMEOUT_S else f"the worker never started (queued {age:.0f}s ago); see its log"
    if pid and not pid_alive(pid):
        ago = f"; last heartbeat {t - hb:.0f}s ago" if hb else ""
        return f"the worker process (pid {pid}) is gone: killed or crashed without reporting{ago}"
    if hb is not None and t - hb > HEARTBEAT_TIMEOUT_S:
        return (f"no heartbeat from the worker (pid {pid}) for {t - hb:.0f}s: it hung, or the machine restarted "
                "and the pid now belongs to another process")
    return None


def record(row: dict[str, Any]) -> JobRecord:
    """A jobs-table row as a JobRecord."""
    def load(v: Any) -> Any:
        if v is None or isinstance(v, dict):
            return v
        try:
            return json.loads(v)
        except ValueError:
            return {"text": v}

    # a job run in a terminal (not by the runner) has no `started`: it started when it was created
    started, finished = row.get("started") or row.get("created"), row.get("finished")
    end = finished or (now() if row.get("status") in LIVE else row.get("updated"))
    result = load(row.get("result"))
    return JobRecord(
        id=row["id"], kind=row["kind"], flow=row.get("flow"), flow_version=row.get("flow_version"),
        name=row.get("name") or "", status=row["status"], progress=float(row.get("progress") or 0.0),
        message=row.get("message") or "", pid=row.get("pid"), created=row["created"], started=started,
        finished=finished, updated=row.get("updated"), heartbeat=row.get("heartbeat"),
        duration_s=round(end - started, 1) if started and end else None, output=row.get("output"),
        log=row.get("log"), config=load(row.get("config")) or {},
        result=result if isinstance(result, dict) else None, events=load(row.get("events")),
    )


def log_tail(path: str | Path | None, lines: int = LOG_TAIL_LINES) -> str:
    """The last `lines` lines of a job's log ('' when there is none)."""
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64_000))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def scrub(config: dict[str, Any]) -> dict[str, Any]:
    """`config` without any key that looks like a secret (at any depth)."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if _SECRET.search(str(k)):
            continue
        out[k] = scrub(v) if isinstance(v, dict) else v
    return out


def jobs_dir() -> Path:
    path = data_dir() / "jobs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (an exited child its parent has not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS): kill(0) said it exists
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def wait_for(job_id: int, done: Callable[[JobRecord], bool] | None = None, timeout_s: float = 60.0,
             store: Store | None = None) -> JobRecord:
    """Poll until `done(job)` (default: the job is no longer live) or the timeout; returns the last record."""
    st = store or Store(seed=False)
    check = done or (lambda j: not j.live)
    deadline = time.monotonic() + timeout_s
    while True:
        job = get_job(job_id, st)
        if check(job) or time.monotonic() > deadline:
            return job
        time.sleep(0.2)


# ------------------------------------------------------------------------------------------------
# helpers


def _spawn(job_id: int, log: Path, env: dict[str, str] | None) -> None:
    row_kind = Store(seed=False).get_job(job_id)["kind"]
    full_env = {**os.environ, **(env or {}), "SUBTERRA_HOME": str(data_dir()), "SUBTERRA_JOB_ID": str(job_id),
                "SUBTERRA_JOB_KIND": row_kind, "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for var in ("HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE"):  # progress bars would fill the log with \r lines
        full_env.setdefault(var, "1")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        proc = subprocess.Popen([sys.executable, "-m", "engine.jobs.worker", str(job_id)], stdout=f,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=full_env, cwd=str(REPO_ROOT),
                                start_new_session=True, close_fds=True)
    # reap it when it exits, so a dead worker never lingers as a zombie that looks alive
    threading.Thread(target=proc.wait, name=f"job-{job_id}-reaper", daemon=True).start()


def _finish(st: Store, job_id: int, status: str, message: str, result: dict[str, Any] | None = None,
            progress: float | None = None) -> None:
    fields: dict[str, Any] = {"status": status, "message": message, "finished": now()}
    if result is not None:
        fields["result"] = result
    if progress is not None:
        fields["progress"] = progress
    st.update_job(job_id, **fields)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _exists(st: Store, job_id: int) -> bool:
    return bool(list(st.db.query("select 1 from jobs where id = ?", [job_id])))
