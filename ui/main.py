"""The studio's entry point: wires the pages together and starts NiceGUI (`subterra studio`)."""

from __future__ import annotations

from pathlib import Path

from nicegui import ui

from ui.components.flow_canvas import require_assets
from ui.pages import editor, library

FAVICON = Path(__file__).resolve().parent.parent / "assets" / "favicon.svg"


def build() -> None:
    library.create()
    editor.create()


def start(host: str = "127.0.0.1", port: int = 8080, show: bool = False) -> None:
    require_assets()
    build()
    ui.run(host=host, port=port, title="subterra studio", reload=False, show=show,
           favicon=FAVICON if FAVICON.is_file() else None, reconnect_timeout=10)


if __name__ in {"__main__", "__mp_main__"}:  # `python -m ui.main`, and NiceGUI's test runner
    start()
