"""Two tabs on one flow: after the other tab renamed or deleted it, "overwrite with mine" succeeds and
"load theirs" goes to what is there; edits kept during a conflict survive the tab closing; every
stored flow opens in the editor (names stored before the name rule included)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest
from nicegui.testing.user import User
from nicegui.testing.user_simulation import user_simulation

from engine import editing
from engine.store import Store
from ui.components.flow_canvas import assets_built

MAIN = Path(__file__).resolve().parent.parent / "ui" / "main.py"

pytestmark = pytest.mark.skipif(not assets_built(), reason="canvas assets not built; run `make ui-assets`")


@pytest.fixture
async def user(subterra_home: Path) -> AsyncIterator[User]:
    async with user_simulation(main_file=MAIN) as u:
        yield u


async def test_overwrite_after_the_other_tab_deleted_the_flow(user: User) -> None:
    store = Store()
    await user.open("/flow/zoom")
    store.delete_flow("zoom")
    user.find(marker="add-agent").click()  # an edit this tab cannot save: the flow is gone
    await user.should_see("This flow was deleted in another tab or window", retries=40)
    user.find(marker="overwrite").click()
    await asyncio.sleep(0.3)
    assert "agent_1" in store.get_flow("zoom").node_map  # mine is stored again under its name
    await user.should_not_see(marker="conflict")


async def test_load_theirs_after_the_other_tab_renamed_the_flow(user: User) -> None:
    store = Store()
    await user.open("/flow/zoom")
    store.rename_flow("zoom", "zoom-renamed")
    user.find(marker="add-agent").click()
    await user.should_see("This flow was renamed to 'zoom-renamed'", retries=40)
    user.find(marker="load-theirs").click()  # raised FlowNotFoundError before
    await user.should_see(marker="save-status", retries=20)
    assert "agent_1" not in store.get_flow("zoom-renamed").node_map and not store.has_flow("zoom")


async def test_edits_kept_during_a_conflict_survive_closing_the_tab(user: User) -> None:
    store = Store()
    await user.open("/flow/travel")
    other = store.get_flow("travel").copy_deep()
    other.description = "theirs"
    store.save_flow(other, message="other tab")
    user.find(marker="add-terminal").click()
    await user.should_see(marker="conflict-text", retries=40)
    for handler in list(user.client.disconnect_handlers):  # the tab closes
        user.client.safe_invoke(handler)
    await asyncio.sleep(0.3)
    assert store.get_flow("travel").description == "theirs"  # theirs untouched
    assert "terminal_1" in store.get_flow("travel-copy").node_map  # mine kept


async def test_every_stored_flow_opens(user: User) -> None:
    store = Store()
    store.create_flow(editing.new_flow("plain"))
    store.db.execute("update flows set name = ? where name = 'plain'", ["legacy/with slash & space"])
    store.db.conn.commit()
    await user.open("/flow/" + quote("legacy/with slash & space", safe=""))
    await user.should_see(marker="save-status")
    await user.should_not_see(marker="not-found")
