"""The Evaluate tab of /chat (also /chat?tab=evaluate): run an evaluation as a job, watch its progress
(it survives a refresh: the job lives in the store and a worker process), read its report in the page
(the report's plotly charts, its tables, judge criteria, statistics, cost and break-even; HTML and JSON
downloads), list the flow's evaluations and compare any two metric by metric.

The inputs come from `EvalConfig`'s fields; the job is `engine.jobs.evaluate`; the report is the typed
`EvalReport` (`engine.evaluate.schema`), its charts `engine.evaluate.report.figures`, the comparison
`engine.evaluate.compare`.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from nicegui import ui
from pydantic import ValidationError

from engine.errors import SubterraError
from engine.evaluate.compare import compare_reports
from engine.evaluate.report import figures, render_html
from engine.evaluate.schema import EvalConfig, EvalReport, judge_choices, simulator_choices
from engine.evaluate.stats import Summary
from engine.jobs import JobRecord, get_job, list_jobs
from engine.jobs.evaluate import start_evaluation
from engine.jobs.generate import key_env
from engine.store import Store
from ui.components.config_form import ConfigForm
from ui.pages.jobs import job_actions, status_badge

FIELDS = ("scenarios", "repeats", "customer_first", "concurrency", "max_turns", "agent_max_tokens", "seed",
          "simulator_model", "judge_model", "judge2_model")


def default_agents(flow: str, model: str | None) -> list[str]:
    """The compiled model (when it resolves) and the in-context agent on the bundled model."""
    out = []
    if model:
        try:
            from engine.agents.session import resolve_model

            out.append(f"compiled:{resolve_model(model)}")
        except SubterraError:
            pass
    out.append(f"in-context:{flow}@local")
    return out


class EvaluatePanel:
    def __init__(self, store: Store, flow: str, model: str | None = None):
        self.store, self.flow, self.model = store, flow, model
        self.job: JobRecord | None = None
        self.job_sig: Any = None
        self.shown: int | None = None

    # -- layout -------------------------------------------------------------------------------------
    def build(self) -> None:
        with ui.row().classes("w-full no-wrap items-start gap-4").mark("eval-panel"):
            with ui.card().classes("w-96 shrink-0").mark("eval-form"):
                ui.label(f"Evaluate on {self.flow}").classes("text-subtitle1 font-semibold").mark("eval-title")
                self.agents = ui.textarea("Agents (one spec per line)", value="\n".join(
                    default_agents(self.flow, self.model))).classes("w-full").props("autogrow") \
                    .mark("eval-agents").tooltip(EvalConfig.model_fields["agents"].description or "")
                with ui.grid(columns=2).classes("w-full gap-x-3 gap-y-0"):
                    self.form = ConfigForm(EvalConfig, FIELDS, marker="eval", defaults={"scenarios": 3})
                    self.simulator = ui.select(simulator_choices(), value="scripted", label="Simulated user") \
                        .classes("w-full").mark("eval-simulator")
                    self.judge = ui.select(judge_choices(), value="none", label="Judge").classes("w-full") \
                        .mark("eval-judge")
                    self.judge2 = ui.select(judge_choices(), value="none", label="Second judge").classes("w-full") \
                        .mark("eval-judge2")
                self.key = ui.input("API key (kept in this page's memory only)", password=True,
                                    password_toggle_button=True).classes("w-full").mark("eval-key") \
                    .tooltip("Handed to the job's worker environment for the LLM simulator or judges; never stored")
                ui.button("Run evaluation", icon="play_arrow", on_click=self.run).props("no-caps").mark("eval-run")
                self.error = ui.label("").classes("text-negative").mark("eval-error")
                self.error.set_visibility(False)
            with ui.column().classes("grow min-w-0 gap-3"):
                self.progress_box = ui.column().classes("w-full").mark("eval-progress")
                self.list_box = ui.column().classes("w-full").mark("eval-list")
                self.compare_box = ui.column().classes("w-full").mark("eval-compare")
                self.report_box = ui.column().classes("w-full").mark("eval-report")
        jobs = list_jobs(self.store, kind="evaluate", flow=self.flow, limit=1)
        self.job = jobs[0] if jobs else None
        self.show_job()
        self.show_list()
        ui.timer(1.0, self.poll)

    # -- running --------------------------------------------------------------------------------------
    def config(self) -> EvalConfig:
        specs = [s.strip() for s in (self.agents.value or "").splitlines() if s.strip()]
        values = {k: v for k, v in self.form.values().items() if v is not None}
        return EvalConfig(flow=self.flow, agents=specs, simulator=self.simulator.value, judge=self.judge.value,
                          judge2=self.judge2.value, **values)

    def run(self) -> None:
        self.error.set_visibility(False)
        try:
            config = self.config()
            env: dict[str, str] = {}
            for backend in {config.simulator, config.judge, config.judge2}:
                env |= key_env(backend, (self.key.value or "").strip() or None)
            self.job = start_evaluation(config, env, self.store)
        except ValidationError as e:
            err = e.errors()[0]
            self.fail(f"{'.'.join(str(x) for x in err['loc']) or 'config'}: {err['msg']}")
            return
        except SubterraError as e:
            self.fail(str(e))
            return
        self.job_sig = None
        self.show_job()

    def fail(self, text: str) -> None:
        self.error.set_text(text.splitlines()[0])
        self.error.set_visibility(True)

    def poll(self) -> None:
        if self.job is None:
            return
        was_live = self.job.live
        self.job = get_job(self.job.id, self.store)
        self.show_job()
        if was_live and not self.job.live:
            self.show_list()
            ev = (self.job.result or {}).get("evaluation")
            if self.job.status == "done" and ev:
                self.open(int(ev))

    def show_job(self) -> None:
        """The job's card is rebuilt when the job or its status changes; progress and message update in
        place, so a Cancel click never lands on a button that is being replaced."""
        j = self.job
        sig = None if j is None else (j.id, j.status, bool(j.log))
        if sig != self.job_sig:
            self.job_sig = sig
            self.progress_box.clear()
            if j is None:
                return
            with self.progress_box, ui.card().classes("w-full py-2").mark(f"eval-job-{j.id}"):
                with ui.row().classes("w-full items-center gap-2"):
                    ui.label(f"Evaluation job {j.id}: {j.name}").classes("font-semibold")
                    status_badge(j)
                    ui.space()
                    job_actions(j, self.poll)
                self.job_bar = ui.linear_progress(value=j.progress, show_value=False).classes("w-full") \
                    .mark("eval-progress-bar")
                self.job_message = ui.label(j.message or j.status).classes("text-caption").mark("eval-message")
        if j is not None:
            self.job_bar.set_value(j.progress)
            self.job_message.set_text(j.message or j.status)

    # -- the flow's evaluations -------------------------------------------------------------------
    def show_list(self) -> None:
        rows = self.store.list_evaluations(self.flow)
        self.list_box.clear()
        self.compare_box.clear()
        with self.list_box:
            ui.label(f"Evaluations of {self.flow}").classes("text-subtitle1 font-semibold")
            if not rows:
                ui.label("None yet: run one on the left.").classes("text-caption").mark("eval-none")
                return
            for r in rows:
                when = dt.datetime.fromtimestamp(r["created"]).strftime("%Y-%m-%d %H:%M")
                with ui.row().classes("w-full items-center gap-3").mark(f"eval-row-{r['id']}"):
                    ui.label(f"#{r['id']} {r['name']}").classes("font-medium")
                    ui.label(f"flow version {r['flow_version'] or 'file'} · {when}").classes("text-caption")
                    ui.button("Open", on_click=lambda i=r["id"]: self.open(i)).props("flat dense no-caps") \
                        .mark("eval-open")
        if len(rows) < 2:
            return
        options = {r["id"]: f"#{r['id']} {r['name']}" for r in rows}
        with self.compare_box, ui.row().classes("w-full items-end gap-2"):
            a = ui.select(options, value=rows[1]["id"], label="First (older)").classes("w-56").mark("compare-a")
            b = ui.select(options, value=rows[0]["id"], label="Second (newer)").classes("w-56").mark("compare-b")
            ui.button("Compare", icon="compare_arrows", on_click=lambda: self.compare(a.value, b.value)) \
                .props("no-caps outline").mark("compare")

    def load(self, evaluation_id: int) -> EvalReport:
        return EvalReport.model_validate(self.store.get_evaluation(evaluation_id)["report"])

    def open(self, evaluation_id: int) -> None:
        try:
            report = self.load(evaluation_id)
        except (SubterraError, ValidationError) as e:
            self.fail(f"evaluation {evaluation_id} cannot be shown: {str(e).splitlines()[0]}")
            return
        self.shown = evaluation_id
        self.report_box.clear()
        with self.report_box:
            report_view(report, evaluation_id)

    def compare(self, first: int, second: int) -> None:
        if first == second:
            ui.notify("Pick two different evaluations", type="warning")
            return
        result = compare_reports(self.load(first), self.load(second))
        self.report_box.clear()
        with self.report_box, ui.card().classes("w-full").mark("comparison"):
            ui.label(f"{result.first} → {result.second}").classes("text-h6")
            if not result.pairs:
                ui.label("No agent of one run matches an agent of the other (by spec or kind).")
                return
            rows = [{"agent": short(d.agent), "metric": d.metric, "first": _num(d.first), "second": _num(d.second),
                     "delta": _num(d.delta), "verdict": d.verdict} for d in result.deltas]
            table = ui.table(columns=_cols("agent", "metric", "first", "second", "delta", "verdict"), rows=rows,
                             row_key="metric").classes("w-full").props("dense flat").mark("comparison-table")
            table.add_slot("body-cell-verdict", """
                <q-td :props="props"><span :class="{better: 'text-positive', worse: 'text-negative'}[props.value]
                  || 'text-grey-7'">{{ props.value }}</span></q-td>""")
            for test in result.tests:
                ui.label(f"{test.a} vs {test.b} ({test.test})").classes("text-subtitle2 mt-2")
                tests_table(test.objective, test.criteria)
            if result.unmatched:
                ui.label("Not matched: " + ", ".join(result.unmatched)).classes("text-caption")


