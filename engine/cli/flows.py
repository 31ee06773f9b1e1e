"""Flow commands: validate, paths, import, export, and `flows list|history|diff|restore`.

FLOW is a file path, a stored flow's name (`travel`) or `name@version`. Exit codes: 0 fine,
1 the flow has validation errors, 2 the file cannot be read or parsed (or no such flow).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from engine.diff import diff_flows
from engine.errors import FlowFileError, StoreError, VersionConflictError
from engine.flow import Flow, name_problem
from engine.formats import DEFAULT_TIMEOUT, FORMATS, IMPORT_FORMATS, dump_flow, export_flow, import_file
from engine.interop.outcomes import RULE, parse_kind
from engine.paths import coverage_paths, decision_hubs, path_stats, sample_paths
from engine.store import Store, load_flow
from engine.validate import has_errors, validate


def register(cli: click.Group) -> None:
    for command in (validate_cmd, paths_cmd, import_cmd, export_cmd, flows_group):
        cli.add_command(command)


@click.command("validate")
@click.argument("flow_ref", metavar="FLOW")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines.")
def validate_cmd(flow_ref: str, as_json: bool) -> int:
    """Check FLOW and print every problem, one per line. Exit 1 when there are errors."""
    flow = load_flow(flow_ref)
    problems = validate(flow)
    errors = sum(p.severity == "error" for p in problems)
    if as_json:
        click.echo(json.dumps({"flow": flow.name, "ok": not errors, "errors": errors,
                               "warnings": len(problems) - errors,
                               "problems": [p.model_dump() for p in problems]}, indent=2))
    else:
        for p in problems:
            click.echo(str(p))
        verdict = "has errors" if errors else "is valid"
        click.echo(f"flow '{flow.name}' {verdict}: {errors} error(s), {len(problems) - errors} warning(s)", err=True)
    return 1 if has_errors(problems) else 0


@click.command("paths")
@click.argument("flow_ref", metavar="FLOW")
@click.option("--max-visits", type=click.IntRange(min=1), default=1, show_default=True,
              help="How often a path may visit one node (1: acyclic; 2: each loop once more).")
@click.option("--sample", "n_sample", type=click.IntRange(min=0), default=0, help="Also print N sampled paths.")
@click.option("--coverage", type=click.IntRange(min=0), default=0,
              help="Pick the sample so every edge is on at least K paths (when N allows); 0 = uniform.")
@click.option("--weighted", is_flag=True, help="Sample in proportion to edge weights instead of uniformly.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed for --sample.")
@click.option("--cap", type=click.IntRange(min=1), default=1_000_000, show_default=True,
              help="Report counts above this as 'at least CAP'.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def paths_cmd(flow_ref: str, max_visits: int, n_sample: int, coverage: int, weighted: bool, seed: int, cap: int,
              as_json: bool) -> int:
    """Count FLOW's paths (start to a terminal) and their lengths in agent+user turns."""
    flow = load_flow(flow_ref)
    t0 = time.perf_counter()
    stats = path_stats(flow, max_visits=max_visits, cap=cap)
    ms = (time.perf_counter() - t0) * 1000
    if coverage:
        samples = coverage_paths(flow, n_sample, k=coverage, seed=seed, max_visits=max_visits)
    else:
        samples = sample_paths(flow, n_sample, seed=seed, max_visits=max_visits, weighted=weighted)
    hubs = decision_hubs(flow)
    if as_json:
        out = stats.model_dump(mode="json") | {"flow": flow.name, "hub_ids": hubs, "ms": round(ms, 2)}
        if n_sample:
            out["samples"] = samples
        click.echo(json.dumps(out, indent=2))
        return 0
    click.echo(f"flow '{flow.name}' (max visits {max_visits})")
    click.echo(f"nodes {stats.nodes}, decision hubs {stats.decision_hubs}"
               + (f" ({', '.join(hubs)})" if hubs else "") + f", terminals {stats.terminals}")
    if stats.exact:
        click.echo(f"paths {stats.paths:,} (exact, {ms:.1f} ms)")
    else:
        known = f"; exact total {stats.total:,}" if stats.total is not None else ""
        click.echo(f"paths at least {stats.paths:,} (over the cap of {cap:,}{known})")
    if stats.min_len is not None:
        hist = " ".join(f"{k}:{v:,}" for k, v in stats.length_histogram.items())
        click.echo(f"length {stats.min_len}-{stats.max_len} turns; histogram {hist}")
    for path in samples:
        click.echo(" > ".join(path))
    if has_errors(validate(flow)):
        click.echo(f"note: the flow has validation errors; run `subterra validate {flow_ref}`", err=True)
    return 0


