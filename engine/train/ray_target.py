"""Compile on a Ray cluster: submit with Ray Jobs, train under Ray Train, bring the model back.

    job_id = submit_ray_compile(cfg, RayTarget(address="http://HOST:8265", workers=8, gpus_per_worker=1,
                                               storage="s3://bucket/subterra"))
    attach(job_id)   # follow it in this process until it ends (a restarted client re-attaches this way)
    cancel(job_id)   # stop the Ray job; the local job ends `cancelled`

The client side (this module) only glues libraries together:

1. Checks before anything is sent, each failing with one line that says what to configure: Ray is
   installed, the cluster's dashboard answers, the storage can be written and read back from here,
   the base model fits the runtime environment (or is on the storage / a hub id).
2. A job in the store's jobs table (through `engine.jobs` when it is there, so it shows in
   `subterra jobs` and on the jobs page like every other) whose worker calls `run_job`: stage the
   runtime environment (this checkout's `engine/`, the conversations, the resolved TrainConfig, the
   base model when it is a local folder that fits; the project's training requirements as `pip`),
   `JobSubmissionClient.submit_job` under a submission id chosen here and stored in the job's config
   before anything is submitted, then poll the Ray job's status and log: the log goes to the job's
   log, the rank-0 worker's progress lines (`engine.train.ray_worker`) become the job's progress and
   events (step, loss, eval loss, tokens/s), in the same shape a local compile writes.
3. When the Ray job succeeds, its Ray Train checkpoint (the Hugging Face folder + `subterra.json`,
   persisted by Ray Train to `<storage>/<submission id>/model`) is copied into `cfg.out`, the
   provenance is completed (client's config and git revision, the cluster run) and the model is
   added to the registry, exactly where a local compile leaves it.

A worker that dies (the CLI or studio machine restarted, kill -9) leaves the Ray job running on the
cluster; `attach(job_id)` (or `subterra jobs resume ID`) finds it again by the stored submission id,
continues the log where it stopped and sees it finish. Resuming a job whose Ray job failed or was
stopped submits it again under a new submission id.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field

from engine.errors import TrainingError
from engine.provenance import REPO_ROOT, git_revision
from engine.train.config import TrainConfig

INSTALL_HINT = "pip install 'subterra[ray]'"
SPEC_FILE = "ray_job.json"
DATA_FILE = "data.jsonl"
MODEL_DIR = "model"  # the Ray Train checkpoint's folder name under <storage>/<submission id>/
MARK_PROGRESS = "SUBTERRA_PROGRESS "
MARK_ERROR = "SUBTERRA_ERROR "
TRAINING_REQUIREMENTS = ("torch", "pydantic", "pyyaml", "networkx", "sqlite-utils", "transformers", "accelerate",
                         "safetensors", "deepspeed", "platformdirs", "numpy")
"""The project's requirements the training stage imports; Ray pip-installs them (with our pins) into the job."""
POLL_S = 2.0
RECONNECT_S = 300.0  # how long a follower keeps retrying a cluster it lost before failing the job
LOSSES_KEPT = 200  # per-step records kept in the job's events, as a local compile keeps


class RayTarget(BaseModel):
    """Where and how a compile runs on a Ray cluster (the CLI's `--target ray` flags, the studio's form)."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(
        None, description="The Ray cluster's dashboard, http://HOST:8265 (default: $RAY_ADDRESS).")
    workers: int = Field(
        2, ge=1, description="Ray Train workers, one DeepSpeed ZeRO-3 rank each (e.g. the cluster's GPU count).")
    gpus_per_worker: float = Field(
        0, ge=0, le=1, description="GPUs per worker: 1 for one GPU per rank (NCCL), 0 for CPU workers (gloo).")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs Ray reserves for each worker.")
    storage: str | None = Field(
        None, description="Where the model comes back through: a folder this machine and every node reach, or an "
        "object-store URI pyarrow opens (s3://, gs://); default: a folder in the data dir for a cluster on this "
        "machine.")
    install_requirements: bool = Field(
        True, description="Have Ray pip-install the project's training requirements into the job's environment.")
    submission_id: str | None = Field(
        None, description="The Ray job's submission id (set here; re-attachment uses it).")


class BaseSource(BaseModel):
    """How the workers get the base model."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["shipped", "uri", "path", "hub"] = Field(
        description="shipped: in the runtime env's `base/`; uri: copied from the storage; path: a folder the nodes "
        "read directly (on a shared storage folder); hub: downloaded on the cluster.")
    ref: str = Field(description="The local folder shipped, the URI, the path or the hub id.")
    size: int = Field(0, description="Bytes shipped in the runtime environment.")


