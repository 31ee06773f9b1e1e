"""`subterra recompile FLOW`: diff, regenerate only what changed, fine-tune, re-evaluate (engine.recompile)."""

from __future__ import annotations

from typing import Any

import click

from engine.cli.options import config_values, options_from
from engine.recompile import RecompileConfig


def register(cli: click.Group) -> None:
    cli.add_command(recompile_cmd)


def _presets() -> list[str]:
    from engine.train.presets import preset_names

    return preset_names()


@click.command("recompile")
@click.argument("flow")
@options_from(RecompileConfig, "model", "from_base", "preset", "out", "min_new", "replay", "scenarios", "probes",
              "seed", choices={"preset": _presets})
def recompile_cmd(flow: str, **o: Any) -> None:
    """Recompile FLOW's model after an edit: reuse the conversations the edit did not touch, write new ones
    along the changed paths, fine-tune the previous model, check the change took effect; prints each stage's time."""
    from engine.recompile import recompile

    report = recompile(RecompileConfig(flow=flow, **config_values(o, RecompileConfig)),
                       on_stage=lambda m: click.echo(m, err=True))
    for line in report.lines():
        click.echo(line)