def report_view(report: EvalReport, evaluation_id: int | None = None) -> None:
    """The report in the page: the same charts and numbers as report.html."""
    with ui.card().classes("w-full").mark("report"):
        with ui.row().classes("w-full items-center"):
            ui.label(report.name).classes("text-h6")
            ui.space()
            ui.button("HTML", icon="download", on_click=lambda: ui.download.content(
                render_html(report), f"{report.name}.html", "text/html")).props("flat no-caps").mark("download-html")
            ui.button("JSON", icon="download", on_click=lambda: ui.download.content(
                report.model_dump_json(indent=1), f"{report.name}.json", "application/json")) \
                .props("flat no-caps").mark("download-json")
        ui.label(f"Flow {report.flow.name} version {report.flow.version or 'file'} · "
                 f"{len(report.scenarios)} scenarios × "
                 f"{report.config.repeats} repeat(s) · simulator {report.provenance.simulator} · git "
                 f"{(report.provenance.git_revision or '?')[:12]}").classes("text-caption")
        ui.label("Agents").classes("text-subtitle1 mt-2")
        rows = []
        for spec, s in report.agents.items():
            rows.append({"agent": short(spec), "kind": f"{s.kind} / {short(s.model)}", "conversations": s.conversations,
                         "errors": s.errors, "success": _num(s.conformance.success.mean),
                         "valid_edge": _num(s.conformance.valid_edge_share.mean),
                         "edit": _num(s.conformance.edit_distance_norm.mean), "turns": _num(s.turns.mean),
                         "tokens": f"{_num(s.input_tokens.mean)} / {_num(s.output_tokens.mean)}",
                         "usd": _usd(s.cost_usd.mean), "failure": _pct(s.failure_rate),
                         "pass_k": ", ".join(f"{k}: {_num(v)}" for k, v in s.pass_k.items())})
        ui.table(columns=_cols("agent", "kind", "conversations", "errors", "success", "valid_edge", "edit", "turns",
                               "tokens", "usd", "failure", "pass_k"), rows=rows, row_key="agent") \
            .classes("w-full").props("dense flat wrap-cells").mark("agents-table")
        with ui.row().classes("w-full gap-2"):
            for fig in figures(report):
                for trace in fig.data:  # agent specs carry whole model paths: name the folder only
                    if getattr(trace, "x", None) is not None:
                        trace.x = [short(x) if isinstance(x, str) else x for x in trace.x]
                    if trace.name:
                        trace.name = short(trace.name)
                fig.update_layout(height=340, margin={"l": 40, "r": 10, "t": 50, "b": 40},
                                  legend={"orientation": "h", "y": -0.25})
                ui.plotly(fig).style("width: calc(50% - 0.5rem); min-width: 380px; height: 340px") \
                    .mark("report-chart")
        ui.label("Procedure following (objective, mean [95% CI])").classes("text-subtitle1")
        metrics = list(type(next(iter(report.agents.values())).conformance).model_fields) if report.agents else []
        crow = [{"metric": m, **{short(spec): _ci(getattr(s.conformance, m)) for spec, s in report.agents.items()}}
                for m in metrics]
        ui.table(columns=_cols("metric", *map(short, report.agents)), rows=crow, row_key="metric").classes("w-full") \
            .props("dense flat").mark("conformance-table")
        judged = {spec: s for spec, s in report.agents.items() if s.criteria}
        if judged:
            ui.label(f"Judge criteria ({', '.join(report.judges.judges)})").classes("text-subtitle1")
            jrow = [{"criterion": c, **{short(spec): _ci(s.criteria[c]) for spec, s in judged.items() if s.criteria}}
                    for c in report.criteria]
            ui.table(columns=_cols("criterion", *map(short, judged)), rows=jrow, row_key="criterion") \
                .classes("w-full") \
                .props("dense flat").mark("criteria-table")
            if report.judges.agreement:
                arow = [{"criterion": a.criterion, "n": a.n, "exact": _pct(a.exact), "within 1": _pct(a.within_one),
                         "spearman": _num(a.spearman)} for a in report.judges.agreement]
                ui.table(columns=_cols("criterion", "n", "exact", "within 1", "spearman"), rows=arow,
                         row_key="criterion").classes("w-full").props("dense flat").mark("agreement-table")
        if report.comparisons:
            ui.label("Statistics (paired by scenario, Wilcoxon signed-rank, Holm-Bonferroni)").classes("text-subtitle1")
            for comp in report.comparisons:
                ui.label(f"{short(comp.a)} vs {short(comp.b)}").classes("text-caption")
                tests_table(comp.objective, comp.criteria)
        cost_view(report)