class RayJob(BaseModel):
    """What the cluster side (`engine.train.ray_worker`) reads from `ray_job.json` in its working dir."""

    model_config = ConfigDict(extra="forbid")

    train: TrainConfig = Field(description="The resolved config with paths relative to the working dir.")
    run_name: str = Field(description="Ray Train run name (= the submission id): `<storage>/<run_name>/model`.")
    storage: str = Field(description="Ray Train's storage_path (folder or URI).")
    workers: int
    gpus_per_worker: float
    cpus_per_worker: float
    base: BaseSource


# ------------------------------------------------------------------------------------------------
# the API


def submit_ray_compile(cfg: TrainConfig, target: RayTarget, store: Any = None) -> int:
    """Check everything the client can, start the job that submits and follows the Ray job; returns the job id.

    Raises TrainingError with one clear line for: no Ray, an unreachable address, a storage that this
    machine cannot write and read, a base model too large to ship, nothing to train on.
    """
    from engine.train.loop import load_records

    target = preflight(cfg, target)
    if not load_records(cfg):
        raise TrainingError("no conversations to train on")
    target = target.model_copy(update={"submission_id": new_submission_id(cfg)})
    try:
        from engine.jobs.compile import start_compile
    except ImportError:  # no job runner in this checkout: a detached follower of our own
        return _start_follower(cfg, target, store)
    register()
    return start_compile(cfg, "ray", target.model_dump(mode="json"), store=store).id


def attach(job_id: int, store: Any = None) -> dict[str, Any]:
    """Follow the job's Ray job from this process until it ends (the job's row shows it); returns the result.

    This is how a new client takes over from one that died: it finds the Ray job by the submission id
    stored in the job's config, carries on the log where the last follower stopped, and on success
    brings the model back. Ctrl-C (SIGINT) or SIGTERM stops the Ray job.
    """
    st = store or _store()
    row = st.get_job(job_id)
    cfg, target = _job_config(row)
    if row["status"] == "done":
        return {"status": "done", "message": row.get("message") or "done", **(_loads(row.get("result")) or {})}
    stop = threading.Event()
    st.update_job(job_id, status="running", pid=os.getpid(), **_has(st, heartbeat=time.time()))
    beat = threading.Thread(target=_heartbeat, args=(st.path, job_id, stop), daemon=True)
    beat.start()
    log = _log_writer(row.get("log"))
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)} \
        if threading.current_thread() is threading.main_thread() else {}
    try:
        result = follow(job_id, cfg, target, st, stop, lambda **kw: st.update_job(job_id, **kw) if kw else None, log)
    except BaseException as e:
        st.update_job(job_id, status="failed", message=str(e) or type(e).__name__, **_has(st, finished=time.time()))
        raise
    finally:
        stop.set()
        for s, h in old.items():
            signal.signal(s, h)
    status, message = result.pop("_status", "done"), result.pop("_message", "done")
    st.update_job(job_id, status=status, message=message, result=result,
                  **({"progress": 1.0} if status == "done" else {}), **_has(st, finished=time.time()))
    return {"status": status, "message": message, **result}


