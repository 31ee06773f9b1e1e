"""`subterra studio`: start the web studio with NiceGUI.

Registered into the engine's CLI through the `subterra.commands` entry point (see pyproject.toml), so the
engine never imports the studio.
"""

from __future__ import annotations

import click

from engine.hosts import is_loopback


def register(cli: click.Group) -> None:
    cli.add_command(studio_cmd)


@click.command("studio")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but a loopback address exposes your flows to the network.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option("--open", "show", is_flag=True, help="Open a browser tab once the studio is up.")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME",
              help="Accept this Host header besides loopback names and the bound address (repeatable).")
def studio_cmd(host: str, port: int, show: bool, allow_hosts: tuple[str, ...]) -> None:
    """Open the studio in the browser: draw flows, see their problems, preview paths and dialogues."""
    if not is_loopback(host):
        click.echo(f"warning: the studio listens on {host}, not only on this machine; anyone who can reach "
                   f"{host}:{port} can read and change your flows (it has no login). Use --host 127.0.0.1 "
                   "unless you mean it.", err=True)
    from ui.main import start  # NiceGUI is imported only when the studio runs

    click.echo(f"subterra studio on http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}", err=True)
    start(host=host, port=port, show=show, allow_hosts=allow_hosts)
