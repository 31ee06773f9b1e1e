"""`subterra generate`: synthesize a training dataset from a flow (resumable), and `datasets`.

    subterra generate FLOW -n N [--backend scripted|local|anthropic|openai] [--model M]
        [--base-url URL] [--seed S ...] [--concurrency C] [--max-cost USD] [--dataset NAME]
        [--out FILE.jsonl]

Re-running the same command resumes to N conversations per seed. Exit codes: 0 the dataset is
complete, 1 it is not (failed slots, cost cap, invalid flow, unreachable backend), 2 bad FLOW.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from engine.backends.base import backend_names
from engine.cli.options import config_values, options_from
from engine.datasets import dataset_info, delete_dataset, export_jsonl, list_datasets
from engine.generate import Estimate, GenerateConfig, Progress, generate_dataset
from engine.quality import dataset_quality
from engine.store import Store, load_flow


def register(cli: click.Group) -> None:
    cli.add_command(generate_cmd)
    cli.add_command(datasets_group)


@click.command("generate")
@click.argument("flow_ref", metavar="FLOW")
@options_from(GenerateConfig, "n", flags={"n": "-n"}, helps={"n": "Conversations to generate (per seed)."})
@options_from(GenerateConfig, "backend", "model", "base_url", "seeds", "concurrency", "max_cost", "dataset",
              flags={"seeds": "--seed"}, choices={"backend": backend_names},
              helps={"seeds": "Random seed; repeat for several runs of N in one dataset."})
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the whole dataset as JSONL when the run completes.")
@click.option("--uniform", is_flag=True, help="Uniform random paths instead of coverage-guided ones.")
@options_from(GenerateConfig, "eval_fraction", "requests_per_minute", "tokens_per_minute", "fallback", "max_visits",
              "max_tokens", "customer_first", "heldout_examples",
              flags={"requests_per_minute": "--rpm", "tokens_per_minute": "--tpm"},
              choices={"fallback": lambda: [b for b in backend_names() if b != "scripted"]})
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def generate_cmd(flow_ref: str, out: Path | None, uniform: bool, quiet: bool, **kw: Any) -> int:
    """Generate N synthetic conversations along paths through FLOW into a dataset (resumable)."""
    store = Store()
    flow = load_flow(flow_ref, store)
    values = config_values(kw, GenerateConfig)
    values["seeds"] = values.get("seeds") or [0]
    config = GenerateConfig(paths="uniform" if uniform else "coverage", **values)
    bar = _Bar(enabled=not quiet)
    report = generate_dataset(flow, config, store, on_progress=bar.update, on_estimate=_print_estimate)
    bar.close()
    cost = f"${report.cost_usd:.4f}" + ("" if report.cost_known else " (no price known for this model)")
    click.echo(f"dataset '{report.dataset}': {report.done}/{report.total} conversations ({report.new} new, "
               f"{report.failed_attempts} failed attempts) in {report.elapsed_s:.1f}s, {cost}", err=True)
    if out is not None:
        count = export_jsonl(store, report.dataset, out)
        click.echo(f"wrote {count} conversations to {out}", err=True)
    if report.stopped:
        click.echo(f"error: {report.stopped}; re-run with a higher --max-cost to finish", err=True)
        return 1
    if not report.complete:
        click.echo(f"error: {len(report.empty_slots)} conversation(s) failed every attempt (see the failures with "
                   f"`subterra datasets show {report.dataset}`); re-run the same command to retry them", err=True)
        return 1
    return 0


def _print_estimate(est: Estimate) -> None:
    if not est.conversations:
        click.echo("nothing to do: the dataset already holds every conversation", err=True)
        return
    price = f"~${est.usd:.2f}" if est.price_known else "unknown price (no entry for this model; see prices.json)"
    click.echo(f"estimate: {est.conversations} conversations, {est.llm_calls} LLM calls, "
               f"~{est.usage.input_tokens + est.usage.cache_read_tokens + est.usage.cache_write_tokens} input tokens, "
               f"{price}", err=True)


class _Bar:
    """One live line on stderr: done/total, failed, rate, ETA, spend (a line every 5 s when not a tty)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.shown = False
        self.last_done = -1

    def update(self, p: Progress) -> None:
        t = time.monotonic()
        due = t - self.last >= (0.1 if self.tty else 5.0) or (p.done == p.total and p.done != self.last_done)
        if not self.enabled or not due:
            return
        self.last, self.last_done = t, p.done
        width = 24
        filled = int(width * p.done / max(1, p.total))
        eta = f"{p.eta_s:4.0f}s" if p.eta_s is not None else "   ?"
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {p.done}/{p.total} failed {p.failed} "
                f"{p.rate:6.1f}/s ETA {eta} ${p.spent_usd:.4f}")
        click.echo(("\r" + line) if self.tty else line, err=True, nl=not self.tty)
        self.shown = True

    def close(self) -> None:
        if self.enabled and self.tty and self.shown:
            click.echo("", err=True)


@click.group("datasets")
def datasets_group() -> None:
    """List, show, export and delete generated datasets."""


@datasets_group.command("list")
def datasets_list() -> None:
    """Every dataset with its flow, version and split sizes."""
    rows = list_datasets(Store())
    if not rows:
        click.echo("no datasets yet; create one with `subterra generate FLOW -n N`")
    for d in rows:
        click.echo(f"{d['name']:24} {d['flow']}@{d['flow_version']:<4} {d['conversations']:6} conversations "
                   f"(train {d['train']}, eval {d['eval']}; target {d['target']})")


@datasets_group.command("show")
@click.argument("name")
def datasets_show(name: str) -> None:
    """A dataset's counts, its most recent generation failures and its data-quality report."""
    store = Store()
    d = dataset_info(store, name)
    for k in ("name", "flow", "flow_version", "target", "conversations", "train", "eval", "failed_attempts"):
        click.echo(f"{k:16} {d[k]}")
    for r in store.generation_failures(d["id"], limit=10):
        click.echo(f"  failed slot {r['slot']} attempt {r['attempt']}: {r['reason']}")
    click.echo("data quality")
    for line in dataset_quality(store, name).lines():
        click.echo(f"  {line}")


@datasets_group.command("export")
@click.argument("name")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(("train", "eval")), default=None, help="Only this split.")
def datasets_export(name: str, out: Path, split: str | None) -> None:
    """Write dataset NAME to OUT as JSONL (one conversation per line)."""
    count = export_jsonl(Store(), name, out, split)
    click.echo(f"wrote {count} conversations to {out}")


@datasets_group.command("delete")
@click.argument("name")
def datasets_delete(name: str) -> None:
    """Delete dataset NAME and its conversations."""
    count = delete_dataset(Store(), name)
    click.echo(f"deleted dataset '{name}' ({count} conversations)")