@click.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["auto", *IMPORT_FORMATS]), default="auto", show_default=True,
              help="Format of FILE (auto: .py is langgraph, .mmd or a `flowchart` first line is mermaid, "
                   "a map of nodes is agent2model, else native JSON/YAML).")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the native flow here (.json or .yaml); without it, save the flow in the store.")
@click.option("--name", "new_name", help="Store (or write) the flow under this name instead of the file's.")
@click.option("--force", is_flag=True, help="Store the import as the next version of a stored flow of that name.")
@click.option("--dry-run", is_flag=True, help="Print what the import guessed and its validation; store nothing.")
@click.option("--timeout", type=click.FloatRange(min=1), default=DEFAULT_TIMEOUT, show_default=True,
              help="LangGraph: seconds the file may take to build its graph.")
def import_cmd(file: str, fmt: str, output: str | None, new_name: str | None, force: bool, dry_run: bool,
               timeout: float) -> int:
    """Read FILE (agent2model YAML, Mermaid, a LangGraph .py, native JSON/YAML) into the store or a file.

    A LangGraph file is run (in a separate process, with a time limit) to read its graph: import only
    files you trust. The summary lists what the import guessed; fix those on the canvas.
    """
    chosen = None if fmt == "auto" else fmt
    if chosen == "langgraph" or (chosen is None and Path(file).suffix.lower() == ".py"):
        _check_name(new_name or Path(file).stem, file, bool(new_name))  # before running anything
        click.echo(f"warning: reading {Path(file).name} runs its Python code (in a separate process, at most "
                   f"{timeout:g} s); import only files you trust", err=True)
    result = import_file(file, fmt=chosen, name=new_name, timeout=timeout)
    flow = result.flow
    _check_name(flow.name, file, bool(new_name))
    if result.notes:
        click.echo(f"import summary ({result.format}): what was guessed or left out", err=True)
        for note in result.notes:
            click.echo(f"  - {note}", err=True)
    problems = validate(flow)
    if dry_run:
        for p in problems:
            click.echo(str(p))
        click.echo(f"dry run: flow '{flow.name}' ({len(flow.nodes)} nodes, {len(flow.edges)} edges) not stored",
                   err=True)
        return 0
    if output:
        _write(output, dump_flow(flow, _format_for(output)))
        click.echo(f"wrote flow '{flow.name}' ({len(flow.nodes)} nodes) to {output}", err=True)
    else:
        version = _store_import(Store(), flow, Path(file).name, force, renamed=bool(new_name))
        click.echo(f"stored flow '{flow.name}' as version {version}", err=True)
    if has_errors(problems):
        click.echo(f"note: the flow has {sum(p.severity == 'error' for p in problems)} validation error(s); "
                   f"run `subterra validate {output or flow.name}`", err=True)
    return 0


def _check_name(name: str, file: str, given: bool) -> None:
    problem = name_problem(name)
    if problem:
        raise FlowFileError("--name" if given else f"{file}: name", problem + ("" if given else
                                                                             "; rename it with --name NEW"))


def _store_import(store: Store, flow: Flow, file: str, force: bool, renamed: bool) -> int:
    """Save an import: a new flow, or (with --force) the next version of the stored one; never silently."""
    taken = (f"a flow named '{flow.name}' is already stored; add --force to store this import as its next "
             "version, or --name NEW to store it under another name")
    if not force and store.has_flow(flow.name):
        raise StoreError(taken)
    try:
        return store.save_flow(flow, message=f"imported from {file}", expected_version=None if force else 0)
    except VersionConflictError:  # created by someone else between the check and the save
        raise StoreError(taken) from None


