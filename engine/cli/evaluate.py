"""Evaluation commands: `subterra eval` (simulated users, judge, metrics, report) and `subterra cost`."""

from __future__ import annotations

import json
import sys

import click
from pydantic import ValidationError

from engine.conformance import DEFAULT_MARGIN, DEFAULT_THRESHOLD
from engine.cost import CostInputs, format_table, price_table
from engine.errors import EvaluationError


def register(cli: click.Group) -> None:
    cli.add_command(eval_cmd)
    cli.add_command(cost_cmd)


def _cost_options(fn):  # type: ignore[no-untyped-def]
    defaults = CostInputs()
    for opt in reversed([
        click.option("--gpu-hourly", type=float, default=defaults.gpu_hourly, show_default=True, metavar="USD",
                     help="GPU rental price per hour."),
        click.option("--prefill-tps", type=float, default=defaults.prefill_tps, show_default=True, metavar="N",
                     help="Self-hosted prefill (input) tokens per second."),
        click.option("--decode-tps", type=float, default=defaults.decode_tps, show_default=True, metavar="N",
                     help="Self-hosted decode (output) tokens per second."),
        click.option("--api-input", type=float, default=defaults.api_input, show_default=True, metavar="USD_PER_M",
                     help="API price per million input tokens."),
        click.option("--api-output", type=float, default=defaults.api_output, show_default=True, metavar="USD_PER_M",
                     help="API price per million output tokens."),
        click.option("--data-cost", type=float, default=defaults.data_cost, show_default=True, metavar="USD",
                     help="One-time cost of generating the training data."),
        click.option("--train-gpu-hours", type=float, default=defaults.train_gpu_hours, show_default=True,
                     metavar="H", help="GPU hours of the compile run."),
    ]):
        fn = opt(fn)
    return fn


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
              help="Agent to evaluate (repeat): compiled:DIR, in-context:FLOW@backend[:model], orchestrator:FLOW@backend.")
@click.option("--scenarios", type=click.IntRange(min=1), default=20, show_default=True, help="Scenarios (cover the paths).")
@click.option("--repeats", type=click.IntRange(min=1), default=1, show_default=True, help="Runs per scenario (pass^k).")
@click.option("--simulator", type=click.Choice(["scripted", "local", "anthropic", "openai"]), default="scripted",
              show_default=True, help="Who plays the user: scripted (offline) or an LLM backend.")
@click.option("--simulator-model", default=None, help="Model for an LLM simulator.")
@click.option("--judge", type=click.Choice(["none", "local", "anthropic", "openai"]), default="none",
              show_default=True, help="LLM judge backend (none: objective metrics only).")
@click.option("--judge-model", default=None, help="Model of the judge.")
@click.option("--judge2", type=click.Choice(["none", "local", "anthropic", "openai"]), default="none",
              show_default=True, help="A second judge that re-scores everything (compared in the report).")
@click.option("--judge2-model", default=None, help="Model of the second judge.")
@click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True,
              help="Conversations in flight at once.")
@click.option("--max-turns", type=click.IntRange(min=1), default=None, help="Agent turns per conversation.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for scenarios and the simulator.")
@click.option("--agent-temperature", type=click.FloatRange(min=0), default=0.7, show_default=True,
              help="Sampling temperature of the agents (0: greedy).")
@click.option("--agent-max-tokens", type=click.IntRange(min=1), default=256, show_default=True,
              help="Most tokens per agent message.")
@click.option("--threshold", type=click.FloatRange(0, 1), default=DEFAULT_THRESHOLD, show_default=True,
              help="Node-mapping confidence threshold.")
@click.option("--margin", type=click.FloatRange(0, 1), default=DEFAULT_MARGIN, show_default=True,
              help="Node mapping: how far the best node's similarity must beat the runner-up's.")
@click.option("--name", default=None, help="Name of the evaluation in the store.")
@click.option("--out", "out_dir", default="eval-report", show_default=True, metavar="DIR",
              help="Folder for report.html and report.json.")
@_cost_options
@click.option("--json", "as_json", is_flag=True, help="Print the per-agent summary as JSON.")
def eval_cmd(flow_ref: str, agents: tuple[str, ...], scenarios: int, repeats: int, simulator: str,
             simulator_model: str | None, judge: str, judge_model: str | None, judge2: str, judge2_model: str | None,
             concurrency: int, max_turns: int | None, seed: int, agent_temperature: float, agent_max_tokens: int,
             threshold: float, margin: float, name: str | None, out_dir: str,
             as_json: bool, **cost_kw: float) -> int:
    """Evaluate agents on FLOW with simulated users; write DIR/report.html and DIR/report.json."""
    from engine.evaluate import EvalConfig, run_evaluation

    config = EvalConfig(
        flow=flow_ref, agents=list(agents), scenarios=scenarios, repeats=repeats, simulator=simulator,  # type: ignore[arg-type]
        simulator_model=simulator_model, judge=judge, judge_model=judge_model, judge2=judge2,  # type: ignore[arg-type]
        judge2_model=judge2_model, concurrency=concurrency, max_turns=max_turns, seed=seed, threshold=threshold, margin=margin,
        agent_temperature=agent_temperature, agent_max_tokens=agent_max_tokens,
        cost=_inputs(**cost_kw), name=name, out=out_dir,
    )
    show = sys.stderr.isatty()

    def progress(fraction: float, message: str) -> None:
        if show:
            click.echo(f"\r{fraction:4.0%} {message:<40}", nl=False, err=True)

    result = run_evaluation(config, progress=progress)
    if show:
        click.echo("", err=True)
    report = result.report
    if as_json:
        click.echo(json.dumps({"evaluation": result.id, "html": result.html_path, "json": result.json_path,
                               "agents": report["agents"], "comparisons": report["comparisons"],
                               "cost": report["cost"]}, indent=2, default=str))
    else:
        click.echo(summary_lines(report))
        click.echo(f"report: {result.html_path} and {result.json_path} (evaluation {result.id} in the store)")
    return 0


def summary_lines(report: dict) -> str:  # type: ignore[type-arg]
    lines = []
    for spec, s in report["agents"].items():
        c = s["conformance"]
        parts = [f"{spec}: {s['conversations']} conversations ({s['errors']} errors)",
                 f"valid-edge {_f(c['valid_edge_share']['mean'])}", f"success {_f(c['success']['mean'])}",
                 f"edit distance {_f(c['edit_distance']['mean'])}", f"turns {_f(s['turns']['mean'])}",
                 f"tokens in/out {_f(s['input_tokens']['mean'])}/{_f(s['output_tokens']['mean'])}",
                 f"${_f(s['cost_usd']['mean'], 6)}/conversation"]
        if s.get("criteria"):
            parts.append("judge " + " ".join(f"{k[:4]} {_f(v['mean'])}" for k, v in s["criteria"].items()))
        lines.append(", ".join(parts))
    for p in report["cost"]["pairs"]:
        lines.append(f"cost: {p['compiled']} self-hosted vs {p['versus']} at API prices: {_f(p['ratio'], 1)}x cheaper "
                     f"per conversation; break-even after {p['break_even_conversations']} conversations")
    return "\n".join(lines)


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}g}" if digits != 6 else f"{x:.6f}"