def cancel(job_id: int, store: Any = None, wait_s: float = 20.0) -> None:
    """Stop the job's Ray job (whether or not a follower is alive); the job ends `cancelled`."""
    st = store or _store()
    row = st.get_job(job_id)
    _, target = _job_config(row)
    stopped = False
    if target.submission_id:
        client = connect(target.address or "")
        try:
            stopped = bool(client.stop_job(target.submission_id))
        except RuntimeError:
            pass  # never submitted (the follower died before): nothing runs on the cluster
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:  # a live follower sees STOPPED and ends the job itself
        row = st.get_job(job_id)
        if row["status"] not in ("queued", "running") or not _alive(row.get("pid")):
            break
        time.sleep(0.5)
    status = st.get_job(job_id)["status"]
    if status in ("queued", "running") or (stopped and status == "failed"):  # failed: its follower had died
        st.update_job(job_id, status="cancelled", message=f"cancelled: Ray job {target.submission_id} stopped",
                      **_has(st, finished=time.time()))


def run_job(ctx: Any, cfg: TrainConfig, options: dict[str, Any]) -> dict[str, Any]:
    """The `ray` compile target of the job runner (`engine.jobs.compile`): submit (or re-attach) and follow."""
    ctx.graceful_stop = True  # a cancel sets ctx.stop; we stop the Ray job and report `cancelled`
    target = RayTarget(**options)
    if not target.submission_id:  # started by `start_compile(cfg, "ray", options)` without submit_ray_compile
        target = preflight(cfg, target)

    def report(progress: float | None = None, message: str | None = None, events: Any = None, **_: Any) -> None:
        ctx.report(progress=progress, message=message, events=events, force=True)

    return follow(ctx.job_id, cfg, target, ctx.store, ctx.stop, report, ctx.log)


def unavailable() -> str | None:
    """None when `--target ray` can be used here, else why not (the studio greys the target out)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        return f"Ray is not installed: {INSTALL_HINT}"
    return None


def register() -> None:
    """Add the `ray` target to the job runner's compile targets (idempotent)."""
    from engine.jobs.compile import TARGETS, CompileTarget, register_target

    if "ray" not in TARGETS:
        register_target(CompileTarget(
            name="ray", label="Ray cluster", entry="engine.train.ray_target:run_job",
            available="engine.train.ray_target:unavailable",
            help="Submit to a Ray cluster (Ray Jobs + Ray Train, DeepSpeed ZeRO-3 across its workers); the model "
                 "comes back through the storage into the registry."))


# ------------------------------------------------------------------------------------------------
# checks before submitting


def preflight(cfg: TrainConfig, target: RayTarget) -> RayTarget:
    """Everything the client can check; returns the target with the address and storage filled in."""
    require_ray()
    address = target.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise TrainingError("say which Ray cluster to use: --ray-address http://HOST:8265 (its dashboard) "
                            "or the RAY_ADDRESS environment variable")
    connect(address)
    storage = target.storage or default_storage(address)
    probe_storage(storage)
    target = target.model_copy(update={"address": address, "storage": storage})
    plan_base(cfg, target)
    return target


def require_ray() -> None:
    try:
        import ray.job_submission  # noqa: F401
        import ray.train  # noqa: F401
    except ImportError:
        raise TrainingError(f"--target ray needs Ray (Jobs and Train): {INSTALL_HINT}") from None


def connect(address: str) -> Any:
    """A JobSubmissionClient for the cluster's dashboard, or one line saying it cannot be reached."""
    require_ray()
    from ray.job_submission import JobSubmissionClient

    hint = ("start one with `ray start --head --dashboard-host 0.0.0.0` (dashboard on port 8265), or pass the "
            "dashboard's http://HOST:8265 with --ray-address or RAY_ADDRESS")
    url = urlparse(address if "://" in address else f"http://{address}")
    if url.scheme in ("http", "https") and url.hostname:
        try:  # the SDK's own check has no timeout: a black-holed host would hang the CLI
            socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 8265)), 10).close()
        except OSError as e:
            raise TrainingError(f"cannot reach a Ray cluster at {address} ({e.strerror or e}); {hint}") from None
    try:
        return JobSubmissionClient(address)
    except Exception as e:  # noqa: BLE001 - ConnectionError, version mismatch, bad URL: all one message
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TrainingError(f"cannot reach a Ray cluster at {address} ({reason}); {hint}") from None


