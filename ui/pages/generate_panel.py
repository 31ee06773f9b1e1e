"""The generate panel on a flow's page: start a generation job, watch it, browse what it wrote.

The backend, model, endpoint and API key are chosen here; the key lives only in this page's memory
and reaches the worker through its environment (`engine.jobs.generate.key_env`), never the store.
The count, concurrency and cost cap inputs come from `GenerateConfig`'s fields. Progress is read
from the job's row every second, so a reload or a second tab shows the same live job. The browser
filters the dataset's conversations; clicking a message highlights its node on the canvas, and the
canvas shows per edge how many conversations traverse it (uncovered edges in red).
"""

from __future__ import annotations

from typing import Any

from nicegui import background_tasks, run, ui

from engine.backends import backend_names
from engine.backends.base import is_local_backend
from engine.browse import ConversationView, edge_coverage, find_conversations, flow_datasets
from engine.errors import SubterraError
from engine.generate import GenerateConfig, estimate_cost
from engine.jobs import JobRecord, list_jobs
from engine.jobs.generate import KEY_ENV, key_env, start_generation
from engine.quality import dataset_quality
from ui import theme
from ui.components.config_form import ConfigForm
from ui.pages.jobs import JobHeader

FIELDS = ("n", "concurrency", "max_cost")
BACKEND_LABELS = {"scripted": "Scripted (offline, example utterances)", "local": "Local model (transformers)",
                  "anthropic": "Anthropic API", "openai": "OpenAI-compatible endpoint"}
PAGE_SIZE = 30
COVERAGE_CSS = f"""
.vue-flow__edge.st-uncovered path.vue-flow__edge-path{{stroke:{theme.ERROR};stroke-width:2.5;stroke-dasharray:6 4}}
.vue-flow__edge.st-uncovered .vue-flow__edge-text{{fill:{theme.ERROR};font-weight:700}}
"""


