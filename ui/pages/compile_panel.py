"""The compile panel on a flow's page: train a model from one of the flow's datasets, watch the loss,
and the registry of the flow's models.

The inputs come from `TrainConfig`'s fields (base, epochs, max steps, lr, batch size, precision);
the targets from `engine.jobs.compile.TARGETS` (this machine, DeepSpeed, a launch bundle, and any
cluster target registered there). The job's row carries the loss curve (`events`), read every
second into a plotly chart, so the chart keeps growing across reloads. A finished model offers the
chat on it (`/chat?model=NAME`). A model compiled from an older flow version than the canvas's is
marked stale, with the diff.

The "Ray cluster" target adds its own section, from `RayTarget`'s fields (the CLI's `--ray-address`,
`--workers`, `--gpus-per-worker`, `--storage`; the address defaults to $RAY_ADDRESS as there). It is
started as the CLI starts it, through `submit_ray_compile`, which checks the address and the storage
before the job exists and says in one line what is wrong.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any
from urllib.parse import quote

from nicegui import run, ui
from pydantic import ValidationError

from engine.browse import flow_datasets, model_staleness
from engine.errors import SubterraError
from engine.jobs import JobRecord, list_jobs
from engine.jobs.compile import start_compile, target_status
from engine.registry import list_models
from engine.store import data_dir
from engine.train.config import TrainConfig
from engine.train.presets import PRESETS, apply_preset, default_preset, get_preset
from engine.train.ray_target import RayTarget, submit_ray_compile
from ui import theme
from ui.components.config_form import ConfigForm
from ui.pages.jobs import JobHeader

FIELDS = ("base", "epochs", "max_steps", "lr", "batch_size", "precision")
RAY_FIELDS = ("address", "workers", "gpus_per_worker", "storage")  # the CLI's flags (engine.cli.ray_compile)
RAY_LABELS = {"address": "Ray address", "workers": "Workers", "gpus_per_worker": "GPUs per worker",
              "storage": "Storage"}


class CompilePanel:
    def __init__(self, editor: Any):
        self.editor = editor
        self.store = editor.store
        self.flow_name: str = editor.flow.name
        self.job: JobRecord | None = None
        self.signature: Any = None
        self.gen_signature: Any = None  # the flow's latest generation job, to reload datasets when it changes
        self.chart: ui.plotly | None = None
        self.models_signature: Any = None

    # -- layout ------------------------------------------------------------------------------------
    def build(self) -> None:
        with ui.column().classes("w-full gap-2").mark("compile-panel"):
            ui.label("Compile a model").classes("text-subtitle1 font-semibold")
            with ui.row().classes("w-full no-wrap gap-2"):
                self.dataset = ui.select([], label="Dataset", on_change=self.on_dataset).classes("grow") \
                    .mark("compile-dataset")
                ui.button(icon="refresh", on_click=self.load_datasets).props("flat round dense") \
                    .tooltip("Reload the flow's datasets")
            self.name = ui.input("Model name").classes("w-full").mark("compile-name") \
                .tooltip(TrainConfig.model_fields["name"].description or "")
            self.preset = ui.select({p.name: f"{p.name}: {p.summary}" for p in PRESETS.values()},
                                    value=default_preset(), label="Preset", on_change=self.on_preset) \
                .classes("w-full").mark("compile-preset")
            with ui.grid(columns=2).classes("w-full gap-x-3 gap-y-0"):
                self.form = ConfigForm(TrainConfig, FIELDS, marker="compile", defaults=self._preset_values(),
                                       labels={"base": "Base model", "lr": "Learning rate", "max_steps": "Max steps"})
            self.form.inputs["base"].classes("col-span-2")
            targets = target_status()
            self.targets = {t.name: t for t, _ in targets}
            options = {t.name: t.label + (f" (unavailable: {why})" if why else "") for t, why in targets}
            self.target = ui.select(options, value="local", label="Target", on_change=self.on_target) \
                .classes("w-full").mark("compile-target")
            self.target_help = ui.label("").classes("text-caption text-grey-7")
            self.bundle_dest = ui.input("Bundle folder").classes("w-full").mark("compile-bundle-dest")
            with ui.grid(columns=3).classes("w-full gap-x-3 gap-y-0").mark("compile-ray") as self.ray_box:
                self.ray_form = ConfigForm(RayTarget, RAY_FIELDS, marker="compile-ray", labels=RAY_LABELS,
                                           defaults={"address": os.environ.get("RAY_ADDRESS")})
            for name in ("address", "storage"):
                self.ray_form.inputs[name].classes("col-span-3")
            with ui.row().classes("items-center gap-2"):
                ui.button("Compile", icon="memory", on_click=self.start).props("no-caps").mark("compile-start")
                self.actions = ui.row().classes("items-center gap-1")
            self.status_row = ui.row().classes("w-full items-center gap-2")
            self.progress = ui.linear_progress(value=0, show_value=False).props("rounded size=10px") \
                .classes("w-full").mark("compile-progress")
            self.stats = ui.label("").classes("text-body2").mark("compile-stats")
            self.chart_box = ui.column().classes("w-full")
            self.chat_box = ui.row().classes("w-full items-center")
            ui.separator()
            ui.label("Models of this flow").classes("text-subtitle1 font-semibold")
            self.registry = ui.column().classes("w-full gap-1").mark("registry")
        self.header = JobHeader(self.status_row, self.actions, self.poll)
        self.on_target()
        self.load_datasets()
        self.prefill()
        self.poll()
        ui.timer(1.0, self.poll)

    def prefill(self) -> None:
        """After a reload, the form shows the settings of the flow's latest compile (the running one)."""
        jobs = list_jobs(self.store, kind="compile", flow=self.flow_name, limit=1)
        if not jobs or "train" not in jobs[0].config:
            return
        cfg = jobs[0].config["train"]
        for k in FIELDS:
            if k in cfg:
                self.form.set(k, cfg[k])
        if cfg.get("dataset") in self.ds_rows:
            self.dataset.set_value(cfg["dataset"])
        if cfg.get("name"):
            self.name.set_value(cfg["name"])
        if jobs[0].config.get("target") in self.targets:
            self.target.set_value(jobs[0].config["target"])
        if jobs[0].config.get("target") == "ray":
            for k, v in (jobs[0].config.get("options") or {}).items():
                if k in RAY_FIELDS and v is not None:
                    self.ray_form.set(k, v)

    # -- form ------------------------------------------------------------------------------------------
    def load_datasets(self) -> None:
        rows = flow_datasets(self.store, self.flow_name)
        self.ds_rows = {d["name"]: d for d in rows}
        self.dataset.set_options({d["name"]: f"{d['name']} · v{d['flow_version']} · {d['conversations']} conversations"
                                  for d in rows})
        if self.dataset.value not in self.ds_rows:
            self.dataset.set_value(rows[0]["name"] if rows else None)
        else:
            self.dataset.update()  # the option labels carry the conversation counts

    def on_dataset(self) -> None:
        d = self.ds_rows.get(self.dataset.value) if self.dataset.value else None
        current = (self.name.value or "").strip()
        if d and (not current or re.fullmatch(re.escape(self.flow_name) + r"-v\d+", current)):
            self.name.set_value(f"{self.flow_name}-v{d['flow_version']}")  # the automatic name follows the dataset

    def _preset_values(self) -> dict[str, Any]:
        return {k: v for k, v in get_preset(self.preset.value).values.items() if k in FIELDS}

    def on_preset(self) -> None:
        for k, v in self._preset_values().items():
            self.form.set(k, v)

    def on_target(self) -> None:
        t = self.targets.get(self.target.value)
        self.target_help.set_text(t.help if t else "")
        self.bundle_dest.set_visibility(bool(t and not t.trains_here))
        self.ray_box.set_visibility(self.target.value == "ray")
        if t and not t.trains_here and not self.bundle_dest.value:
            self.bundle_dest.set_value(str(data_dir() / "bundles" / (self.name.value or self.flow_name)))

    def config(self) -> TrainConfig:
        ds = self.ds_rows.get(self.dataset.value or "")
        if ds is None:
            raise ValueError("pick a dataset (generate one first)")
        name = (self.name.value or "").strip() or f"{self.flow_name}-v{ds['flow_version']}"
        flow = self.store.get_flow(self.flow_name, ds["flow_version"])
        return TrainConfig(out=str(data_dir() / "models" / name), dataset=ds["name"], flow=self.flow_name,
                           flow_version=ds["flow_version"], system_prompt=flow.system_prompt or None, name=name,
                           **apply_preset(self.preset.value, self.form.values(), explicit=set(FIELDS)))

    async def start(self) -> None:
        try:
            cfg = self.config()
        except (ValueError, SubterraError) as e:
            ui.notify(f"Check the form: {str(e).splitlines()[0]}", type="negative", multi_line=True)
            return
        why = {t.name: reason for t, reason in target_status()}.get(self.target.value)
        if why:
            ui.notify(f"{self.targets[self.target.value].label} cannot run here: {why}", type="warning",
                      multi_line=True)
            return
        try:
            if self.target.value == "ray":  # as `subterra compile --target ray`: checked, then start_compile
                ray_target = RayTarget(**self.ray_form.values())
                job_id = await run.io_bound(submit_ray_compile, cfg, ray_target)
            else:
                options = {"dest": self.bundle_dest.value} if self.bundle_dest.visible else {}
                job_id = (await run.io_bound(start_compile, cfg, self.target.value, options)).id
        except ValidationError as e:
            ui.notify(f"Check the form: {_first_error(e)}", type="negative", multi_line=True)
            return
        except SubterraError as e:
            ui.notify(str(e), type="negative", multi_line=True)
            return
        ui.notify(f"compile job {job_id} started", type="positive")
        self.poll()

    # -- live state -----------------------------------------------------------------------------------
    def poll(self) -> None:
        gen = list_jobs(self.store, kind="generate", flow=self.flow_name, limit=1)
        gen_sig = (gen[0].id, gen[0].status) if gen else None
        if gen_sig != self.gen_signature:
            self.load_datasets()  # a generation started or ended: the dataset list changed
        self.gen_signature = gen_sig
        jobs = list_jobs(self.store, kind="compile", flow=self.flow_name, limit=1)
        job = jobs[0] if jobs else None
        self.job = job
        last = ((job.events or {}).get("last") or {}) if job else {}
        sig = (job.id, job.status, last.get("step"), job.message, len((job.events or {}).get("evals") or [])) \
            if job else None
        if sig != self.signature:
            self.signature = sig
            self.show_job(job)
        self.show_models()

    def show_job(self, job: JobRecord | None) -> None:
        self.header.show(job, f"Job {job.id} · {job.name}" if job else "")
        self.chat_box.clear()
        if job is None:
            self.stats.set_text("No compile yet for this flow.")
            self.progress.set_value(0)
            return
        self.progress.set_value(job.progress)
        ev = job.events or {}
        last = ev.get("last") or {}
        if last and job.live:
            self.stats.set_text(f"step {last['step']}/{last['total']} · loss {last['loss']:.4f} · "
                                f"{last['tokens_per_s']:.0f} tokens/s · ETA {_eta(last.get('eta_s'))}")
        elif last:
            self.stats.set_text(f"{job.message} · step {last['step']}/{last['total']} · "
                                f"{last['tokens_per_s']:.0f} tokens/s")
        else:
            self.stats.set_text(job.message)
        self.draw_chart(ev)
        if job.status == "done" and job.result and job.result.get("model"):
            name = job.result["model"]
            with self.chat_box:
                ui.icon("check_circle", color="positive")
                ui.label(f"'{name}' is in the registry.").classes("text-body2")
                ui.link(f"Open the chat on {name}", f"/chat?model={quote(name)}").mark("open-chat")

    def draw_chart(self, ev: dict[str, Any]) -> None:
        losses, evals = ev.get("losses") or [], ev.get("evals") or []
        if not losses and self.chart is None:
            return
        fig = {
            "data": [
                {"type": "scatter", "mode": "lines+markers", "name": "train loss", "x": [p["step"] for p in losses],
                 "y": [p["loss"] for p in losses], "line": {"color": theme.ROLE_COLORS["agent"]}},
                {"type": "scatter", "mode": "lines+markers", "name": "eval loss", "x": [p["step"] for p in evals],
                 "y": [p["eval_loss"] for p in evals], "line": {"color": theme.ROLE_COLORS["user"]}},
            ],
            "layout": {"margin": {"l": 45, "r": 10, "t": 30, "b": 40}, "xaxis": {"title": {"text": "step"}},
                       "yaxis": {"title": {"text": "loss"}}, "showlegend": True,
                       "legend": {"orientation": "h", "x": 0, "y": 1.15}},
            "config": {"displayModeBar": False},
        }
        if self.chart is None:
            with self.chart_box:
                self.chart = ui.plotly(fig).classes("w-full").style("height: 240px").mark("loss-chart")
        else:
            self.chart.figure = fig
            self.chart.update()

    def show_models(self) -> None:
        models = [m for m in list_models(self.store) if m.flow == self.flow_name]
        stale = {s.model: s for s in model_staleness(self.store, self.flow_name, models)}
        sig = [(m.name, m.created, stale[m.name].head_version if m.name in stale else None) for m in models]
        if sig == self.models_signature:
            return
        self.models_signature = sig
        self.registry.clear()
        with self.registry:
            if not models:
                ui.label("No models compiled from this flow yet.").classes("text-caption text-grey-7")
            for m in models:
                s = stale.get(m.name)
                meta = m.meta
                loss = meta.get("best_eval_loss")
                with ui.card().classes("w-full p-2").mark(f"model-{m.name}"):
                    with ui.row().classes("w-full items-center gap-2"):
                        ui.label(m.name).classes("font-semibold")
                        ui.label(f"{m.flow}@{m.flow_version}").classes("text-caption")
                        if s and s.stale:
                            ui.badge(f"stale: flow is at v{s.head_version}", color="warning").mark("stale")
                        else:
                            ui.badge("current", color="positive").mark("current")
                        ui.space()
                        ui.link("Chat", f"/chat?model={quote(m.name)}").mark("model-chat")
                    ui.label(f"dataset {m.dataset or '-'} · {meta.get('steps', '-')} steps · eval loss "
                             f"{'-' if loss is None else f'{loss:.4f}'} · {meta.get('wall_time_s', 0):.0f}s · "
                             f"base {m.base or '-'} · rev {(meta.get('git_revision') or '-')[:10]} · "
                             f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(m.created))}") \
                        .classes("text-caption text-grey-8").mark("provenance")
                    if s and s.stale:
                        with ui.expansion(f"What changed since v{s.flow_version} ({len(s.changes)})") \
                                .props("dense").classes("w-full").mark("stale-diff"):
                            for line in s.changes[:60]:
                                ui.label(line).classes("text-caption font-mono")


def _first_error(e: ValidationError) -> str:
    """`Workers: Input should be greater than or equal to 1` for the form's first bad field."""
    err = e.errors()[0]
    name = str(err["loc"][0]) if err.get("loc") else ""
    return f"{RAY_LABELS.get(name, name)}: {err['msg']}" if name else err["msg"]


def _eta(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.1f} min"