def default_storage(address: str) -> str:
    """A folder in the data dir when the cluster runs on this machine; a remote one needs --storage."""
    from engine.store import data_dir

    host = urlparse(address if "://" in address else f"http://{address}").hostname or ""
    if host in ("127.0.0.1", "localhost", "::1", "0.0.0.0", socket.gethostname()):
        return str(data_dir() / "ray-storage")
    raise TrainingError(f"the Ray cluster at {address} is not on this machine: pass --storage with a folder both "
                        "sides mount or an object-store URI (s3://BUCKET/PATH, gs://...) that this machine and the "
                        "cluster can read and write")


def probe_storage(storage: str) -> None:
    """Write, read back and delete a small file on the storage; one clear line if any of it fails."""
    fs, root = storage_fs(storage)
    probe = f"{root.rstrip('/')}/.subterra-probe-{uuid.uuid4().hex[:8]}"
    try:
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"subterra")
        with fs.open_input_stream(probe) as f:
            ok = f.read() == b"subterra"
        fs.delete_file(probe)
    except Exception as e:  # noqa: BLE001 - pyarrow raises OSError, ArrowInvalid, ... for the same mistake
        ok, why = False, str(e).splitlines()[0] if str(e) else type(e).__name__
    else:
        why = "what was written could not be read back"
    if not ok:
        raise TrainingError(f"cannot use the storage {storage} ({why}); pass --storage with a folder this machine "
                            "and every Ray node can write (a shared mount), or an object-store URI pyarrow can open "
                            "(s3://BUCKET/PATH with credentials in the environment, gs://...)")


def storage_fs(storage: str) -> tuple[Any, str]:
    """pyarrow's file system for a folder or URI, and the path inside it."""
    import pyarrow.fs

    try:
        if "://" not in storage:
            return pyarrow.fs.LocalFileSystem(), str(Path(storage).expanduser().resolve())
        fs, path = pyarrow.fs.FileSystem.from_uri(storage)
        return fs, path
    except Exception as e:  # noqa: BLE001
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TrainingError(f"cannot use the storage {storage} ({reason}); pass --storage with a folder or an "
                            "object-store URI pyarrow can open (s3://BUCKET/PATH, gs://BUCKET/PATH)") from None


def plan_base(cfg: TrainConfig, target: RayTarget) -> BaseSource:
    """How the workers get the base model; refuses a local folder too large for a runtime environment."""
    from engine.base_model import resolve_base_model

    if "://" in cfg.base:
        fs, path = storage_fs(cfg.base)
        if fs.get_file_info(f"{path}/config.json").type.name != "File":
            raise TrainingError(f"no model at --base {cfg.base} (no config.json there); upload the model folder first")
        return BaseSource(kind="uri", ref=cfg.base)
    local = Path(resolve_base_model(cfg.base)).expanduser()
    if not local.is_dir():
        if cfg.base.startswith(("/", ".", "~")):
            raise TrainingError(f"no base model folder {cfg.base}; pass a model folder, smollm2-135m or a hub id")
        return BaseSource(kind="hub", ref=cfg.base)
    storage = target.storage or ""
    if "://" not in storage and local.resolve().is_relative_to(Path(storage).expanduser().resolve()):
        return BaseSource(kind="path", ref=str(local.resolve()))  # on the shared folder: the nodes read it there
    size = _tree_size(local)
    limit = _runtime_env_limit()
    if size > limit:
        where = f"{storage.rstrip('/')}/base/{local.name}"
        raise TrainingError(
            f"the base model {local} is {size / 2**30:.1f} GiB, more than the {limit / 2**20:.0f} MiB a Ray runtime "
            f"environment can carry; copy it to the storage ({where}) and pass --base {where}, or pass a hub id "
            "the cluster downloads")
    return BaseSource(kind="shipped", ref=str(local), size=size)


def new_submission_id(cfg: TrainConfig) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", cfg.name or Path(cfg.out).name).strip("-")[:40] or "model"
    return f"subterra-{name}-{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------------------------------------
# following a Ray job


Reporter = Callable[..., None]


