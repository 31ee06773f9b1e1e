"""The drawer beside the canvas on a flow's page: Generate and Compile tabs (and their jobs).

`attach(editor)` adds it to the editor page (call it at the page's top level, after the frame).
It opens from the floating button at the bottom right, or at once with `?panel=generate|compile`.
"""

from __future__ import annotations

from typing import Any

from nicegui import ui

from ui.pages.compile_panel import CompilePanel
from ui.pages.generate_panel import GeneratePanel

WIDTH = 560


def attach(editor: Any, panel: str | None = None) -> tuple[GeneratePanel, CompilePanel]:
    gen, comp = GeneratePanel(editor), CompilePanel(editor)
    with ui.right_drawer(value=panel in ("generate", "compile"), fixed=True, bordered=True) \
            .props(f"width={WIDTH}").classes("p-3 bg-white").mark("panels") as drawer:
        with ui.row().classes("w-full items-center no-wrap"):
            with ui.tabs().props("dense no-caps align=left").classes("grow") as tabs:
                t_gen = ui.tab("generate", "Generate", icon="forum").mark("tab-generate")
                t_comp = ui.tab("compile", "Compile", icon="memory").mark("tab-compile")
            ui.link("All jobs", "/jobs").classes("text-caption")
            ui.button(icon="close", on_click=drawer.hide).props("flat round dense").mark("close-panels")
        with ui.tab_panels(tabs, value=t_comp if panel == "compile" else t_gen).classes("w-full").props("keep-alive"):
            with ui.tab_panel(t_gen).classes("p-0"):
                gen.build()
            with ui.tab_panel(t_comp).classes("p-0"):
                comp.build()
    with ui.page_sticky(position="bottom-right", x_offset=18, y_offset=18):
        ui.button("Generate & compile", icon="rocket_launch", on_click=drawer.toggle) \
            .props("no-caps rounded color=primary").mark("open-panels")
    return gen, comp
