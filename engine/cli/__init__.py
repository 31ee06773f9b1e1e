"""`subterra`: the command line. Thin: parse options, call the engine, print results.

Each command group lives in its own module here and exposes `register(cli)`.
Expected failures (`SubterraError`) print one line and exit with their code; never a traceback.
"""

from __future__ import annotations

import importlib
import sys

import click

from engine.errors import SubterraError

COMMAND_MODULES = ("flows", "generate", "compile", "agents", "evaluate", "studio")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="subterra")
def cli() -> None:
    """subterra: compile a conversational procedure into the weights of a small LLM."""


for _name in COMMAND_MODULES:
    try:
        _mod = importlib.import_module(f"engine.cli.{_name}")
    except ModuleNotFoundError as _e:  # command module not written yet
        if _e.name != f"engine.cli.{_name}":
            raise
        continue
    _mod.register(cli)


def main(argv: list[str] | None = None) -> int:
    try:
        rv = cli.main(args=argv, prog_name="subterra", standalone_mode=False)
        return int(rv or 0)
    except SubterraError as e:
        click.echo(f"error: {e}", err=True)
        return e.exit_code
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


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
