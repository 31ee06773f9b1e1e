"""The shared page frame: header with the studio's name and navigation, then the page body."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from nicegui import ui

from ui import theme


@contextmanager
def frame(title: str) -> Iterator[ui.column]:
    theme.apply()
    ui.page_title(f"{title} · subterra studio")
    with ui.header().classes("items-center px-4 py-2 bg-primary"):
        ui.link("subterra studio", "/").classes("text-white text-lg font-semibold no-underline").mark("home")
        ui.label(title).classes("text-white opacity-80 ml-4").mark("page-title")
        ui.space()
        ui.link("Flows", "/").classes("text-white no-underline")
        ui.link("Chat", "/chat").classes("text-white no-underline ml-4").mark("nav-chat")
        ui.link("Jobs", "/jobs").classes("text-white no-underline ml-4").mark("nav-jobs")
    with ui.column().classes(f"{theme.PAGE} {theme.GAP}") as body:
        yield body
