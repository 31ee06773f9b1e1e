"""`python -m engine.jobs.worker JOB_ID`: the process behind one job (started by `engine.jobs.start_job`).

Claims the queued row, heartbeats from a thread, calls the kind's entry with a `JobContext`, and
writes the final status whatever happens: done with the result, cancelled on SIGTERM, failed with
the error on any exception (a traceback goes to the log, one line to the row). Only SIGKILL or a
crash of the interpreter escapes it, and `engine.jobs.refresh` finds those by pid and heartbeat.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import traceback
from types import FrameType
from typing import Any

from engine.errors import SubterraError
from engine.jobs import HEARTBEAT_S, JobCancelled, JobContext, _finish
from engine.store import Store


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m engine.jobs.worker JOB_ID", file=sys.stderr)
        return 2
    job_id = int(args[0])
    store = Store(seed=False)
    if not store.claim_runner_job(job_id, os.getpid()):
        print(f"job {job_id} is no longer queued (cancelled before it started); nothing to do", flush=True)
        return 0
    row = store.get_job(job_id)
    ctx = JobContext(job_id, store, row)
    print(f"job {job_id} ({row['kind']}) started, pid {os.getpid()}", flush=True)
    stop_beat = threading.Event()
    threading.Thread(target=_heartbeat, args=(job_id, stop_beat), name="heartbeat", daemon=True).start()
    signal.signal(signal.SIGTERM, _on_term(ctx))
    try:
        fn = _resolve(row["entry"])
        result = fn(ctx) or {}
    except JobCancelled:
        print("cancelled", flush=True)  # the log first: whoever sees the finished row also sees its last line
        _finish(store, job_id, "cancelled", _cancel_message(store, job_id))
        return 0
    except BaseException as e:  # noqa: BLE001 - every failure must reach the row, never leave it "running"
        if ctx.stop.is_set():  # a kind that stops cleanly on cancel raises its own "stopped at ..." error
            print(f"cancelled ({e})", flush=True)
            _finish(store, job_id, "cancelled", f"cancelled: {e}" if isinstance(e, SubterraError)
                    else _cancel_message(store, job_id))
            return 0
        message = str(e) if isinstance(e, SubterraError) else f"{type(e).__name__}: {e}"
        if not isinstance(e, SubterraError):
            traceback.print_exc()
        print(f"error: {message}", flush=True)
        _finish(store, job_id, "failed", message or type(e).__name__)
        return getattr(e, "exit_code", 1)
    finally:
        stop_beat.set()
    status = result.pop("_status", "done")
    message = result.pop("_message", "done")
    print(f"{status}: {message}", flush=True)
    _finish(store, job_id, status, message, result=result, progress=1.0 if status == "done" else None)
    return 0 if status == "done" else 1


def _heartbeat(job_id: int, stop: threading.Event) -> None:
    store = Store(seed=False)  # its own connection: sqlite connections are not shared across threads
    while not stop.wait(HEARTBEAT_S):
        try:
            store.job_heartbeat(job_id)
        except Exception as e:  # noqa: BLE001 - a locked database must not kill the heartbeat
            print(f"heartbeat: {e}", file=sys.stderr, flush=True)


def _on_term(ctx: JobContext) -> Any:
    def handler(signum: int, frame: FrameType | None) -> None:
        first = not ctx.stop.is_set()
        ctx.stop.set()
        if first and ctx.graceful_stop:
            print("stop requested: finishing the current step", flush=True)
            return
        raise JobCancelled()

    return handler


def _resolve(entry: str) -> Any:
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name)


def _cancel_message(store: Store, job_id: int) -> str:
    last = store.get_job(job_id).get("message") or ""
    return "cancelled" + (f" at: {last}" if last and not last.startswith("cancelled") else "")


if __name__ == "__main__":
    sys.exit(main())
