"""The studio's inspector shows and edits a node's dialogue fields (gathers / confirms / changes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nicegui.testing.user import User
from nicegui.testing.user_simulation import user_simulation

from engine.store import Store
from ui.components.flow_canvas import assets_built

MAIN = Path(__file__).resolve().parent.parent / "ui" / "main.py"

pytestmark = pytest.mark.skipif(not assets_built(), reason="canvas assets not built; run `make ui-assets`")


@pytest.fixture
async def user(subterra_home: Path) -> AsyncIterator[User]:
    async with user_simulation(main_file=MAIN) as u:
        yield u


async def test_inspector_shows_and_edits_what_a_node_gathers(user: User) -> None:
    store = Store()
    await user.open("/flow/travel")
    user.find(marker="canvas").trigger("select", {"kind": "node", "id": "ask_details"})
    await user.should_see(marker="node-gathers")
    await user.should_see(marker="node-confirms")
    gathers = user.find(marker="node-gathers").elements.pop()
    assert gathers.value == ["destination", "travel_dates", "budget", "travelers", "origin_city"]
    gathers.set_value(["travel_dates", "budget"])
    await asyncio.sleep(1.8)  # autosave
    assert store.get_flow("travel").node("ask_details").gathers == ["travel_dates", "budget"]
    user.find(marker="canvas").trigger("select", {"kind": "node", "id": "react_options"})
    await user.should_see(marker="node-changes")
    changes = user.find(marker="node-changes").elements.pop()
    assert changes.value == ["destination", "travel_dates", "budget", "travelers"]
