"""The flow library (/): every stored flow, with new, duplicate, rename, delete, import, export
and version history (list, diff two versions, restore)."""

from __future__ import annotations

import datetime as dt
import re
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import quote

from nicegui import run, ui
from nicegui.events import UploadEventArguments

from engine import editing
from engine.diff import diff_flows
from engine.errors import SubterraError
from engine.flow import name_problem
from engine.formats import DEFAULT_TIMEOUT, FORMATS, ImportResult, export_flow, import_file, import_text
from engine.store import Store
from engine.validate import Problem, has_errors, validate
from ui import theme
from ui.frame import frame
from ui.guard import MAX_UPLOAD

EXPORT_SUFFIX = {"json": "json", "yaml": "yaml", "agent2model": "a2m.yaml", "mermaid": "mmd"}
IMPORT_ACCEPT = ".json,.yaml,.yml,.mmd,.mermaid,.py"


def create() -> None:
    @ui.page("/")
    def library_page() -> None:
        with frame("Flow library"):
            Library(Store()).build()


def flow_url(name: str) -> str:
    return "/flow/" + quote(name, safe="")


class Library:
    def __init__(self, store: Store):
        self.store = store

    def build(self) -> None:
        with ui.row().classes("w-full items-center gap-2"):
            ui.label("Flows").classes("text-h5")
            ui.space()
            ui.button("New flow", icon="add", on_click=self.ask_new).props("no-caps").mark("new-flow")
            ui.button("Paste Mermaid", icon="content_paste", on_click=self.ask_paste).props("outline no-caps") \
                .tooltip("Import a Mermaid flowchart (or flow YAML/JSON) pasted as text").mark("paste-import")
            ui.upload(label="Import JSON / YAML / agent2model / Mermaid / LangGraph", auto_upload=True,
                      on_upload=self.on_upload, max_file_size=MAX_UPLOAD) \
                .props(f'accept="{IMPORT_ACCEPT}" flat bordered') \
                .classes("w-80").style("max-height: 8rem").mark("import")
        self.table()

    @ui.refreshable_method
    def table(self) -> None:
        flows = self.store.list_flows()
        if not flows:
            ui.label("No flows yet: create one or import a file.").mark("empty")
            return
        with ui.column().classes("w-full gap-2"):
            for f in flows:
                self._row(f)

    def _row(self, f: dict[str, Any]) -> None:
        name = f["name"]
        updated = dt.datetime.fromtimestamp(f["updated"]).strftime("%Y-%m-%d %H:%M")
        with ui.card().classes("w-full py-2").mark(f"flow-{name}"), \
                ui.row().classes("w-full items-center no-wrap gap-4"):
            with ui.column().classes("grow gap-0 min-w-0"):
                ui.link(name, flow_url(name)).classes("text-subtitle1 font-semibold").mark("open")
                ui.label(f["description"] or "—").classes("text-caption text-grey-7 truncate w-full")
            ui.label(f"{f['nodes']} nodes · version {f['version']} · {updated}") \
                .classes("text-caption text-grey-8 whitespace-nowrap shrink-0").mark("flow-meta")
            ui.button(icon="content_copy", on_click=lambda n=name: self.ask_duplicate(n)).props("flat round") \
                .tooltip("Duplicate").mark("duplicate")
            ui.button(icon="edit", on_click=lambda n=name: self.ask_rename(n)).props("flat round") \
                .tooltip("Rename").mark("rename")
            ui.button(icon="history", on_click=lambda n=name: self.history(n)).props("flat round") \
                .tooltip("Version history").mark("history")
            with ui.button(icon="download").props("flat round").tooltip("Export").mark("export"):
                with ui.menu():
                    for fmt in FORMATS:
                        ui.menu_item(fmt, on_click=lambda n=name, x=fmt: self.export(n, x)).mark(f"export-{fmt}")
            ui.button(icon="delete", on_click=lambda n=name: self.ask_delete(n)).props("flat round color=negative") \
                .tooltip("Delete").mark("delete")

    # -- actions ----------------------------------------------------------------------------------
    def ask_new(self) -> None:
        self._ask_name("New flow", "", lambda name: self.store.create_flow(editing.new_flow(name), message="new flow"),
                       open_after=True)

    def ask_duplicate(self, name: str) -> None:
        self._ask_name(f"Duplicate '{name}'", f"{name} copy", lambda new: self.store.duplicate_flow(name, new))

    def ask_rename(self, name: str) -> None:
        self._ask_name(f"Rename '{name}'", name, lambda new: self.store.rename_flow(name, new))

    def _ask_name(self, title: str, value: str, action: Any, open_after: bool = False) -> None:
        with ui.dialog() as dialog, ui.card().classes("w-96"):
            ui.label(title).classes("text-h6")
            field = ui.input("Name", value=value).classes("w-full").mark("name-input")

            def ok() -> None:
                new = (field.value or "").strip()
                if not new:
                    ui.notify("Type a name", type="warning")
                    return
                if self.store.has_flow(new):
                    ui.notify(f"a flow named '{new}' already exists; pick another name", type="negative")
                    return
                if not self._run(action, new):
                    return
                dialog.close()
                self.table.refresh()
                if open_after:
                    ui.navigate.to(flow_url(new))

            field.on("keydown.enter", ok)
            with ui.row().classes("w-full justify-end"):
                ui.button("Cancel", on_click=dialog.close).props("flat no-caps")
                ui.button("OK", on_click=ok).props("no-caps").mark("name-ok")
        dialog.open()

    def ask_delete(self, name: str) -> None:
        with ui.dialog() as dialog, ui.card():
            ui.label(f"Delete '{name}' and all its versions? This cannot be undone.").mark("confirm-text")
            with ui.row().classes("w-full justify-end"):
                ui.button("Cancel", on_click=dialog.close).props("flat no-caps").mark("cancel-delete")

                def yes() -> None:
                    if self._run(self.store.delete_flow, name):
                        ui.notify(f"Deleted '{name}'")
                    dialog.close()
                    self.table.refresh()

                ui.button("Delete", on_click=yes).props("no-caps color=negative").mark("confirm-delete")
        dialog.open()

    def export(self, name: str, fmt: str) -> None:
        result = export_flow(self.store.get_flow(name), fmt)
        ui.download.content(result.text.encode(), f"{name}.{EXPORT_SUFFIX[fmt]}")
        if result.warnings:  # what the format cannot hold, one line per kind
            ui.notify("\n".join(result.warnings), type="warning", multi_line=True, close_button=True,
                      timeout=0)

    # -- import -----------------------------------------------------------------------------------
    async def on_upload(self, e: UploadEventArguments) -> None:
        data = await e.file.read()
        if e.file.name.lower().endswith(".py"):
            self.ask_run_langgraph(e.file.name, data)
            return
        try:
            result = import_text(data, source=e.file.name)
        except SubterraError as err:
            self._import_failed(str(err))
            return
        self.confirm_import(result)

    def ask_paste(self) -> None:
        with ui.dialog() as dialog, ui.card().classes("w-[44rem] max-w-full"):
            ui.label("Paste a Mermaid flowchart").classes("text-h6")
            ui.label("`flowchart TD` or `flowchart LR` text: [text] agent turns, [/text/] customer turns, {text} "
                     "decisions, ([text]) endings; edge labels become conditions. Flow YAML or JSON works too.") \
                .classes("text-caption text-grey-8")
            text = ui.textarea(placeholder="flowchart TD\n    A[Greet] --> B[/Customer asks/]\n    B --> C([Done])") \
                .props("outlined autogrow input-style='min-height: 12rem; font-family: monospace'") \
                .classes("w-full").mark("paste-text")

            def read() -> None:
                try:
                    result = import_text(text.value or "", source="pasted")
                except SubterraError as err:
                    self._import_failed(str(err))
                    return
                dialog.close()
                self.confirm_import(result)

            with ui.row().classes("w-full justify-end"):
                ui.button("Cancel", on_click=dialog.close).props("flat no-caps")
                ui.button("Read", on_click=read).props("no-caps").mark("paste-ok")
        dialog.open()

    def ask_run_langgraph(self, filename: str, data: bytes) -> None:
        """A LangGraph file is read by running it: say so, and run it only when the person agrees."""
        with ui.dialog() as dialog, ui.card().classes("w-[36rem]"):
            ui.label(f"Run {filename} to read its graph?").classes("text-h6")
            ui.label(f"A LangGraph graph is read by running the file's Python code (in a separate process, for at "
                     f"most {DEFAULT_TIMEOUT:g} s). Import only files you trust.").classes("text-body2") \
                .mark("langgraph-warning")
            spinner = ui.spinner(size="lg").classes("self-center")
            spinner.visible = False

            async def go() -> None:
                spinner.visible = True
                ok.disable()
                try:
                    result = await run.io_bound(_import_langgraph_upload, filename, data)
                except SubterraError as err:
                    dialog.close()
                    self._import_failed(str(err))
                    return
                dialog.close()
                self.confirm_import(result)

            with ui.row().classes("w-full justify-end"):
                ui.button("Cancel", on_click=dialog.close).props("flat no-caps")
                ok = ui.button("Run it and import", on_click=go).props("no-caps color=warning").mark("run-langgraph")
        dialog.open()

    def _import_failed(self, message: str) -> None:
        with ui.dialog() as dialog, ui.card().classes("w-[36rem]"):
            ui.label("This file cannot be imported").classes("text-h6 text-negative")
            ui.label(message).classes("text-body2").mark("import-error")
            ui.button("Close", on_click=dialog.close).props("flat no-caps")
        dialog.open()

    def confirm_import(self, result: ImportResult) -> None:
        flow, problems = result.flow, validate(result.flow)
        with ui.dialog() as dialog, ui.card().classes("w-[44rem] max-w-full"):
            ui.label(f"Import '{flow.name}' · {len(flow.nodes)} nodes, {len(flow.edges)} edges").classes("text-h6")
            if result.notes:
                with ui.column().classes("w-full gap-0").mark("import-summary"):
                    ui.label(f"What the {result.format} import guessed (check it on the canvas):") \
                        .classes("text-subtitle2")
                    for note in result.notes:
                        ui.label(f"• {note}").classes("text-body2")
            self._problems(problems)
            name = ui.input("Save as", value=self._free_name(flow.name)).classes("w-full").mark("import-name")

            def ok() -> None:
                new = (name.value or "").strip()
                problem = name_problem(new)
                if problem:
                    ui.notify(problem, type="negative", multi_line=True)
                    return
                if self.store.has_flow(new):
                    ui.notify(f"a flow named '{new}' is already stored; pick a name no stored flow has",
                              type="negative")
                    return
                if self._run(self.store.create_flow, flow.model_copy(update={"name": new}), "imported"):
                    dialog.close()
                    self.table.refresh()
                    ui.notify(f"Imported '{new}'", type="positive")

            with ui.row().classes("w-full justify-end"):
                ui.button("Cancel", on_click=dialog.close).props("flat no-caps")
                ui.button("Import", on_click=ok).props("no-caps").mark("import-ok")
        dialog.open()

    def _problems(self, problems: list[Problem]) -> None:
        if not problems:
            ui.label("The validator found no problems.").classes("text-positive").mark("import-problems")
            return
        verdict = "errors: fix them in the editor before generating" if has_errors(problems) else "warnings only"
        with ui.column().classes("w-full gap-1").mark("import-problems"):
            ui.label(f"The validator found {len(problems)} problem(s) ({verdict}):")
            with ui.scroll_area().style("max-height: 40vh"):
                for p in problems:
                    color = theme.ERROR if p.severity == "error" else theme.WARNING
                    ui.label(f"{p.severity} · {p.code} · {p.node or p.edge or 'flow'}: {p.message}") \
                        .style(f"color:{color}").classes("text-body2")

    # -- history ------------------------------------------------------------------------------------
    def history(self, name: str) -> None:
        versions = self.store.versions(name)
        numbers = [v["version"] for v in versions]
        with ui.dialog() as dialog, ui.card().classes("w-[48rem] max-w-full"):
            ui.label(f"Version history of '{name}'").classes("text-h6")
            with ui.scroll_area().style("max-height: 30vh"):
                for v in versions:
                    when = dt.datetime.fromtimestamp(v["created"]).strftime("%Y-%m-%d %H:%M:%S")
                    with ui.row().classes("w-full items-center no-wrap gap-3").mark(f"version-{v['version']}"):
                        ui.label(f"v{v['version']}").classes("font-mono w-12")
                        ui.label(when).classes("text-caption w-40")
                        ui.label(v["message"] or "").classes("grow text-body2")
                        if v["version"] != numbers[0]:
                            ui.button("Restore", on_click=lambda n=v["version"]: restore(n)) \
                                .props("flat dense no-caps").mark("restore")
            with ui.row().classes("items-center gap-2"):
                old = ui.select(numbers, label="From", value=numbers[min(1, len(numbers) - 1)]).classes("w-28") \
                    .mark("diff-old")
                new = ui.select(numbers, label="To", value=numbers[0]).classes("w-28").mark("diff-new")
                ui.button("Diff", on_click=lambda: show_diff()).props("outline no-caps").mark("diff")
            out = ui.column().classes("w-full gap-0 font-mono text-body2").mark("diff-output")

            def show_diff() -> None:
                d = diff_flows(self.store.get_flow(name, old.value), self.store.get_flow(name, new.value))
                out.clear()
                with out:
                    for line in d.summary() or ["(no differences)"]:
                        color = {"+": "text-positive", "-": "text-negative"}.get(line[:1], "")
                        ui.label(line).classes(color)

            def restore(version: int) -> None:
                if self._run(self.store.restore_version, name, version):
                    ui.notify(f"Restored version {version} of '{name}' as a new version", type="positive")
                dialog.close()
                self.table.refresh()

            ui.button("Close", on_click=dialog.close).props("flat no-caps")
        dialog.open()

    # -- helpers ------------------------------------------------------------------------------------
    def _run(self, fn: Any, *args: Any) -> bool:
        """Run a store action; its error becomes a notification (never a traceback)."""
        try:
            fn(*args)
            return True
        except SubterraError as e:
            ui.notify(str(e), type="negative", multi_line=True)
            return False

    def _free_name(self, name: str) -> str:
        if name_problem(name):
            name = _safe_name(name)
        candidate, k = name, 2
        while self.store.has_flow(candidate):
            candidate, k = f"{name}-{k}", k + 1
        return candidate


def _safe_name(name: str) -> str:
    """A suggestion that follows the name rule (the person can still edit it)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-._")[:64]
    return cleaned or "imported"


def _import_langgraph_upload(filename: str, data: bytes) -> ImportResult:
    """Write the upload to a private temp folder and read its graph (runs in a worker thread)."""
    stem = _safe_name(Path(filename).stem)
    with tempfile.TemporaryDirectory(prefix="subterra-upload-") as tmp:
        path = Path(tmp) / f"{stem}.py"
        path.write_bytes(data)
        result = import_file(path, fmt="langgraph")
    for i, note in enumerate(result.notes):
        result.notes[i] = note.replace(path.name, filename)
    return result