def follow(job_id: int, cfg: TrainConfig, target: RayTarget, store: Any, stop: threading.Event, report: Reporter,
           log: Callable[[str], None] = print) -> dict[str, Any]:
    """Submit the job's Ray job unless the cluster already knows it, then follow it to its end.

    Returns the job result (`_status` done/failed/cancelled and `_message` for the job runner).
    """
    client = connect(target.address or "")
    row = store.get_job(job_id)
    events: dict[str, Any] = _loads(row.get("events")) or {}
    sid = target.submission_id or new_submission_id(cfg)
    known = _ray_status(client, sid)
    previous = (events.get("ray") or {})
    if known in ("FAILED", "STOPPED") and previous.get("submission_id") == sid and previous.get("status") == known:
        sid, known = new_submission_id(cfg), None  # a resume of a run that ended: run it again
    if sid != previous.get("submission_id"):
        events = {}
    target = target.model_copy(update={"submission_id": sid})
    _store_target(store, job_id, row, target)
    if known is None:
        report(progress=0.0, message=f"submitting to the Ray cluster at {target.address} (Ray job {sid})")
        submit(client, cfg, target, job_id)
        log(f"submitted Ray job {sid} to {target.address}")
    else:
        log(f"attached to Ray job {sid} ({known}) on {target.address}")
    status = _watch(client, sid, target, events, stop, report, log)
    return _outcome(client, cfg, target, status, events, report, log)


