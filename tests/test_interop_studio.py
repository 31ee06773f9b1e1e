"""The studio's import dialog with the other tools' formats: Mermaid pasted or uploaded, a LangGraph file
run only after the warning is accepted, and the summary of what was guessed shown before saving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nicegui import ui
from nicegui.elements.upload_files import SmallFileUpload
from nicegui.testing.user import User
from nicegui.testing.user_simulation import user_simulation

from engine.formats import dump_flow
from engine.paths import path_stats
from engine.store import Store
from tests.test_interop_langgraph import SUPPORT
from ui.components.flow_canvas import assets_built

MAIN = Path(__file__).resolve().parent.parent / "ui" / "main.py"

pytestmark = pytest.mark.skipif(not assets_built(), reason="canvas assets not built; run `make ui-assets`")

DIAGRAM = """flowchart TD
    A[Greet] --> B[/Customer asks/]
    B --> C{Known?}
    C -->|yes| D([Done])
    C -->|no| E([Gave up])
"""


@pytest.fixture
async def user(subterra_home: Path) -> AsyncIterator[User]:
    async with user_simulation(main_file=MAIN) as u:
        yield u


async def test_pasted_mermaid_shows_the_guesses_then_stores(user: User) -> None:
    await user.open("/")
    user.find(marker="paste-import").click()
    user.find(marker="paste-text").type(DIAGRAM)
    user.find(marker="paste-ok").click()
    await user.should_see("Import 'pasted' · 5 nodes, 4 edges")
    await user.should_see(marker="import-summary")
    await user.should_see("guessed terminal outcomes from their labels: D success, E abandoned")
    user.find(marker="import-name").clear().type("my diagram")
    user.find(marker="import-ok").click()
    await user.should_see("'my diagram' cannot be used as a name")
    assert not Store().has_flow("my diagram")
    user.find(marker="import-name").clear().type("desk")
    user.find(marker="import-ok").click()
    await user.should_see(marker="flow-desk")
    flow = Store().get_flow("desk")
    assert [n.role for n in flow.nodes] == ["agent", "user", "decision", "terminal", "terminal"]


async def test_uploaded_mermaid_export_round_trips(user: User) -> None:
    travel = Store().get_flow("travel")
    await user.open("/")
    upload = user.find(ui.upload).elements.pop()
    await upload.handle_uploads([SmallFileUpload("travel.mmd", "text/plain", dump_flow(travel, "mermaid").encode())])
    await user.should_see("Import 'travel' · 14 nodes")
    user.find(marker="import-ok").click()  # the suggested name is free: travel-2
    await user.should_see(marker="flow-travel-2")
    assert path_stats(Store().get_flow("travel-2")).paths == path_stats(travel).paths


async def test_a_langgraph_file_runs_only_after_the_warning(user: User) -> None:
    await user.open("/")
    upload = user.find(ui.upload).elements.pop()
    await upload.handle_uploads([SmallFileUpload("support.py", "text/x-python", SUPPORT.encode())])
    await user.should_see(marker="langgraph-warning")
    await user.should_see("Import only files you trust")
    user.find(marker="run-langgraph").click()
    await user.should_see("Import 'support' · 11 nodes", retries=100)
    await user.should_see("inserted 3 customer turn(s)")
    await user.should_see("placeholder-prompt")
    user.find(marker="import-ok").click()
    await user.should_see(marker="flow-support")
    assert Store().get_flow("support").node("greet_reply").role == "user"


async def test_a_langgraph_file_that_raises_says_why(user: User) -> None:
    await user.open("/")
    upload = user.find(ui.upload).elements.pop()
    await upload.handle_uploads([SmallFileUpload("bad.py", "text/x-python", b"raise ValueError('nope')\n")])
    await user.should_see(marker="run-langgraph")
    user.find(marker="run-langgraph").click()
    await user.should_see("This file cannot be imported", retries=100)
    await user.should_see("ValueError at line 1 while importing the file: nope")


async def test_export_to_agent2model_says_what_it_leaves_out(user: User) -> None:
    await user.open("/")
    with user.scope(marker="flow-insurance"):
        user.find(marker="export").click()
    user.find(marker="export-agent2model").click()
    await user.should_see("agent2model knows only the outcomes success, abandonment and escalation")
