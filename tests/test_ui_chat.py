"""/chat through NiceGUI's simulated user (no browser): the columns for a registry model, the greeting,
one message to every column with per-turn numbers and node badges, scenario presets, the simulated
user, reset/save, and clear errors. The models are tiny random ones in worker processes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import quote

import pytest
from nicegui import ui
from nicegui.testing.user import User

from engine.agents.worker import shutdown_workers
from engine.registry import register_model
from engine.store import Store
from ui.pages.chat import flow_map


@pytest.fixture(scope="module", autouse=True)
def _stop_workers():
    yield
    shutdown_workers()


def chat_url(tiny: Path, **extra: str) -> str:
    args = {"model": "tiny", "backend": "local", "backend_model": str(tiny), "max_tokens": "12", **extra}
    return "/chat?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in args.items())


def texts(user: User, marker: str) -> list[str]:
    return [getattr(e, "text", "") for e in user.find(marker=marker).elements]


async def until(cond, what: str, timeout: float = 240.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def done_replies(user: User, column: str) -> int:
    try:
        with user.scope(marker=f"column-{column}"):
            return len(user.find(marker="done").elements)
    except AssertionError:  # the column (or a finished reply) is not on the page yet
        return 0


async def test_chat_opens_with_greetings_and_answers_in_both_columns(user: User, tiny_model_dir: Path) -> None:
    register_model("tiny", tiny_model_dir, {"flow": "travel"}, store=Store())
    await user.open(chat_url(tiny_model_dir))
    await user.should_see(marker="column-compiled", retries=100)
    await user.should_see(marker="column-in-context")
    # nobody typed yet: each column opens with its greeting, like a support widget
    await until(lambda: done_replies(user, "compiled") == 1 and done_replies(user, "in-context") == 1, "greetings")
    user.find(marker="chat-input").type("I would like to book a trip to Lisbon")
    user.find(marker="send").click()
    await until(lambda: done_replies(user, "compiled") == 2 and done_replies(user, "in-context") == 2, "replies")
    with user.scope(marker="column-compiled"):
        assert texts(user, "user-text") == ["I would like to book a trip to Lisbon"]
        stats = texts(user, "turn-stats")
        assert len(stats) == 2 and all(" in · " in s and "first token" in s and "$" in s for s in stats)
        assert len(user.find(marker="node-badge").elements) == 2
        assert "conversation: $" in texts(user, "column-cost")[0]
    with user.scope(marker="column-in-context"):
        assert len(user.find(marker="node-badge").elements) == 2
    await user.should_see(marker="cost-ratio")
    assert "× the compiled model" in texts(user, "cost-ratio")[0]


async def test_scenario_role_card_and_three_simulated_turns(user: User, tiny_model_dir: Path) -> None:
    register_model("tiny", tiny_model_dir, {"flow": "travel"}, store=Store())
    await user.open(chat_url(tiny_model_dir, max_tokens="6"))
    await until(lambda: done_replies(user, "compiled") == 1 and done_replies(user, "in-context") == 1, "greetings")
    user.find(marker="new-scenario").click()
    await user.should_see(marker="role-card")
    await user.should_see("Role card #0: you are the customer")
    user.find(marker="play").click()

    def simulated(column: str) -> int:
        with user.scope(marker=f"column-{column}"):
            return sum(getattr(e, "text", "") == "simulated customer" for e in user.find(ui.label).elements)

    await until(lambda: simulated("compiled") >= 1 and simulated("in-context") >= 1, "the simulated user", 240)
    # reset in the middle of the simulation: what still runs stops, each column greets afresh
    user.find(marker="reset").click()
    await until(lambda: done_replies(user, "compiled") == 1 and done_replies(user, "in-context") == 1,
                "a fresh greeting after reset")
    await asyncio.sleep(3)
    assert simulated("compiled") == 0 and simulated("in-context") == 0  # the old simulation stopped
    assert done_replies(user, "compiled") == 1
    user.find(marker="save").click()
    await user.should_see("Saved to")
    assert list((Path(Store().path).parent / "chats").glob("travel-*.json"))


async def test_an_unknown_model_is_one_clear_line(user: User) -> None:
    await user.open("/chat?model=nope")
    await user.should_see(marker="chat-error", retries=100)
    await user.should_see("no model named 'nope' in the registry")


def test_flow_map_marks_the_path_and_the_current_node(store) -> None:  # noqa: ANN001
    from engine.agents.session import NodeStep
    from engine.store import load_flow

    flow = load_flow("travel", store)
    src = flow_map(flow, ["greet"], [NodeStep(node="greet", previous=None, on_edge=True)])
    ids = {n.id: f"n{i}" for i, n in enumerate(flow.nodes)}
    assert src.startswith("flowchart TD")
    assert f"class {ids['greet']} current" in src
    assert "linkStyle" not in src  # the start needs no edge
    second = next(e.target for e in flow.out_edges("greet"))
    assert second in flow.node_map