def submit(client: Any, cfg: TrainConfig, target: RayTarget, job_id: int) -> None:
    """Stage the runtime environment and submit it under `target.submission_id`."""
    from engine.store import data_dir

    sid = target.submission_id or ""
    staging = data_dir() / "ray" / sid
    try:
        stage(cfg, target, staging)
        client.submit_job(entrypoint=f"python -m engine.train.ray_worker {SPEC_FILE}", submission_id=sid,
                          runtime_env=runtime_env(staging, target),
                          metadata={"subterra_job": str(job_id), "model": cfg.name or Path(cfg.out).name})
    except TrainingError:
        raise
    except Exception as e:  # noqa: BLE001 - the SDK raises RuntimeError/ValueError with the server's text
        raise TrainingError(f"the Ray cluster at {target.address} refused the job ({str(e).splitlines()[0]})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # uploaded to the cluster by now (or failed)


def stage(cfg: TrainConfig, target: RayTarget, dest: Path) -> RayJob:
    """The runtime environment's working dir: engine/, the conversations, the base (if shipped), ray_job.json."""
    from engine.train.loop import load_records

    base = plan_base(cfg, target)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    shutil.copytree(REPO_ROOT / "engine", dest / "engine", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    with (dest / DATA_FILE).open("w", encoding="utf-8") as f:
        for rec in load_records(cfg):
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    remote_base = cfg.base
    if base.kind == "shipped":
        shutil.copytree(base.ref, dest / "base", ignore=shutil.ignore_patterns(".train", "subterra.json"))
        remote_base = "base"
    elif base.kind == "path":
        remote_base = base.ref
    remote = cfg.model_copy(update={
        "out": MODEL_DIR, "data": [DATA_FILE], "dataset": None, "base": remote_base, "deepspeed": "zero3",
        "gpus": 1 if target.gpus_per_worker else 0, "device": None, "job_id": None, "add_to_registry": False,
        "keep_state": False})
    spec = RayJob(train=remote, run_name=target.submission_id or "", storage=target.storage or "",
                  workers=target.workers, gpus_per_worker=target.gpus_per_worker,
                  cpus_per_worker=target.cpus_per_worker, base=base)
    (dest / SPEC_FILE).write_text(spec.model_dump_json(indent=2))
    return spec


def runtime_env(staging: Path, target: RayTarget) -> dict[str, Any]:
    env: dict[str, Any] = {
        "working_dir": str(staging),
        # Ray Train's print patch would echo every worker line twice; one copy of each is enough
        "env_vars": {"RAY_DEDUP_LOGS": "0", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0", "PYTHONUNBUFFERED": "1",
                     "PYTHONWARNINGS": "ignore::FutureWarning", "TOKENIZERS_PARALLELISM": "false",
                     "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"},
    }
    if target.install_requirements:
        env["pip"] = training_requirements()
    return env


def training_requirements() -> list[str]:
    """The project's own pins of what training imports (from the installed metadata, else pyproject.toml)."""
    try:
        from importlib.metadata import PackageNotFoundError, requires

        reqs = requires("subterra") or []
    except PackageNotFoundError:
        import tomllib

        reqs = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    keep = []
    for r in reqs:
        if ";" in r:  # extras' requirements carry a marker
            continue
        name = re.split(r"[<>=!~\[ ]", r, maxsplit=1)[0].strip().lower().replace("_", "-")
        if name in TRAINING_REQUIREMENTS:
            keep.append(r.replace(" ", ""))
    return keep


def _watch(client: Any, sid: str, target: RayTarget, events: dict[str, Any], stop: threading.Event,
           report: Reporter, log: Callable[[str], None]) -> str:
    """Poll status and log until the Ray job ends; returns its final status."""
    offset = int(events.get("ray_log_chars") or 0)
    lost_since: float | None = None
    stopping = False
    status = "PENDING"
    while True:
        try:
            js = client.get_job_status(sid)
            status = str(getattr(js, "value", js))
            text = client.get_job_logs(sid)
            lost_since = None
        except Exception as e:  # noqa: BLE001 - the cluster restarting or the network: keep trying a while
            lost_since = lost_since or time.monotonic()
            if time.monotonic() - lost_since > RECONNECT_S:
                raise TrainingError(f"lost the Ray cluster at {target.address} for {RECONNECT_S:.0f}s ({e}); the "
                                    f"Ray job {sid} may still run: re-attach with `subterra jobs resume`") from None
            report(message=f"lost contact with the Ray cluster at {target.address} ({type(e).__name__}); retrying")
            stop.wait(POLL_S)
            continue
        if len(text) < offset:
            offset = 0  # the cluster's log restarted
        offset = _consume(text, offset, events, log)
        events["ray"] = {"submission_id": sid, "status": status, "address": target.address,
                         "dashboard": f"{(target.address or '').rstrip('/')}/#/jobs/{sid}"}
        events["ray_log_chars"] = offset
        last = events.get("last")
        progress = events.get("progress")
        message = events.get("message") if last else f"Ray job {sid}: {status.lower()}" + (
            " (setting up the runtime environment and the workers)" if status in ("PENDING", "RUNNING") else "")
        report(progress=progress, message=message, events=events)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        if stop.is_set() and not stopping:
            stopping = True
            log(f"cancel requested: stopping Ray job {sid}")
            client.stop_job(sid)
        stop.wait(POLL_S) if not stopping else time.sleep(0.5)


def _consume(text: str, offset: int, events: dict[str, Any], log: Callable[[str], None]) -> int:
    """Handle the complete lines after `offset`: progress markers update `events`, the rest goes to the log."""
    end = text.rfind("\n") + 1
    if end <= offset:
        return offset
    for line in text[offset:end].splitlines():
        if MARK_PROGRESS in line:
            try:
                p = json.loads(line.split(MARK_PROGRESS, 1)[1])
            except ValueError:
                continue
            by_step = {e["step"]: e for e in (events.get("losses") or []) + p.get("losses", [])}
            losses = [by_step[k] for k in sorted(by_step)][-LOSSES_KEPT:]
            events.update(last=p.get("last"), evals=p.get("evals", []), losses=losses,
                          progress=p.get("progress"), message=p.get("message"))
            if p.get("message"):
                log(p["message"])
        elif MARK_ERROR in line:
            error = line.split(MARK_ERROR, 1)[1].strip()
            events.setdefault("error", error)  # the first one says why; the driver's only repeats it
            log(f"error: {error}")
        else:
            log(line)
    return end


def _outcome(client: Any, cfg: TrainConfig, target: RayTarget, status: str, events: dict[str, Any],
             report: Reporter, log: Callable[[str], None]) -> dict[str, Any]:
    sid = target.submission_id or ""
    base = {"submission_id": sid, "ray_status": status, "address": target.address}
    if status == "STOPPED":
        at = f" at step {events['last']['step']}" if events.get("last") else ""
        return {**base, "_status": "cancelled", "_message": f"cancelled: Ray job {sid} stopped{at}"}
    if status == "FAILED":
        reason = events.get("error") or _first_line(_job_message(client, sid)) or "see the log"
        return {**base, "_status": "failed", "_message": f"the Ray job {sid} failed: {reason}"}
    report(message=f"Ray job {sid} finished; copying the model from {target.storage}")
    out = fetch_model(cfg, target, events)
    prov = json.loads((out / "subterra.json").read_text())
    name = cfg.name or out.name
    log(f"model '{name}' written to {out}")
    return {**base, "out": str(out), "model": name, "steps": prov.get("steps"),
            "best_eval_loss": prov.get("best_eval_loss"), "wall_time_s": prov.get("wall_time_s"),
            "_message": f"model '{name}' written to {out} ({prov.get('steps')} steps on {target.workers} Ray "
                        f"workers, best eval loss {prov.get('best_eval_loss', float('nan')):.4f})"}


def fetch_model(cfg: TrainConfig, target: RayTarget, events: dict[str, Any] | None = None) -> Path:
    """Copy `<storage>/<submission id>/model` into `cfg.out`, complete the provenance, register the model."""
    import pyarrow.fs

    from engine.registry import register_model

    fs, root = storage_fs(target.storage or "")
    src = f"{root.rstrip('/')}/{target.submission_id}/{MODEL_DIR}"
    if fs.get_file_info(f"{src}/config.json").type.name != "File":
        raise TrainingError(f"the Ray job {target.submission_id} succeeded but {target.storage}/"
                            f"{target.submission_id}/{MODEL_DIR} holds no model; the cluster could not write to the "
                            "storage this machine reads: give --storage a location both sides share")
    out = Path(cfg.out)
    if (out / "config.json").is_file():
        raise TrainingError(f"{out} already holds a model; the compiled one stays at {src}")
    tmp = out.with_name(out.name + ".fetch")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pyarrow.fs.copy_files(src, str(tmp), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
    prov = json.loads((tmp / "subterra.json").read_text())
    prov["cluster"] = {"target": "ray", "address": target.address, "submission_id": target.submission_id,
                       "workers": target.workers, "gpus_per_worker": target.gpus_per_worker,
                       "storage": target.storage, "checkpoint": f"{target.storage}/{target.submission_id}/{MODEL_DIR}",
                       "base_dir": prov.get("base_dir"), "config": prov.get("config")}
    prov.update(config=cfg.model_dump(mode="json"), base=cfg.base, git_revision=git_revision(),
                dataset=cfg.dataset or [str(Path(p).resolve()) for p in cfg.data], base_dir=_local_base(cfg))
    (tmp / "subterra.json").write_text(json.dumps(prov, indent=2))
    (tmp / "train_config.json").write_text(cfg.model_dump_json(indent=2))
    if out.exists():
        shutil.rmtree(out)  # an empty or half-written folder (no config.json, checked above)
    tmp.rename(out)
    if cfg.add_to_registry:
        register_model(name=cfg.name or out.name, path=out, provenance=prov)
    if _is_default_storage(target.storage):
        fs.delete_dir_contents(f"{root.rstrip('/')}/{target.submission_id}", missing_dir_ok=True)
        fs.delete_dir(f"{root.rstrip('/')}/{target.submission_id}")
    return out


# ------------------------------------------------------------------------------------------------
# helpers


def _ray_status(client: Any, sid: str) -> str | None:
    """The Ray job's status, or None when the cluster does not know the submission id."""
    try:
        info = client.get_job_info(sid)
    except RuntimeError:
        return None
    return str(getattr(info.status, "value", info.status))


def _job_message(client: Any, sid: str) -> str:
    try:
        return str(client.get_job_info(sid).message or "")
    except Exception:  # noqa: BLE001
        return ""


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _store_target(store: Any, job_id: int, row: dict[str, Any], target: RayTarget) -> None:
    """Keep the submission id in the job's config, where a restarted client looks for it."""
    config = _loads(row.get("config")) or {}
    config["options"] = target.model_dump(mode="json")
    config.setdefault("target", "ray")
    store.update_job(job_id, config=config)


def _job_config(row: dict[str, Any]) -> tuple[TrainConfig, RayTarget]:
    config = _loads(row.get("config")) or {}
    if config.get("target") != "ray" or "train" not in config:
        raise TrainingError(f"job {row['id']} is not a Ray compile; `subterra jobs show {row['id']}` says what it is")
    return TrainConfig(**config["train"]).model_copy(update={"job_id": None}), RayTarget(**config["options"])


def _start_follower(cfg: TrainConfig, target: RayTarget, store: Any) -> int:
    """Without the job runner: a job row and a detached `python -m engine.train.ray_target attach ID`."""
    import subprocess

    from engine.store import data_dir

    st = store or _store()
    config = {"train": cfg.model_dump(mode="json"), "target": "ray", "options": target.model_dump(mode="json")}
    job_id = st.create_job("compile", config, name=cfg.name or Path(cfg.out).name)
    log = data_dir() / "jobs" / f"{job_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        proc = subprocess.Popen([sys.executable, "-m", "engine.train.ray_target", "attach", str(job_id)],
                                stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ,
                                     "PYTHONPATH": str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    st.update_job(job_id, pid=proc.pid, **_has(st, log=str(log)))
    return job_id


def _heartbeat(db_path: Path, job_id: int, stop: threading.Event) -> None:
    from engine.store import Store

    st = Store(db_path, seed=False)  # its own connection
    if not _has(st, heartbeat=1):
        return
    while not stop.wait(POLL_S):
        try:
            st.update_job(job_id, heartbeat=time.time())
        except Exception:  # noqa: BLE001 - a busy database must not end the follower
            pass


def _has(store: Any, **fields: Any) -> dict[str, Any]:
    """The fields the jobs table has columns for (the job runner's migration adds heartbeat, log, finished)."""
    columns = set(store.db.table("jobs").columns_dict)
    return {k: v for k, v in fields.items() if k in columns}


def _log_writer(path: str | None) -> Callable[[str], None]:
    if not path:
        return print

    def write(line: str) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    return write


def _alive(pid: int | None) -> bool:
    if not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
        stat = Path(f"/proc/{pid}/stat").read_text()
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _loads(v: Any) -> Any:
    if v is None or isinstance(v, dict):
        return v
    try:
        return json.loads(v)
    except ValueError:
        return None


def _store() -> Any:
    from engine.store import Store

    return Store(seed=False)


def _tree_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and ".train" not in f.parts)


def _runtime_env_limit() -> int:
    """What Ray can upload as a working dir (its gRPC message bound), less room for code and data."""
    try:
        from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE

        limit = int(GCS_STORAGE_MAX_SIZE)
    except ImportError:
        limit = 512 * 2**20
    return limit - 32 * 2**20


def _local_base(cfg: TrainConfig) -> str:
    from engine.base_model import resolve_base_model

    return resolve_base_model(cfg.base) if "://" not in cfg.base else cfg.base


def _is_default_storage(storage: str | None) -> bool:
    from engine.store import data_dir

    return bool(storage) and "://" not in (storage or "") and \
        Path(storage or "").resolve() == (data_dir() / "ray-storage").resolve()


def main(argv: list[str] | None = None) -> int:
    """`python -m engine.train.ray_target attach JOB_ID`: follow a Ray compile from this process."""
    from engine.errors import SubterraError

    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 2 or args[0] not in ("attach", "cancel") or not args[1].isdigit():
        print("usage: python -m engine.train.ray_target attach|cancel JOB_ID", file=sys.stderr)
        return 2
    try:
        if args[0] == "cancel":
            cancel(int(args[1]))
            return 0
        result = attach(int(args[1]))
    except SubterraError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"{result['status']}: {result['message']}")
    return 0 if result["status"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
