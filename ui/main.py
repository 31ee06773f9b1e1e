"""The studio's entry point: wires the pages together and starts NiceGUI (`subterra studio`)."""

from __future__ import annotations

import os
from pathlib import Path

from nicegui import app, ui

from ui.components.flow_canvas import require_assets
from ui.guard import StudioGuard
from ui.pages import chat, editor, jobs, library

FAVICON = Path(__file__).resolve().parent.parent / "assets" / "favicon.svg"


def build() -> None:
    library.create()
    editor.create()
    chat.create()
    jobs.create()


def start(host: str = "127.0.0.1", port: int = 8080, show: bool = False, allow_hosts: tuple[str, ...] = ()) -> None:
    require_assets()
    build()
    if os.environ.get("NICEGUI_USER_SIMULATION"):  # NiceGUI's in-process test client (no socket) calls itself "test"
        allow_hosts = (*allow_hosts, "test")
    app.add_middleware(StudioGuard, bound_host=host, allow_hosts=allow_hosts)  # Host, Origin, upload size
    ui.run(host=host, port=port, title="subterra studio", reload=False, show=show,
           favicon=FAVICON if FAVICON.is_file() else None, reconnect_timeout=10)


if __name__ in {"__main__", "__mp_main__"}:  # `python -m ui.main`, and NiceGUI's test runner
    start()