class GeneratePanel:
    def __init__(self, editor: Any):
        self.editor = editor
        self.store = editor.store
        self.flow_name: str = editor.flow.name
        self.api_key = ""  # in memory only
        self.job: JobRecord | None = None
        self.coverage: dict[str, int] | None = None
        self.coverage_dataset: str | None = None
        self.shown_signature: Any = None
        editor.graph_hooks.append(self.decorate)

    # -- layout ------------------------------------------------------------------------------------
    def build(self) -> None:
        ui.add_css(COVERAGE_CSS)
        with ui.column().classes("w-full gap-2").mark("generate-panel"):
            ui.label("Generate training conversations").classes("text-subtitle1 font-semibold")
            names = backend_names()
            self.backend = ui.select({b: BACKEND_LABELS.get(b, b) for b in names}, value="scripted", label="Backend",
                                     on_change=self.on_backend).classes("w-full").mark("gen-backend")
            with ui.row().classes("w-full no-wrap gap-2"):
                self.model = ui.input("Model", placeholder="the backend's default").classes("grow") \
                    .tooltip(GenerateConfig.model_fields["model"].description or "").mark("gen-model")
                self.endpoint = ui.input("Endpoint", placeholder="https://…").classes("grow") \
                    .tooltip(GenerateConfig.model_fields["base_url"].description or "").mark("gen-endpoint")
            self.key = ui.input("API key", password=True, password_toggle_button=True,
                                on_change=lambda e: setattr(self, "api_key", e.value or "")).classes("w-full") \
                .tooltip("Kept in this page's memory only; handed to the worker through its environment.") \
                .mark("gen-key")
            with ui.row().classes("w-full no-wrap gap-2"):
                with ui.column().classes("grow gap-0"):
                    self.form = ConfigForm(GenerateConfig, FIELDS, defaults={"n": 300},
                                           labels={"n": "Conversations", "max_cost": "Max cost (USD)"},
                                           marker="gen", on_change=self.update_estimate)
                with ui.column().classes("w-32 gap-0"):
                    self.seed = ui.number("Seed", value=0, step=1, format="%d", on_change=self.update_estimate) \
                        .classes("w-full").tooltip("Random seed of the paths and scenarios.").mark("gen-seed")
            self.dataset = ui.input("Dataset", value=self.default_dataset()).classes("w-full") \
                .tooltip("Name of the dataset to fill (re-using a name resumes it)").mark("gen-dataset")
            self.estimate = ui.label("").classes("text-caption text-grey-8").mark("gen-estimate")
            with ui.row().classes("items-center gap-2"):
                ui.button("Generate", icon="play_arrow", on_click=self.start).props("no-caps").mark("gen-start")
                self.actions = ui.row().classes("items-center gap-1")
            self.status_row = ui.row().classes("w-full items-center gap-2")
            self.progress = ui.linear_progress(value=0, show_value=False).props("rounded size=10px") \
                .classes("w-full").mark("gen-progress")
            self.stats = ui.label("").classes("text-body2").mark("gen-stats")
            ui.separator()
            self.browser()
        self.header = JobHeader(self.status_row, self.actions, self.poll, env=self.env)
        self.prefill()
        self.on_backend()
        self.poll()
        ui.timer(1.0, self.poll)

    def prefill(self) -> None:
        """After a reload, the form shows the settings of the flow's latest generation (never its key)."""
        jobs = list_jobs(self.store, kind="generate", flow=self.flow_name, limit=1)
        cfg = jobs[0].config.get("generate") if jobs else None
        if not cfg:
            return
        if cfg.get("backend") in self.backend.options:
            self.backend.set_value(cfg["backend"])
        self.model.set_value(cfg.get("model") or "")
        self.endpoint.set_value(cfg.get("base_url") or "")
        for k in FIELDS:
            if k in cfg:
                self.form.set(k, cfg[k])
        self.seed.set_value((cfg.get("seeds") or [0])[0])
        if cfg.get("dataset") and jobs[0].live:
            self.dataset.set_value(cfg["dataset"])

    def browser(self) -> None:
        ui.label("Conversations").classes("text-subtitle1 font-semibold")
        flow = self.editor.flow
        nodes = {n.id: f"{n.display} ({n.id})" for n in flow.nodes}
        outcomes = sorted({n.outcome or "success" for n in flow.nodes if n.role == "terminal"})
        with ui.row().classes("w-full no-wrap gap-2"):
            self.ds_select = ui.select([], label="Dataset", on_change=self.on_dataset).classes("grow") \
                .mark("browse-dataset")
            self.show_cov = ui.checkbox("Coverage on canvas", value=True, on_change=lambda: self.editor.draw()) \
                .mark("show-coverage")
        with ui.row().classes("w-full no-wrap gap-2"):
            self.f_node = ui.select(nodes, label="Path passes", clearable=True, on_change=self.refresh_list) \
                .classes("w-1/3").mark("filter-node")
            self.f_outcome = ui.select(outcomes, label="Outcome", clearable=True, on_change=self.refresh_list) \
                .classes("w-1/4").mark("filter-outcome")
            self.f_split = ui.select(["train", "eval"], label="Split", clearable=True, on_change=self.refresh_list) \
                .classes("w-1/4").mark("filter-split")
        self.f_text = ui.input("Text contains", on_change=self.refresh_list).props("clearable debounce=300") \
            .classes("w-full").mark("filter-text")
        self.cov_label = ui.label("").classes("text-caption text-grey-8").mark("coverage-text")
        self.quality = ui.column().classes("w-full gap-0").mark("data-quality")
        self.count = ui.label("").classes("text-caption text-grey-8").mark("browse-count")
        self.results = ui.column().classes("w-full gap-1").mark("conversations")
        self.load_datasets()

    # -- actions ------------------------------------------------------------------------------------
    def default_dataset(self) -> str:
        return f"{self.flow_name}-v{self.store.flow_version(self.flow_name)}"

    def config(self) -> GenerateConfig:
        values = self.form.values()
        return GenerateConfig(backend=self.backend.value, model=self.model.value or None,
                              base_url=self.endpoint.value or None, seeds=[int(self.seed.value or 0)],
                              dataset=(self.dataset.value or "").strip() or self.default_dataset(), **values)

    def on_backend(self) -> None:
        b = self.backend.value
        remote = b in KEY_ENV
        self.key.set_visibility(remote)
        self.endpoint.set_visibility(remote)
        self.model.set_visibility(b != "scripted")
        self.update_estimate()

    def update_estimate(self) -> None:
        """Re-estimate off the event loop: planning a large flow's paths takes seconds."""
        self._estimate_run = getattr(self, "_estimate_run", 0) + 1
        background_tasks.create(self._estimate(self._estimate_run), name="generate-estimate")

    async def _estimate(self, run_id: int) -> None:
        try:
            cfg = self.config()
            est = await run.io_bound(estimate_cost, self.editor.flow, cfg, model=cfg.model, backend=cfg.backend)
        except (SubterraError, ValueError) as e:
            if run_id == self._estimate_run:
                self.estimate.set_text(f"Cannot estimate: {_first_line(e)}")
            return
        if run_id != self._estimate_run:  # the form changed meanwhile: a newer estimate is on its way
            return
        price = f"≈ ${est.usd:.2f}" if est.price_known else "price unknown for this model"
        if is_local_backend(cfg.backend):
            price = "$0 (runs on this machine)"
        self.estimate.set_text(f"Estimate: {est.conversations} conversations, {est.llm_calls} LLM calls, "
                               f"~{est.usage.input_tokens + est.usage.output_tokens:,} tokens, {price}")

    async def start(self) -> None:
        if self.editor.dirty:
            self.editor.flush(force=True)  # generate from what is on the canvas
        try:
            cfg = self.config()
        except ValueError as e:
            ui.notify(f"Check the form: {_first_line(e)}", type="negative", multi_line=True)
            return
        if cfg.backend in KEY_ENV and not self.api_key and not _env_has(KEY_ENV[cfg.backend]):
            if cfg.backend == "anthropic":
                ui.notify("Enter the Anthropic API key first", type="warning")
                return
        try:
            job = await run.io_bound(start_generation, self.flow_name, cfg, key_env(cfg.backend, self.api_key))
        except SubterraError as e:
            ui.notify(str(e), type="negative", multi_line=True)
            return
        if job is None:
            return
        self.job = job
        ui.notify(f"generation job {job.id} started", type="positive")
        self.poll()

    def env(self) -> dict[str, str]:
        cfg_backend = (self.job.config.get("generate", {}).get("backend") if self.job else None) or self.backend.value
        return key_env(cfg_backend, self.api_key)

    # -- live state -----------------------------------------------------------------------------------
    def poll(self) -> None:
        jobs = list_jobs(self.store, kind="generate", flow=self.flow_name, limit=1)
        job = jobs[0] if jobs else None
        self.job = job
        sig = (job.id, job.status, job.progress, job.message) if job else None
        if sig == self.shown_signature:
            return
        moved = bool(job and (not self.shown_signature or self.shown_signature[:2] != sig[:2]))  # type: ignore[index]
        first = self.shown_signature is None
        self.shown_signature = sig
        self.show_job(job)
        if job and not first and (moved or job.live):  # started, progressing or just ended: show its dataset
            self.load_datasets(select=job.name)

    def show_job(self, job: JobRecord | None) -> None:
        self.header.show(job, f"Job {job.id} · {job.name}" if job else "")
        if job is None:
            self.progress.set_value(0)
            self.stats.set_text("No generation yet for this flow.")
            return
        self.progress.set_value(job.progress)
        p = (job.events or {}).get("progress")
        if p:
            eta = f"{p['eta_s']:.0f}s" if p.get("eta_s") is not None else "–"
            text = (f"{p['done']}/{p['total']} done · {p['failed']} failed attempts · {p['rate']:.1f}/s · "
                    f"ETA {eta} · ${p['spent_usd']:.4f} spent")
        else:
            text = job.message
        if job.status in ("failed", "cancelled"):
            text = f"{text} — {job.message}" if p else job.message
        elif job.status == "done":
            text = job.message
        self.stats.set_text(text)

    # -- browser and coverage ------------------------------------------------------------------------------
    def load_datasets(self, select: str | None = None) -> None:
        names = [d["name"] for d in flow_datasets(self.store, self.flow_name)]
        self.ds_select.set_options(names)
        if select in names:
            value = select
        elif self.ds_select.value in names:
            value = self.ds_select.value
        else:
            value = names[0] if names else None
        if self.ds_select.value != value:
            self.ds_select.set_value(value)  # on_dataset runs
        else:
            self.on_dataset()

    def on_dataset(self) -> None:
        self.refresh_coverage()
        self.refresh_quality()
        self.refresh_list()

    def refresh_quality(self) -> None:
        """The dataset's data-quality report (`subterra datasets show`): does the training data listen?"""
        ds = self.ds_select.value
        self.quality.clear()
        if not ds:
            return
        try:
            report = dataset_quality(self.store, ds)
        except SubterraError as e:
            with self.quality:
                ui.label(f"Data quality: {_first_line(e)}").classes("text-caption text-negative")
            return
        with self.quality:
            ui.label("Data quality").classes("text-caption font-semibold")
            for line in report.lines():
                key, _, value = line.strip().partition("  ")
                if line.startswith(" ") or not value:  # an example re-ask, quoted under the figures
                    ui.label(line.strip()).classes("text-caption text-grey-7 ellipsis w-full")
                    continue
                with ui.row().classes("w-full no-wrap gap-2 text-caption"):
                    ui.label(key).classes("w-36 shrink-0 text-grey-7")
                    ui.label(value.strip()).classes("text-grey-9")

    def refresh_coverage(self) -> None:
        ds = self.ds_select.value
        self.coverage = edge_coverage(self.store, self.editor.flow, ds) if ds else None
        self.coverage_dataset = ds
        if self.coverage:
            missing = [e for e, c in self.coverage.items() if c == 0]
            self.cov_label.set_text(f"Edge coverage: {len(self.coverage) - len(missing)}/{len(self.coverage)} edges"
                                    + (f"; not covered: {', '.join(missing[:8])}" + ("…" if len(missing) > 8 else "")
                                       if missing else " (every edge)"))
        else:
            self.cov_label.set_text("")
        self.editor.draw()

    def refresh_list(self) -> None:
        ds = self.ds_select.value
        self.results.clear()
        if not ds:
            self.count.set_text("No dataset yet: generate one above.")
            return
        try:
            total, convs = find_conversations(self.store, self.editor.flow, ds, node=self.f_node.value,
                                              outcome=self.f_outcome.value, split=self.f_split.value,
                                              text=self.f_text.value, limit=PAGE_SIZE)
        except SubterraError as e:
            self.count.set_text(str(e))
            return
        shown = f", first {PAGE_SIZE} shown" if total > PAGE_SIZE else ""
        self.count.set_text(f"{total} matching conversation(s){shown}")
        with self.results:
            for c in convs:
                self.conversation(c)

    def conversation(self, c: ConversationView) -> None:
        title = f"#{c.slot} · {c.split} · {len(c.path)} nodes → {c.outcome or '?'}"
        with ui.expansion(title).classes("w-full border rounded").props("dense").mark(f"conversation-{c.slot}"):
            for i, m in enumerate(c.messages):
                self.message(m, f"msg-{c.slot}-{i}")

    def message(self, m: dict[str, Any], marker: str) -> None:
        node = m.get("node")
        if m["role"] == "system":
            ui.label(f"System: {m['content']}").classes("text-caption text-grey-7")
            return
        color = theme.ROLE_COLORS["agent" if m["role"] == "assistant" else "user"]
        with ui.row().classes("w-full no-wrap items-start gap-2 cursor-pointer hover:bg-grey-2 rounded p-1") \
                .mark(f"browse-message {marker}") as row:
            ui.badge(node or "reply").style(f"background:{color} !important").classes("shrink-0")
            ui.label(m["content"]).classes("text-body2")
        if node:
            row.on("click", lambda n=node: self.highlight(n))

    def highlight(self, node_id: str) -> None:
        if node_id not in self.editor.flow.node_map:
            ui.notify(f"node '{node_id}' is no longer in the flow", type="warning")
            return
        self.editor.highlight = [node_id]
        self.editor.select("node", node_id)

    def decorate(self, graph: dict[str, Any]) -> dict[str, Any]:
        """Edge labels with their conversation counts; uncovered edges marked (a canvas graph hook)."""
        if not self.coverage or not self.show_cov.value:
            return graph
        for e in graph["edges"]:
            c = self.coverage.get(e["id"])
            if c is None:
                continue
            e["label"] = (f"{e['label']} · " if e["label"] else "") + f"{c}×"
            e["cls"] = (e["cls"] + " " + ("st-covered" if c else "st-uncovered")).strip()
        return graph


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _env_has(var: str) -> bool:
    import os

    return bool(os.environ.get(var))
