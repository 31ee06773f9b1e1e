"""The generate panel's logic through NiceGUI's simulated user: the form becomes a real generation job
(its own worker process), progress reaches done, the browser filters the conversations, a clicked
message highlights its node, the canvas shows edge coverage, and the API key never reaches the store."""

from __future__ import annotations

import asyncio
import json

import pytest
from nicegui.testing.user import User

from engine.jobs import list_jobs
from engine.store import Store
from ui.components.flow_canvas import FlowCanvas, assets_built

pytestmark = pytest.mark.skipif(not assets_built(), reason="canvas assets not built; run `make ui-assets`")


def canvas(user: User) -> FlowCanvas:
    return next(iter(user.find(FlowCanvas).elements))


def value_of(user: User, marker: str) -> object:
    return next(iter(user.find(marker=marker).elements))


async def until(check, what: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def test_generate_panel_runs_a_job_to_done_and_browses_it(user: User) -> None:
    await user.open("/flow/travel?panel=generate")
    await user.should_see(marker="generate-panel")
    n = value_of(user, "gen-n")
    n.value = 14  # type: ignore[attr-defined]
    await user.should_see("Estimate: 14 conversations")
    user.find(marker="gen-start").click()
    await until(lambda: list_jobs() and list_jobs()[0].status == "done", "the generation job to finish")
    job = list_jobs()[0]
    assert job.kind == "generate" and job.flow == "travel" and job.name == "travel-v1"
    await user.should_see("14/14 conversations in 'travel-v1'", retries=50)
    await user.should_see("14 matching conversation(s)", retries=50)
    # coverage on the canvas: every edge carries its count, uncovered ones are marked
    edges = canvas(user).props["graph"]["edges"]
    assert all("×" in e["label"] for e in edges)
    assert all(("st-covered" in e["cls"]) != ("st-uncovered" in e["cls"]) for e in edges)
    await user.should_see(marker="coverage-text")
    # the dataset's data-quality report, as `subterra datasets show` prints it
    await user.should_see(marker="data-quality")
    await user.should_see("facts re-asked")
    await user.should_see("facts unused")
    # filters: eval split only, then text that no conversation contains
    value_of(user, "filter-split").value = "eval"  # type: ignore[attr-defined]
    await user.should_see("matching conversation(s)")
    store = Store()
    ds = store.dataset_row("travel-v1")
    n_eval = sum(1 for r in store.iter_conversation_rows(ds["id"], "eval"))
    await user.should_see(f"{n_eval} matching conversation(s)")
    value_of(user, "filter-split").value = None  # type: ignore[attr-defined]
    value_of(user, "filter-text").value = "zzz-no-such-text"  # type: ignore[attr-defined]
    await user.should_see("0 matching conversation(s)", retries=50)
    value_of(user, "filter-text").value = ""  # type: ignore[attr-defined]
    await user.should_see("14 matching conversation(s)", retries=50)
    # a message of the first conversation shown highlights its node on the canvas
    store_conv = next(store.iter_conversation_rows(ds["id"]))
    node_id = json.loads(store_conv["meta"])["message_nodes"][1]
    user.find(marker=f"msg-{store_conv['slot']}-1").click()
    hl = [x["id"] for x in canvas(user).props["graph"]["nodes"] if "st-hl" in x["cls"]]
    assert hl == [node_id]


async def test_api_key_is_handed_to_the_worker_only(user: User) -> None:
    from fake_llm import FakeLLMServer  # the real-HTTP fake of the Anthropic API

    with FakeLLMServer() as server:
        await user.open("/flow/travel?panel=generate")
        value_of(user, "gen-backend").value = "anthropic"  # type: ignore[attr-defined]
        value_of(user, "gen-model").value = "claude-test"  # type: ignore[attr-defined]
        value_of(user, "gen-endpoint").value = server.base_url  # type: ignore[attr-defined]
        value_of(user, "gen-key").value = "sk-ant-secret-xyz"  # type: ignore[attr-defined]
        value_of(user, "gen-n").value = 2  # type: ignore[attr-defined]
        user.find(marker="gen-start").click()
        await until(lambda: list_jobs() and not list_jobs()[0].live, "the anthropic generation job to end", 90)
        job = list_jobs()[0]
        assert job.status == "done", job.message
        dump = json.dumps(list(Store().db.query("select * from jobs")))
        assert "sk-ant-secret-xyz" not in dump and "sk-ant-secret-xyz" not in open(job.log).read()
        assert job.config["generate"]["backend"] == "anthropic"


async def test_start_is_refused_with_a_message_for_a_bad_form(user: User) -> None:
    await user.open("/flow/travel?panel=generate")
    value_of(user, "gen-n").value = 0  # type: ignore[attr-defined]
    user.find(marker="gen-start").click()
    await user.should_see("Check the form")
    assert list_jobs() == []