def cost_view(report: EvalReport) -> None:
    t = report.cost.table
    ui.label("Cost").classes("text-subtitle1")
    ui.label(f"Self-hosted ${t.self_input_per_m:.4f}/M in, ${t.self_output_per_m:.4f}/M out; API "
             f"${t.api_input_per_m:.2f}/M in, ${t.api_output_per_m:.2f}/M out ({t.per_token_ratio:.1f}× per token); "
             f"one-time compile cost ${t.compile_cost:.2f}").classes("text-caption")
    api_eq = report.cost.api_equivalent_per_conversation_usd
    rows = [{"agent": short(spec), "usd": _usd(v), "api": _usd(api_eq.get(spec))}
            for spec, v in report.cost.per_conversation_usd.items()]
    ui.table(columns=_cols("agent", "usd", "api"), rows=rows, row_key="agent").classes("w-full") \
        .props("dense flat").mark("cost-table")
    if report.cost.pairs:
        prow = [{"compiled": short(p.compiled), "versus": short(p.versus),
                 "compiled_usd": _usd(p.compiled_usd_per_conversation),
                 "versus_usd": _usd(p.versus_api_usd_per_conversation), "ratio": _num(p.ratio),
                 "token_ratio": _num(p.token_ratio), "break_even": _num(p.break_even_conversations)}
                for p in report.cost.pairs]
        ui.table(columns=_cols("compiled", "versus", "compiled_usd", "versus_usd", "ratio", "token_ratio",
                               "break_even"), rows=prow, row_key="versus").classes("w-full") \
            .props("dense flat").mark("break-even-table")