@click.command("export")
@click.argument("flow_ref", metavar="FLOW")
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), default="json", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write here instead of to stdout.")
@click.option("--outcome", "outcomes", multiple=True, metavar="WORD=KIND",
              help="agent2model: write terminals with the custom outcome WORD as KIND (success, abandonment or "
                   "escalation); repeat for several. Default: " + RULE + ".")
def export_cmd(flow_ref: str, fmt: str, output: str | None, outcomes: tuple[str, ...]) -> int:
    """Print FLOW as JSON, YAML, agent2model YAML or a Mermaid flowchart.

    What the format cannot hold is reported on stderr, one line per kind.
    """
    flow = load_flow(flow_ref)
    mapping = _outcome_map(flow, outcomes)
    if mapping and fmt != "agent2model":
        raise click.UsageError("--outcome applies to --format agent2model only")
    result = export_flow(flow, fmt, outcomes=mapping)
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    if output:
        _write(output, result.text)
    else:
        click.echo(result.text, nl=False)
    return 0


def _outcome_map(flow: Flow, pairs: tuple[str, ...]) -> dict[str, str]:
    used = sorted({n.outcome for n in flow.terminals if n.outcome})
    out: dict[str, str] = {}
    for pair in pairs:
        word, sep, kind = pair.partition("=")
        parsed = parse_kind(kind)
        if not sep or not word.strip() or parsed is None:
            raise click.BadParameter(f"'{pair}': write WORD=KIND with KIND success, abandonment or escalation",
                                     param_hint="--outcome")
        if word.strip() not in used:
            raise click.BadParameter(f"no terminal of '{flow.name}' has the outcome '{word.strip()}'; its outcomes "
                                     f"are {', '.join(used) or 'none'}", param_hint="--outcome")
        out[word.strip()] = parsed
    return out


# ----------------------------------------------------------------------------------------------
# the store's flows


@click.group("flows")
def flows_group() -> None:
    """Stored flows: list them, see their history, diff and restore versions."""


@flows_group.command("list")
def flows_list() -> int:
    """Every stored flow with its head version."""
    for f in Store().list_flows():
        click.echo(f"{f['name']}\tv{f['version']}\t{f['nodes']} nodes\t{f['description'][:60]}")
    return 0


@flows_group.command("history")
@click.argument("name")
def flows_history(name: str) -> int:
    """Versions of the stored flow NAME, newest first."""
    for v in Store().versions(name):
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(v["created"]))
        click.echo(f"v{v['version']}\t{when}\t{v['message']}")
    return 0


@flows_group.command("diff")
@click.argument("old")
@click.argument("new")
@click.option("--json", "as_json", is_flag=True, help="Print the diff as JSON.")
def flows_diff(old: str, new: str, as_json: bool) -> int:
    """What changed from OLD to NEW (each a FLOW: file, name or name@version)."""
    d = diff_flows(load_flow(old), load_flow(new))
    if as_json:
        click.echo(d.model_dump_json(indent=2))
    else:
        for line in d.summary() or ["no changes"]:
            click.echo(line)
    return 0


@flows_group.command("restore")
@click.argument("name")
@click.argument("version", type=click.IntRange(min=1))
def flows_restore(name: str, version: int) -> int:
    """Make VERSION of NAME the head again (saved as a new version)."""
    new = Store().restore_version(name, version)
    click.echo(f"flow '{name}' restored from v{version} as v{new}", err=True)
    return 0


# ----------------------------------------------------------------------------------------------
# helpers


def _format_for(path: str) -> str:
    suffix = Path(path).suffix.lower()
    if suffix == ".json":
        return "json"
    if suffix in (".yaml", ".yml"):
        return "yaml"
    raise FlowFileError(path, "cannot tell the format from the extension; name the output .json or .yaml")


def _write(path: str, text: str) -> None:
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as e:
        raise FlowFileError(path, f"cannot write the file ({e.strerror}); check the folder exists") from None
