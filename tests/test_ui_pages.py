"""The studio's page logic through NiceGUI's simulated user (no browser): library actions, import
with problems, export, history, and the editor's edit → validate → autosave → conflict loop.

Each test gets its own data dir (tests/conftest.py), so the pages talk to a real SQLite file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from nicegui import ui
from nicegui.elements.upload_files import SmallFileUpload
from nicegui.testing.user import User

from engine.store import Store
from ui.components.flow_canvas import FlowCanvas, assets_built

pytestmark = pytest.mark.skipif(not assets_built(), reason="canvas assets not built; run `make ui-assets`")


async def settle(seconds: float = 1.8) -> None:
    """Let autosave run (it waits for 1 s without edits, checked every 0.5 s)."""
    await asyncio.sleep(seconds)


# -- library ------------------------------------------------------------------------------------------

async def test_library_names_every_sample_flow(user: User) -> None:
    await user.open("/")
    for name in ("travel", "zoom", "insurance"):
        await user.should_see(marker=f"flow-{name}")
    await user.should_see("14 nodes · version 1")


async def test_new_flow_is_stored_and_opened_in_the_editor(user: User) -> None:
    await user.open("/")
    user.find(marker="new-flow").click()
    user.find(marker="name-input").type("my-flow")  # names follow the name rule
    user.find(marker="name-ok").click()
    await user.should_see(marker="canvas", retries=50)  # navigation builds a new page
    flow = Store().get_flow("my-flow")
    assert [n.role for n in flow.nodes] == ["agent", "terminal"]
    await user.should_see("No problems: this flow can be used.")


async def test_duplicate_rename_and_delete_with_confirmation(user: User) -> None:
    await user.open("/")
    with user.scope(marker="flow-zoom"):
        user.find(marker="duplicate").click()
    user.find(marker="name-input").clear().type("zoom2")
    user.find(marker="name-ok").click()
    await user.should_see(marker="flow-zoom2")

    with user.scope(marker="flow-zoom2"):
        user.find(marker="rename").click()
    user.find(marker="name-input").clear().type("zoom-b")
    user.find(marker="name-ok").click()
    await user.should_see(marker="flow-zoom-b")
    store = Store()
    assert store.has_flow("zoom-b") and not store.has_flow("zoom2")
    assert store.get_flow("zoom-b").nodes == store.get_flow("zoom").nodes

    with user.scope(marker="flow-zoom-b"):
        user.find(marker="delete").click()
    await user.should_see("Delete 'zoom-b' and all its versions?")
    user.find(marker="cancel-delete").click()
    assert Store().has_flow("zoom-b")  # cancelling deletes nothing
    with user.scope(marker="flow-zoom-b"):
        user.find(marker="delete").click()
    user.find(marker="confirm-delete").click()
    await user.should_not_see(marker="flow-zoom-b")
    assert not Store().has_flow("zoom-b")


async def test_rename_to_a_taken_name_is_refused_with_a_message(user: User) -> None:
    await user.open("/")
    with user.scope(marker="flow-zoom"):
        user.find(marker="rename").click()
    user.find(marker="name-input").clear().type("travel")
    user.find(marker="name-ok").click()
    await user.should_see("a flow named 'travel' already exists; pick another name")
    assert Store().has_flow("zoom")


async def test_import_shows_the_validators_problems_then_stores_the_flow(user: User) -> None:
    doc = {"name": "broken", "start": "hi", "nodes": [
        {"id": "hi", "role": "agent", "prompt": "Say hi to {customer}"},
        {"id": "orphan", "role": "user"},
        {"id": "end", "role": "terminal", "outcome": "success"},
    ], "edges": [{"source": "hi", "target": "end"}]}
    await user.open("/")
    upload = user.find(ui.upload).elements.pop()
    await upload.handle_uploads([SmallFileUpload("broken.yaml", "text/yaml", yaml.safe_dump(doc).encode())])
    await user.should_see("Import 'broken' · 3 nodes, 1 edges")
    await user.should_see(marker="import-problems")
    await user.should_see("orphan")  # the unreachable node is named
    user.find(marker="import-ok").click()
    await user.should_see(marker="flow-broken")
    assert [n.id for n in Store().get_flow("broken").nodes] == ["hi", "orphan", "end"]


async def test_import_of_a_bad_file_says_why_without_a_traceback(user: User) -> None:
    await user.open("/")
    upload = user.find(ui.upload).elements.pop()
    await upload.handle_uploads([SmallFileUpload("x.yaml", "text/yaml", b"nodes: [1, 2")])
    await user.should_see("This file cannot be imported")
    await user.should_see(marker="import-error")
    assert not any("Traceback" in str(lbl.text) for lbl in user.find(ui.label).elements)


async def test_export_each_format(user: User) -> None:
    await user.open("/")
    expected = {"json": b'"name": "travel"', "yaml": b"name: travel", "mermaid": b"flowchart",
                "agent2model": b"nodes:"}
    for fmt, needle in expected.items():
        with user.scope(marker="flow-travel"):
            user.find(marker=f"export-{fmt}").click()
        response = await user.download.next()
        assert needle in response.content, fmt


async def test_history_diff_and_restore(user: User) -> None:
    store = Store()
    flow = store.get_flow("zoom")
    changed = flow.copy_deep()
    changed.nodes[0].prompt = "A brand new opening prompt."
    store.save_flow(changed, message="edited prompt")
    await user.open("/")
    with user.scope(marker="flow-zoom"):
        user.find(marker="history").click()
    await user.should_see("edited prompt")
    user.find(marker="diff").click()
    await user.should_see(f"~ node {flow.nodes[0].id}: prompt")
    user.find(marker="restore").click()
    await user.should_see("Restored version 1 of 'zoom' as a new version")
    assert store.flow_version("zoom") == 3
    assert store.get_flow("zoom").nodes[0].prompt == flow.nodes[0].prompt


# -- editor -------------------------------------------------------------------------------------------

def canvas(user: User) -> FlowCanvas:
    return next(iter(user.find(FlowCanvas).elements))


async def test_editor_add_connect_edit_condition_autosaves_versions(user: User) -> None:
    store = Store()
    await user.open("/flow/travel")
    await user.should_see(marker="canvas")
    v0 = store.flow_version("travel")
    user.find(marker="add-agent").click()
    await settle()
    flow = store.get_flow("travel")
    assert "agent_1" in flow.node_map and store.flow_version("travel") == v0 + 1
    graph = canvas(user).props["graph"]
    assert "agent_1" in [n["id"] for n in graph["nodes"]]

    user.find(marker="canvas").trigger("connect", {"source": "agent_1", "target": "greet"})
    await user.should_see(marker="edge-when")  # the new edge is selected in the inspector
    user.find(marker="edge-when").type("the customer comes back")
    await settle()
    edge = store.get_flow("travel").edge_between("agent_1", "greet")
    assert edge is not None and edge.when == "the customer comes back"
    label = next(e["label"] for e in canvas(user).props["graph"]["edges"] if e["id"] == edge.id)
    assert label == "the customer comes back"


async def test_validation_problem_appears_marks_the_node_and_clears(user: User) -> None:
    await user.open("/flow/travel")
    await user.should_see(marker="no-problems")
    user.find(marker="add-user").click()  # an unconnected user turn: unreachable, leads nowhere
    await user.should_see(marker="problem-unreachable")
    node = next(n for n in canvas(user).props["graph"]["nodes"] if n["id"] == "user_1")
    assert "st-error" in node["cls"] or "st-warning" in node["cls"]
    user.find(marker="problem-unreachable").click()
    await user.should_see(marker="node-label")  # clicking the problem selected its node
    user.find(marker="canvas").trigger("remove", {"nodes": ["user_1"], "edges": []})
    await user.should_see(marker="no-problems")


async def test_undo_and_redo(user: User) -> None:
    store = Store()
    await user.open("/flow/zoom")
    user.find(marker="add-decision").click()
    await settle()
    assert "decision_1" in store.get_flow("zoom").node_map
    user.find(marker="canvas").trigger("undo")
    await settle()
    assert "decision_1" not in store.get_flow("zoom").node_map
    user.find(marker="canvas").trigger("redo")
    await settle()
    assert "decision_1" in store.get_flow("zoom").node_map


async def test_node_inspector_edits_label_prompt_examples_and_role(user: User) -> None:
    store = Store()
    await user.open("/flow/zoom")
    user.find(marker="canvas").trigger("select", {"kind": "node", "id": "describe_issue"})
    await user.should_see(marker="node-prompt")
    user.find(marker="node-label").clear().type("Hello there")
    user.find(marker="node-examples").clear().type("Hi, {customer_name}!\nWelcome back")
    await settle()
    node = store.get_flow("zoom").node("describe_issue")
    assert node.label == "Hello there" and node.examples == ["Hi, {customer_name}!", "Welcome back"]
    drawn = next(n for n in canvas(user).props["graph"]["nodes"] if n["id"] == "describe_issue")
    assert drawn["label"] == "Hello there"
    user.find(marker="node-role").click()  # role change: a user turn keeps label and prompt
    user.find("User turn").click()
    await settle()
    assert store.get_flow("zoom").node("describe_issue").role == "user"


async def test_flow_settings_system_prompt_and_variables(user: User) -> None:
    store = Store()
    await user.open("/flow/zoom")
    user.find(marker="system-prompt").clear().type("You are Zoom's support bot.")
    await settle()
    assert store.get_flow("zoom").system_prompt == "You are Zoom's support bot."
    user.find(marker="variables").clear().type("tier: {kind: choice, values: [free, pro]}")
    user.find(marker="apply-variables").click()
    await settle()
    assert store.get_flow("zoom").variables["tier"].values == ["free", "pro"]
    user.find(marker="variables").clear().type("tier: {kind: range, min: 5, max: 1}")
    user.find(marker="apply-variables").click()
    await user.should_see("swap them")  # the model's own message, no traceback


async def test_save_from_another_tab_is_detected_not_overwritten(user: User) -> None:
    store = Store()
    await user.open("/flow/travel")
    other = store.get_flow("travel").copy_deep()
    other.description = "edited in another tab"
    theirs = store.save_flow(other, message="other tab")
    user.find(marker="add-terminal").click()  # an edit on the stale version
    await user.should_see(marker="conflict-text")
    await settle()
    assert store.flow_version("travel") == theirs
    assert store.get_flow("travel").description == "edited in another tab"
    assert "terminal_1" not in store.get_flow("travel").node_map
    user.find(marker="save-copy").click()
    await settle(0.3)
    copy = store.get_flow("travel-copy")  # copies follow the name rule
    assert "terminal_1" in copy.node_map


async def test_conflict_resolved_by_loading_theirs_or_overwriting_on_request(user: User) -> None:
    store = Store()
    await user.open("/flow/zoom")
    other = store.get_flow("zoom").copy_deep()
    other.description = "theirs"
    theirs = store.save_flow(other, message="other tab")
    await user.should_see(marker="conflict-text", retries=30)  # seen even before this tab edits
    user.find(marker="add-agent").click()
    await user.should_see("your unsaved changes are kept here")
    user.find(marker="overwrite").click()  # the user's explicit choice
    await settle(0.3)
    assert store.flow_version("zoom") == theirs + 1 and "agent_1" in store.get_flow("zoom").node_map

    other = store.get_flow("zoom").copy_deep()
    other.description = "theirs again"
    store.save_flow(other, message="other tab")
    await user.should_see(marker="conflict-text", retries=30)
    user.find(marker="load-theirs").click()
    await settle(0.3)
    assert canvas(user).props["graph"]["version"] == store.flow_version("zoom")  # drawing their version
    await user.should_see(f"Saved · version {store.flow_version('zoom')}")
    await user.should_not_see(marker="conflict")


async def test_preview_stats_sample_path_and_dialogue(user: User) -> None:
    await user.open("/flow/travel")
    await user.should_see("paths ·", retries=50)  # counted off the event loop
    user.find(marker="sample-path").click()
    await user.should_see("Path (", retries=30)
    path_ids = [n["id"] for n in canvas(user).props["graph"]["nodes"] if "st-hl" in n["cls"]]
    assert "greet" in path_ids
    user.find(marker="preview-dialogue").click()
    await user.should_see(marker="message", retries=50)
    messages = sorted(user.find(marker="message").elements, key=lambda e: e.id)
    assert len(messages) >= 2
    await user.should_see("assistant · greet")  # each message is tagged with its node
    interaction = user.find(marker="message")
    interaction.elements = {messages[0]}
    interaction.click()
    await user.should_see(marker="node-label")
    hl = [n["id"] for n in canvas(user).props["graph"]["nodes"] if "st-hl" in n["cls"]]
    assert hl == ["greet"]


async def test_missing_flow_page_says_so(user: User) -> None:
    await user.open("/flow/nope")
    await user.should_see("There is no flow named 'nope'.")


# -- `subterra studio` ----------------------------------------------------------------------------------

def test_studio_warns_when_listening_beyond_this_machine(subterra_home: Path) -> None:
    """The real command: the warning comes first on stderr, before NiceGUI is even imported."""
    import os
    import subprocess
    import sys

    from engine.hosts import is_loopback

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5")
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    proc = subprocess.Popen([sys.executable, "-m", "engine", "studio", "--host", "0.0.0.0", "--port", "1"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, text=True)
    try:
        first = proc.stderr.readline() if proc.stderr else ""
    finally:
        proc.kill()
        proc.wait()
    assert first.startswith("warning: the studio listens on 0.0.0.0, not only on this machine")