def tests_table(objective: dict[str, Any], criteria: dict[str, Any] | None) -> None:
    rows = []
    for family, tests in (("objective", objective), ("criteria", criteria or {})):
        for metric, t in tests.items():
            rows.append({"family": family, "metric": metric, "n": f"{t.n_a}/{t.n_b}", "mean_diff": _num(t.mean_diff),
                         "d": _num(t.cohens_d), "p": _num(t.p_value), "p_holm": _num(t.p_holm),
                         "significant": "yes" if t.significant else "no"})
    ui.table(columns=_cols("family", "metric", "n", "mean_diff", "d", "p", "p_holm", "significant"), rows=rows,
             row_key="metric").classes("w-full").props("dense flat").mark("tests-table")


LABELS = {"valid_edge": "valid-edge share", "edit": "edit distance (norm.)", "usd": "USD / conversation",
          "failure": "failure (judged)", "pass_k": "pass^k", "api": "same tokens at API prices",
          "compiled_usd": "compiled USD/conv", "versus_usd": "versus USD/conv (API)", "ratio": "cost ratio",
          "token_ratio": "token ratio", "break_even": "break-even conversations", "mean_diff": "mean diff (a-b)",
          "d": "Cohen's d", "p_holm": "p (Holm)", "success": "success (objective)"}


def short(spec: str) -> str:
    """An agent spec with each model path shortened to its folder (`compiled:/a/b/travel` → `compiled:travel`)."""
    return re.sub(r"(?:/[^/:@\s]+)+/([^/:@\s]+)", r"\1", spec)


def _cols(*names: str) -> list[dict[str, Any]]:
    return [{"name": n, "label": LABELS.get(n, n), "field": n, "align": "left"} for n in names]


def _ci(s: Summary) -> str:
    if s.mean is None:
        return "-"
    if s.ci_low is None or s.ci_high is None:
        return _num(s.mean)
    return f"{_num(s.mean)} [{_num(s.ci_low)}, {_num(s.ci_high)}]"


def _num(x: Any) -> str:
    if x is None:
        return "-"
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def _usd(x: float | None) -> str:
    return "-" if x is None else f"${x:.6f}" if x < 0.01 else f"${x:.4f}"
