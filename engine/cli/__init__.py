"""`subterra`: the command line. Thin: parse options, call the engine, print results.

Each command group lives in its own module here and exposes `register(cli)`; layers above the engine
(the studio) register theirs through the `subterra.commands` entry-point group, so the engine never
imports them.
Expected failures (`SubterraError`) print one line and exit with their code; never a traceback.
"""

from __future__ import annotations

import errno
import sqlite3
import sys
from importlib.metadata import entry_points

import click
from pydantic import ValidationError

from engine.cli import agents, compile, evaluate, flows, generate, jobs, recompile
from engine.errors import SubterraError

PLUGIN_GROUP = "subterra.commands"
"""Entry-point group through which packages above the engine add commands (the studio: `ui.cli`)."""


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="subterra")
def cli() -> None:
    """subterra: compile a conversational procedure into the weights of a small LLM."""


for _module in (flows, generate, compile, agents, evaluate, jobs, recompile):
    _module.register(cli)
for _ep in entry_points(group=PLUGIN_GROUP):
    _ep.load()(cli)


def main(argv: list[str] | None = None) -> int:
    try:
        rv = cli.main(args=argv, prog_name="subterra", standalone_mode=False)
        return int(rv or 0)
    except SubterraError as e:
        click.echo(f"error: {e}", err=True)
        return e.exit_code
    except ValidationError as e:  # a config built from the options (numbers out of range, ...): one line
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or e.title
        click.echo(f"error: {where}: {first['msg']} (got {str(first.get('input'))[:40]!r})", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except BrokenPipeError:
        return 0
    except (OSError, sqlite3.OperationalError) as e:
        if not _disk_full(e):
            raise
        click.echo(f"error: the disk is full ({e}); nothing half-written was kept: free some space and run the "
                   "command again (generation and compile resume where they stopped)", err=True)
        return 1


def _disk_full(e: BaseException) -> bool:
    """A full disk (or a file-size limit) as the OS or SQLite reports it."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    return "disk is full" in str(e) or "disk I/O error" in str(e)


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
