"""The jobs page (/jobs): every background job with its status and progress; cancel, resume, open the log.

Also the small pieces the generate and compile panels share: a status badge, a log dialog, and
cancel/resume actions that never block the event loop (`engine.jobs` waits for the worker).
"""

from __future__ import annotations

import time
from typing import Any

from nicegui import run, ui

from engine.errors import SubterraError
from engine.jobs import JobRecord, cancel_job, get_job, list_jobs, log_tail, resume_job
from engine.store import Store
from ui.frame import frame

STATUS_COLORS = {"queued": "grey-7", "running": "primary", "done": "positive", "failed": "negative",
                 "cancelled": "warning"}
POLL_SECONDS = 1.0


def create() -> None:
    @ui.page("/jobs")
    def jobs_page() -> None:
        with frame("Jobs"):
            JobsPage(Store(seed=False)).build()


class JobsPage:
    def __init__(self, store: Store):
        self.store = store
        self.signature: Any = None
        self.rows: dict[int, dict[str, Any]] = {}

    def build(self) -> None:
        with ui.row().classes("w-full items-center"):
            ui.label("Background jobs").classes("text-h6")
            ui.space()
            ui.label("Generation, compilation and evaluation run in their own processes: closing the page "
                     "leaves them running.").classes("text-caption text-grey-7")
        self.table = ui.column().classes("w-full gap-1").mark("jobs-table")
        self.poll()
        ui.timer(POLL_SECONDS, self.poll)

    def poll(self) -> None:
        """Rows are rebuilt when a job appears or changes status; progress, duration and message update
        in place, so a click on Cancel never lands on a row that is being replaced."""
        jobs = list_jobs(self.store, limit=200)
        sig = [(j.id, j.status, bool(j.log)) for j in jobs]
        if sig != self.signature:
            self.signature = sig
            self.rows = {}
            self.table.clear()
            with self.table:
                if not jobs:
                    ui.label("No jobs yet: start a generation or a compile from a flow's page.").mark("no-jobs")
                    return
                with ui.row().classes("w-full no-wrap text-caption text-grey-7 font-semibold px-2"):
                    for text, w in (("#", "w-10"), ("kind", "w-20"), ("flow", "w-32"), ("status", "w-24"),
                                    ("progress", "w-32"), ("started", "w-36"), ("duration", "w-20"),
                                    ("message", "grow")):
                        ui.label(text).classes(w)
                for j in jobs:
                    self.rows[j.id] = self.row(j)
        for j in jobs:
            w = self.rows.get(j.id)
            if w:
                w["bar"].set_value(j.progress)
                w["pct"].set_text(f"{j.progress:.0%}")
                w["dur"].set_text(_dur(j.duration_s))
                w["msg"].set_text(j.message)
                w["msg_tip"].set_text(j.message)

    def row(self, j: JobRecord) -> dict[str, Any]:
        with ui.row().classes("w-full no-wrap items-center px-2 py-1 border-b hover:bg-grey-1").mark(f"job-{j.id}"):
            ui.label(str(j.id)).classes("w-10")
            ui.label(j.kind).classes("w-20").mark("job-kind")
            flow = f"{j.flow}@{j.flow_version}" if j.flow and j.flow_version else (j.flow or "-")
            if j.flow:
                ui.link(flow, f"/flow/{j.flow}").classes("w-32 truncate")
            else:
                ui.label(flow).classes("w-32")
            with ui.element("div").classes("w-24"):
                status_badge(j)
            with ui.row().classes("w-32 items-center no-wrap gap-1"):
                bar = ui.linear_progress(value=j.progress, show_value=False).props("rounded size=8px").classes("w-20")
                pct = ui.label(f"{j.progress:.0%}").classes("text-caption")
            ui.label(_when(j.started or j.created)).classes("w-36 text-caption")
            dur = ui.label(_dur(j.duration_s)).classes("w-20 text-caption")
            msg = ui.label(j.message).classes("grow text-body2 truncate").mark("job-message")
            with msg:
                tip = ui.tooltip(j.message)
            job_actions(j, self.poll)
        return {"bar": bar, "pct": pct, "dur": dur, "msg": msg, "msg_tip": tip}


def status_badge(j: JobRecord) -> Any:
    return ui.badge(j.status, color=STATUS_COLORS.get(j.status, "grey")).mark(f"status-{j.status}")


class JobHeader:
    """A job's label, status badge and actions, rebuilt only when the job or its status changes.

    Progress polls arrive every second and a fast compile changes its step each time; rebuilding the
    buttons on every poll would drop a click that lands while the old button is being replaced."""

    def __init__(self, status_row: Any, actions: Any, after: Any = None, env: Any = None):
        self.status_row, self.actions, self.after, self.env = status_row, actions, after, env
        self.key: Any = None

    def show(self, j: JobRecord | None, label: str = "") -> None:
        key = None if j is None else (j.id, j.status, bool(j.log), label)
        if key == self.key:
            return
        self.key = key
        self.status_row.clear()
        self.actions.clear()
        if j is None:
            return
        with self.status_row:
            if label:
                ui.label(label).classes("text-caption")
            status_badge(j)
        with self.actions:
            job_actions(j, self.after, self.env)


def job_actions(j: JobRecord, after: Any = None, env: Any = None) -> None:
    """Cancel (live jobs), resume (failed or cancelled ones) and the log, for one job."""
    if j.live:
        ui.button("Cancel", icon="stop", on_click=lambda: cancel(j.id, after)) \
            .props("flat dense no-caps color=negative").mark("cancel-job")
    if j.resumable:
        ui.button("Resume", icon="play_arrow", on_click=lambda: resume(j.id, after, env() if env else None)) \
            .props("flat dense no-caps").mark("resume-job")
    if j.log:
        ui.button("Log", icon="article", on_click=lambda: show_log(j.id)).props("flat dense no-caps").mark("job-log")


async def cancel(job_id: int, after: Any = None) -> None:
    try:
        job = await run.io_bound(cancel_job, job_id)
    except SubterraError as e:
        ui.notify(str(e), type="warning")
        return
    if job is not None:
        ui.notify(f"job {job_id} {job.status}", type="info")
    if after:
        after()


async def resume(job_id: int, after: Any = None, env: dict[str, str] | None = None) -> None:
    try:
        await run.io_bound(resume_job, job_id, env)
    except SubterraError as e:
        ui.notify(str(e), type="negative", multi_line=True)
        return
    ui.notify(f"job {job_id} resumed", type="positive")
    if after:
        after()


def show_log(job_id: int) -> None:
    job = get_job(job_id)
    with ui.dialog() as dialog, ui.card().classes("w-[900px] max-w-full"):
        ui.label(f"Job {job.id} · {job.kind} · {job.status}").classes("text-subtitle1 font-semibold")
        ui.label(job.log or "").classes("text-caption text-grey-7")
        ui.code(log_tail(job.log, 300) or "(the log is empty)", language="text").classes("w-full") \
            .style("max-height: 60vh; overflow: auto").mark("log-text")
        ui.button("Close", on_click=dialog.close).props("flat")
    dialog.open()


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.1f} min"
