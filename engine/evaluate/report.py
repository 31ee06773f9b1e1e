"""The evaluation report as one self-contained HTML page (plotly.js embedded inline: opens offline).

Sections: a summary table per agent; judge scores with bootstrap 95% CIs per criterion and agent;
failure rates; cost per conversation (log scale); objective conformance metrics; pairwise tests;
judge agreement; and the node mapping of sample conversations (each agent message, the node it was
mapped to and the similarity). Every number also lives in report.json; this page only shows them.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

from engine.evaluate.schema import EvalReport
from engine.evaluate.stats import Summary

CONFORMANCE_SHOWN = ("valid_edge_share", "terminal_reached", "outcome_match", "success", "edit_distance_norm",
                     "unmatched_share", "one_question_share", "facts_dropped_share", "english_share")
SAMPLE_CONVERSATIONS = 2


def write_html(report: EvalReport, path: str | Path) -> Path:
    p = Path(path)
    p.write_text(render_html(report), encoding="utf-8")
    return p


def figures(report: EvalReport) -> list[go.Figure]:
    """The report's charts (judge scores when judged, failure rates, cost, procedure following); the studio
    shows the same figures."""
    return [f for f in (_criteria_figure(report), _failure_figure(report), _cost_figure(report),
                        _conformance_figure(report)) if f is not None]


def render_html(report: EvalReport) -> str:
    # the first figure carries plotly.js inline (~4 MB) so the page needs no network; the rest reuse it
    plots = [pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0), config={"displaylogo": False})
             for i, fig in enumerate(figures(report))]
    body = [
        f"<h1>{_e(report.name)}</h1>",
        f"<p>Flow <b>{_e(report.flow.name)}</b> {_version(report)}, "
        f"{len(report.scenarios)} scenarios × {report.config.repeats} repeat(s), simulator "
        f"{_e(report.provenance.simulator)}, git {_e(report.provenance.git_revision or '?')[:12]}</p>",
        "<h2>Agents</h2>", _agents_table(report),
        *[f'<div class="plot">{p}</div>' for p in plots],
        "<h2>Pairwise tests (paired by scenario index, Wilcoxon signed-rank, Holm-Bonferroni)</h2>",
        _comparisons_table(report),
        _judges_html(report),
        "<h2>Cost</h2>", _cost_html(report),
        "<h2>Node mapping (sample conversations)</h2>", _mapping_html(report),
    ]
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>" + _e(report.name) + "</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px}"
        "th{background:#f3f3f3}.agent{color:#1f5fbf}.user{color:#c06a00}.none{color:#b00}.plot{margin:1em 0}"
        "</style></head><body>" + "\n".join(body) + "</body></html>"
    )


# ----------------------------------------------------------------------------------------------
# figures


def _criteria_figure(report: EvalReport) -> go.Figure | None:
    agents = {a: s.criteria for a, s in report.agents.items() if s.criteria}
    if not agents:
        return None
    fig = go.Figure()
    for spec, crit in agents.items():
        means = [crit[c].mean for c in report.criteria]
        fig.add_bar(name=spec, x=report.criteria, y=means, error_y=_ci(crit, report.criteria))
    fig.update_layout(title="Judge scores (mean, bootstrap 95% CI)", yaxis={"range": [0, 5.5], "title": "1-5"},
                      barmode="group")
    return fig


def _failure_figure(report: EvalReport) -> go.Figure:
    specs = list(report.agents)
    fig = go.Figure()
    fig.add_bar(name="objective (no terminal / wrong outcome)", x=specs,
                y=[report.agents[a].failure_rate_objective for a in specs])
    if any(report.agents[a].failure_rate is not None for a in specs):
        fig.add_bar(name="judged (task success ≤ 3)", x=specs, y=[report.agents[a].failure_rate for a in specs])
    fig.update_layout(title="Failure rate", yaxis={"range": [0, 1], "tickformat": ".0%"}, barmode="group")
    return fig


def _cost_figure(report: EvalReport) -> go.Figure:
    specs = list(report.agents)
    fig = go.Figure()
    fig.add_bar(name="as hosted", x=specs, y=[report.agents[a].cost_usd.mean for a in specs])
    fig.add_bar(name="same tokens at API prices", x=specs, y=[report.agents[a].api_equivalent_usd.mean for a in specs])
    fig.update_layout(title="Cost per conversation (USD, log scale)", yaxis={"type": "log"}, barmode="group")
    return fig


def _conformance_figure(report: EvalReport) -> go.Figure:
    fig = go.Figure()
    for spec, s in report.agents.items():
        conf = {k: getattr(s.conformance, k) for k in CONFORMANCE_SHOWN}
        fig.add_bar(name=spec, x=list(CONFORMANCE_SHOWN), y=[conf[k].mean for k in CONFORMANCE_SHOWN],
                    error_y=_ci(conf, CONFORMANCE_SHOWN))
    fig.update_layout(title="Procedure following (objective, mean and 95% CI)", barmode="group",
                      yaxis={"range": [0, 1.05]})
    return fig


def _ci(block: dict[str, Summary], keys: Any) -> dict[str, Any]:
    hi = [_gap(block[k].ci_high, block[k].mean) for k in keys]
    lo = [_gap(block[k].mean, block[k].ci_low) for k in keys]
    return {"type": "data", "symmetric": False, "array": hi, "arrayminus": lo}


# ----------------------------------------------------------------------------------------------
# tables


def _agents_table(report: EvalReport) -> str:
    head = ["agent", "kind / model", "conversations", "errors", "turns", "words", "wall s", "tokens in/out",
            "USD / conversation", "valid-edge share", "success (objective)", "failure (judged)", "pass^k"]
    rows = []
    for spec, s in report.agents.items():
        c = s.conformance
        rows.append([
            spec, f"{s.kind} / {s.model}", s.conversations, s.errors, _m(s.turns), _m(s.words),
            _m(s.wall_s), f"{_m(s.input_tokens)} / {_m(s.output_tokens)}", _usd(s.cost_usd.mean),
            _m(c.valid_edge_share), _m(c.success), _pct(s.failure_rate),
            ", ".join(f"{k}: {_num(v)}" for k, v in s.pass_k.items()),
        ])
    return _table(head, rows)


def _comparisons_table(report: EvalReport) -> str:
    rows = []
    for comp in report.comparisons:
        for family in (comp.criteria or {}, comp.objective):
            for metric, t in family.items():
                rows.append([f"{comp.a} vs {comp.b}", metric, t.n_a, _num(t.mean_diff), _num(t.cohens_d),
                             _num(t.p_value), _num(t.p_holm), "yes" if t.significant else "no"])
    return _table(["pair", "metric", "pairs", "mean diff (a-b)", "Cohen's d", "p", "p (Holm)", "significant"], rows)


def _judges_html(report: EvalReport) -> str:
    agreement = report.judges.agreement
    if not agreement:
        return ""
    names = " vs ".join(report.judges.judges)
    rows = [[a.criterion, a.n, _pct(a.exact), _pct(a.within_one), _num(a.mean_diff), _num(a.spearman)]
            for a in agreement]
    return f"<h2>Judge agreement ({_e(names)})</h2>" + _table(
        ["criterion", "n", "exact", "within 1", "mean diff", "Spearman"], rows)


def _cost_html(report: EvalReport) -> str:
    t = report.cost.table
    lines = [f"<p>Self-hosted: ${t.self_input_per_m:.4f}/M input, ${t.self_output_per_m:.4f}/M output; "
             f"API ${t.api_input_per_m:.2f}/M input, ${t.api_output_per_m:.2f}/M output: "
             f"{t.per_token_ratio:.1f}× per token. One-time compile cost ${t.compile_cost:.2f}.</p>"]
    rows = [[p.compiled, p.versus, _usd(p.compiled_usd_per_conversation), _usd(p.versus_api_usd_per_conversation),
             _num(p.ratio), _num(p.token_ratio), _num(p.break_even_conversations)] for p in report.cost.pairs]
    if rows:
        lines.append(_table(["compiled (self-hosted)", "versus (API prices)", "compiled USD/conv", "versus USD/conv",
                             "cost ratio", "token ratio", "break-even conversations"], rows))
    return "\n".join(lines)


def _mapping_html(report: EvalReport) -> str:
    out = []
    shown: dict[str, int] = {}
    for conv in report.conversations:
        met = conv.metrics
        if shown.get(conv.agent, 0) >= SAMPLE_CONVERSATIONS or met is None:
            continue
        shown[conv.agent] = shown.get(conv.agent, 0) + 1
        mapping = iter(met.mapping)
        rows = []
        for m in conv.messages:
            if m.role == "assistant":
                node = next(mapping)
                label = node.node or f"unmatched (best {node.best})"
                cls = "agent" if node.node else "none"
                rows.append([f"<span class='{cls}'>agent</span>", _e(m.content), _e(label), f"{node.score:.2f}"])
            else:
                rows.append(["<span class='user'>user</span>", _e(m.content), "", ""])
        out.append(f"<h3>{_e(conv.agent)}, scenario {conv.scenario} (repeat {conv.repeat}): ended by "
                   f"{_e(conv.ended_by)}, terminal {_e(met.terminal)}, expected {_e(met.expected_outcome)}, "
                   f"edit distance {met.edit_distance}</h3>")
        out.append(_table(["who", "message", "node", "similarity"], rows, escape=False))
    return "\n".join(out) or "<p>No conversations.</p>"


def _table(head: list[str], rows: list[list[Any]], escape: bool = True) -> str:
    cell = _e if escape else str
    h = "".join(f"<th>{_e(x)}</th>" for x in head)
    body = "".join("<tr>" + "".join(f"<td>{cell(x)}</td>" for x in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _version(report: EvalReport) -> str:
    v = report.flow.version
    return f"version {v}" if v is not None else f"from a file (sha256 {report.provenance.flow_sha256})"


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _num(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)


def _m(summary: Summary) -> str:
    return _num(summary.mean)


def _gap(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


def _usd(x: float | None) -> str:
    return "-" if x is None else f"${x:.6f}" if x < 0.01 else f"${x:.4f}"
