"""Evaluation commands: `subterra eval` (simulated users, judge, metrics, report) and `subterra cost`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from engine.cli.options import config_values, options_from
from engine.cli.progress import FractionLine
from engine.errors import EvaluationError
from engine.evaluate.cost import CostInputs, format_table, price_table
from engine.evaluate.schema import EvalConfig, EvalReport, judge_choices, simulator_choices


def register(cli: click.Group) -> None:
    cli.add_command(eval_cmd)
    cli.add_command(cost_cmd)


def _cost_options(fn: Any) -> Any:
    return options_from(CostInputs, *CostInputs.model_fields, bounds=False)(fn)


def _inputs(**kw: float) -> CostInputs:
    try:
        return CostInputs(**kw)
    except ValidationError as e:
        err = e.errors()[0]
        flag = "--" + str(err["loc"][0]).replace("_", "-")
        raise EvaluationError(f"{flag}: {err['msg']}") from None


@click.command("cost")
@_cost_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (includes per_token_ratio).")
def cost_cmd(as_json: bool, **kw: float) -> int:
    """Self-hosting vs API price per million tokens, the per-token ratio and the compile cost.

    Defaults are the paper's inputs: an A100 at $2.50/h doing 15K prefill and 3K decode tokens/s
    vs an API at $3/$15 per million tokens, about 65x cheaper per token.
    """
    table = price_table(_inputs(**kw))
    if as_json:
        click.echo(json.dumps(table.model_dump(mode="json"), indent=2))
    else:
        click.echo(format_table(table))
    return 0


@click.command("eval")
@click.argument("flow_ref", metavar="FLOW")
@click.option("--agent", "agents", multiple=True, required=True, metavar="SPEC",
              help="Agent to evaluate (repeat): compiled:DIR, in-context:FLOW@backend[:model], "
                   "orchestrator:FLOW@backend.")
@options_from(EvalConfig, "scenarios", "repeats", "simulator", "simulator_model", "judge", "judge_model", "judge2",
              "judge2_model", "concurrency", "customer_first", "max_turns", "seed", "agent_temperature",
              "agent_max_tokens", "threshold", "margin", "name",
              choices={"simulator": simulator_choices, "judge": judge_choices, "judge2": judge_choices})
@click.option("--out", "out", default=None, metavar="DIR",
              help="Folder for report.html and report.json [default: SUBTERRA_HOME/reports/NAME-TIMESTAMP].")
@_cost_options
@click.option("--json", "as_json", is_flag=True, help="Print the per-agent summary as JSON.")
def eval_cmd(flow_ref: str, agents: tuple[str, ...], as_json: bool, **kw: Any) -> int:
    """Evaluate agents on FLOW with simulated users; write DIR/report.html and DIR/report.json."""
    from engine.evaluate.run import run_evaluation

    cost_kw = {k: v for k, v in kw.items() if k in CostInputs.model_fields}
    if kw.get("out") is None:  # never the current folder: the data dir, like compiled models
        kw["out"] = str(_default_out(kw.get("name") or f"{Path(flow_ref).stem.split('@')[0]}-eval"))
    config = EvalConfig(flow=flow_ref, agents=list(agents), cost=_inputs(**cost_kw), **config_values(kw, EvalConfig))
    progress = FractionLine("evaluate")
    try:
        result = run_evaluation(config, progress=progress)
    finally:
        progress.close()
    report = result.report
    if as_json:
        body = report.model_dump(mode="json", include={"agents", "comparisons", "cost"})
        click.echo(json.dumps({"evaluation": result.id, "html": result.html_path, "json": result.json_path, **body},
                              indent=2))
    else:
        click.echo(summary_lines(report))
        click.echo(f"report: {result.html_path} and {result.json_path} (evaluation {result.id} in the store)")
    return 0


def _default_out(name: str) -> Path:
    from engine.store import data_dir

    return data_dir() / "reports" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def summary_lines(report: EvalReport) -> str:
    lines = []
    for spec, s in report.agents.items():
        c = s.conformance
        parts = [f"{spec}: {s.conversations} conversations ({s.errors} errors)",
                 f"valid-edge {_f(c.valid_edge_share.mean)}", f"success {_f(c.success.mean)}",
                 f"edit distance {_f(c.edit_distance.mean)}", f"turns {_f(s.turns.mean)}",
                 f"tokens in/out {_f(s.input_tokens.mean)}/{_f(s.output_tokens.mean)}",
                 f"${_f(s.cost_usd.mean, 6)}/conversation"]
        if s.criteria:
            parts.append("judge " + " ".join(f"{k[:4]} {_f(v.mean)}" for k, v in s.criteria.items()))
        lines.append(", ".join(parts))
    for p in report.cost.pairs:
        lines.append(f"cost: {p.compiled} self-hosted vs {p.versus} at API prices: {_f(p.ratio, 1)}x cheaper "
                     f"per conversation; break-even after {p.break_even_conversations} conversations")
    return "\n".join(lines)


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}" if digits != 6 else f"{x:.6f}"
