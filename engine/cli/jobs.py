"""`subterra jobs`: the background jobs the studio (or `subterra jobs resume`) started.

    subterra jobs [--json] [--kind K] [--flow F]   every job, newest first (dead workers shown failed)
    subterra jobs show ID [--json]                 one job: config, result, the tail of its log
    subterra jobs cancel ID                        stop it (a compile stops after its step, with a checkpoint)
    subterra jobs resume ID                        run a failed or cancelled job again, continuing its work
"""

from __future__ import annotations

import json
import time

import click

from engine.jobs import JobRecord, cancel_job, get_job, list_jobs, log_tail, resume_job


def register(cli: click.Group) -> None:
    cli.add_command(jobs_group)


@click.group("jobs", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True,
              help="A JSON list of jobs (id, kind, flow, status, progress, message, ...).")
@click.option("--kind", default=None, help="Only jobs of this kind (generate, compile, evaluate).")
@click.option("--flow", default=None, help="Only jobs about this flow.")
@click.pass_context
def jobs_group(ctx: click.Context, as_json: bool, kind: str | None, flow: str | None) -> None:
    """List background jobs; `show`, `cancel` and `resume` act on one."""
    if ctx.invoked_subcommand is not None:
        return
    jobs = list_jobs(kind=kind, flow=flow)
    if as_json:
        click.echo(json.dumps([j.model_dump(mode="json") for j in jobs], indent=2))
        return
    if not jobs:
        click.echo("no jobs yet; start one from the studio, or `subterra generate` / `subterra compile`")
        return
    click.echo(f"{'ID':>4}  {'KIND':9} {'FLOW':14} {'STATUS':9} {'PROG':>5}  {'STARTED':16} {'TIME':>7}  MESSAGE")
    for j in jobs:
        click.echo(_line(j))


@jobs_group.command("show")
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="The job as one JSON object, with `log_tail`.")
def jobs_show(job_id: int, as_json: bool) -> None:
    """One job in full: config, result and the last lines of its log."""
    j = get_job(job_id)
    tail = log_tail(j.log)
    if as_json:
        click.echo(json.dumps(j.model_dump(mode="json") | {"log_tail": tail}, indent=2))
        return
    for k in ("id", "kind", "flow", "flow_version", "name", "status", "progress", "message", "pid", "output", "log"):
        v = getattr(j, k)
        click.echo(f"{k:13} {f'{v:.0%}' if k == 'progress' else ('-' if v is None else v)}")
    click.echo(f"{'started':13} {_when(j.started)}   duration {_dur(j.duration_s)}")
    click.echo(f"{'config':13} {json.dumps(j.config)}")
    if j.result:
        click.echo(f"{'result':13} {json.dumps({k: v for k, v in j.result.items() if k != 'log_tail'})}")
    if tail:
        click.echo("log (last lines):")
        for line in tail.splitlines():
            click.echo("  " + line)


@jobs_group.command("cancel")
@click.argument("job_id", type=int)
def jobs_cancel(job_id: int) -> None:
    """Stop a queued or running job."""
    j = cancel_job(job_id)
    click.echo(f"job {j.id} {j.status}: {j.message}")


@jobs_group.command("resume")
@click.argument("job_id", type=int)
def jobs_resume(job_id: int) -> None:
    """Run a failed or cancelled job again (API keys come from this shell's environment)."""
    j = resume_job(job_id)
    click.echo(f"job {j.id} ({j.kind}) resumed in the background; follow it with `subterra jobs show {j.id}`")


def _line(j: JobRecord) -> str:
    flow = f"{j.flow}@{j.flow_version}" if j.flow and j.flow_version else (j.flow or "-")
    msg = j.message.replace("\n", " ")
    return (f"{j.id:>4}  {j.kind:9} {flow[:14]:14} {j.status:9} {j.progress:>5.0%}  {_when(j.started or j.created):16} "
            f"{_dur(j.duration_s):>7}  {msg[:100]}")


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


def _dur(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.1f}m"
