"""The canvas gestures of issue 16 in a real headless Chromium, each checked in the saved flow (the
SQLite store the studio writes), not only on the screen. One studio server and one browser serve the
whole module. Screenshots: /work/notes/shots/issue16/ when that folder exists, else test-artifacts/."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine import editing
from engine.store import Store
from tests.canvas_helpers import generated_flow
from tests.test_ui_browser import CHROMEDRIVER, CHROMIUM, _free_port, css, node, wait_for, xpath
from ui.components.flow_canvas import assets_built

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                       reason="needs chromium and chromedriver (make system-deps)"),
    pytest.mark.skipif(not assets_built(), reason="canvas assets not built; run `make ui-assets`"),
]

SHOTS = Path("/work/notes/shots/issue16")
READABLE_ZOOM = 0.75  # flow_canvas.js: fit-to-screen never goes below


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("canvas-home")


@pytest.fixture(autouse=True)
def _module_home(home: Path, subterra_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUBTERRA_HOME", str(home))  # the studio's data dir, shared by the module


@pytest.fixture(scope="module")
def studio(home: Path, artifacts_dir: Path) -> Iterator[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"} | {"SUBTERRA_HOME": str(home)}
    Store(home / "subterra.db")  # seed the sample flows before the server opens the same file
    port = _free_port()
    log = open(artifacts_dir / "canvas-server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "engine", "studio", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            try:
                if httpx.get(url + "/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the studio did not start; see {artifacts_dir / 'canvas-server.log'}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1600,1100"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def shots(artifacts_dir: Path) -> Path:
    return SHOTS if SHOTS.is_dir() else artifacts_dir


# -- helpers ------------------------------------------------------------------------------------------

def open_flow(d, studio: str, name: str, count: int) -> float:  # type: ignore[no-untyped-def]
    """Open the editor; returns seconds until all `count` cards are drawn and fitted to the screen."""
    return open_timed(d, studio, name, count)[0]


def open_timed(d, studio: str, name: str, count: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(seconds from the request until the canvas is drawn and fitted, seconds of that after the page's
    first byte arrived: the browser's share, without the server building the page)."""
    d.get("about:blank")
    t0 = time.monotonic()
    d.get(f"{studio}/flow/{name}")
    wait_for(d, lambda d: len(css(d, ".vue-flow__node-st")) == count and css(d, '.st-canvas[data-ready="1"]'),
             f"{count} nodes of {name} drawn and fitted")
    total = time.monotonic() - t0
    first_byte = d.execute_script("return performance.getEntriesByType('navigation')[0].responseStart")
    ready_at = float(css(d, ".st-canvas")[0].get_attribute("data-ready-at"))
    return total, (ready_at - first_byte) / 1000


def zoom(d) -> float:  # type: ignore[no-untyped-def]
    return float(css(d, ".st-canvas")[0].get_attribute("data-zoom"))


def saved(name: str):  # type: ignore[no-untyped-def]
    return Store().get_flow(name)


def keys(d, *combo: str) -> None:  # type: ignore[no-untyped-def]
    """Press a chord such as (CONTROL, "c") on the page."""
    from selenium.webdriver.common.action_chains import ActionChains

    chain = ActionChains(d)
    for k in combo[:-1]:
        chain.key_down(k)
    chain.send_keys(combo[-1])
    for k in reversed(combo[:-1]):
        chain.key_up(k)
    chain.perform()


def menu_item(d, action: str):  # type: ignore[no-untyped-def]
    return wait_for(d, lambda d: (css(d, f'.st-menu .st-item[data-action="{action}"]') or [None])[0],
                    f"the menu item {action}")


def right_click(d, el, dx: int = 0, dy: int = 0) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(d).move_to_element_with_offset(el, dx, dy).context_click().perform()


def pane(d):  # type: ignore[no-untyped-def]
    return css(d, ".vue-flow__pane")[0]


def overlaps(d) -> list[str]:  # type: ignore[no-untyped-def]
    """Edge conditions whose label box covers a node card or another condition (screen rectangles)."""
    return d.execute_script("""
        const hit = (r, c) => r.left < c.right - 1 && r.right > c.left + 1
                              && r.top < c.bottom - 1 && r.bottom > c.top + 1;
        const cards = [...document.querySelectorAll('.vue-flow__node-st')].map(e => e.getBoundingClientRect());
        const bad = [], seen = [];
        for (const l of document.querySelectorAll('.vue-flow__edge-textwrapper')) {
          const r = l.getBoundingClientRect();
          if (!r.width) continue;
          const id = l.closest('.vue-flow__edge').dataset.id;
          if (cards.some(c => hit(r, c))) bad.push('card: ' + id);
          if (seen.some(c => hit(r, c))) bad.push('label: ' + id);
          seen.push(r);
        }
        return bad;""")


def fresh_demo(name: str) -> Store:
    """A small flow of every role: greet -> ask -> answer -> hub -> done, plus a loose agent turn."""
    store = Store()
    f = editing.new_flow(name)
    f, ask = editing.add_connected(f, "greet", "agent", 0, 120)
    f = editing.remove(f, edges=["greet->done"])
    f, answer = editing.add_connected(f, ask, "user", 0, 240)
    f, hub = editing.add_connected(f, answer, "decision", 0, 360)
    f, _ = editing.connect(f, hub, "done", when="the user is happy")
    f = editing.move_nodes(f, {"done": (0, 480)})
    store.save_flow(f, message="test flow")
    return store


# -- readable at a glance ----------------------------------------------------------------------------

@pytest.mark.parametrize("name,count", [("travel", 14), ("insurance", 55)])
def test_fit_to_screen_is_readable_in_both_directions(studio: str, browser, shots: Path, name: str,
                                                      count: int) -> None:  # type: ignore[no-untyped-def]
    d = browser
    open_flow(d, studio, name, count)
    for direction, label in (("LR", "Left-right"), ("TB", "Top-down")):
        xpath(d, f'//button[.//span[normalize-space()="{label}"]]')[0].click()
        wait_for(d, lambda d, want=direction: saved(name).canvas.direction == want, f"direction {direction} saved")
        wait_for(d, lambda d, want=direction: css(d, f'.st-canvas[data-direction="{want}"]'), "the canvas redrawn")
        time.sleep(0.8)  # layout, fit transition
        flow = saved(name)
        first, second = flow.start, flow.out_edges(flow.start)[0].target
        a, b = flow.node(first).position, flow.node(second).position
        assert a and b
        assert (b.x > a.x + 100) if direction == "LR" else (b.y > a.y + 50), "the layout follows the direction"
        z = zoom(d)
        assert z >= READABLE_ZOOM - 1e-3, f"fit shrank {name} to zoom {z}"
        label_px = d.execute_script("return document.querySelector('.st-label').getBoundingClientRect().height")
        assert label_px >= 12, f"labels are {label_px:.1f} px tall on screen"
        if count <= 14:  # a small flow fills the canvas instead of sitting in a corner
            fill = d.execute_script("""
                const p = document.querySelector('.vue-flow').getBoundingClientRect();
                const cs = [...document.querySelectorAll('.vue-flow__node-st')].map(e => e.getBoundingClientRect());
                const w = Math.max(...cs.map(c => c.right)) - Math.min(...cs.map(c => c.left));
                const h = Math.max(...cs.map(c => c.bottom)) - Math.min(...cs.map(c => c.top));
                return Math.max(w / p.width, h / p.height);""")
            assert fill > 0.75, f"the 14-node flow fills only {fill:.0%} of the canvas"
        assert (bad := overlaps(d)) == [], f"{name} {direction}: edge conditions drawn over cards or conditions: {bad}"
        d.save_screenshot(str(shots / f"{name}-{direction}-fit.png"))


# -- faster drawing ------------------------------------------------------------------------------------

def rect(d, selector: str) -> dict[str, float]:  # type: ignore[no-untyped-def]
    r = d.execute_script(f"return document.querySelector('{selector}').getBoundingClientRect().toJSON()")
    assert r, f"nothing matches {selector}"
    return r  # type: ignore[no-any-return]


def card(node_id: str) -> str:
    return f'.vue-flow__node[data-id="{node_id}"]'


def gesture(d, points: list[tuple[float, float]], hold: str | None = None, button: str = "left") -> None:  # type: ignore[no-untyped-def]
    """Press at points[0], move through the rest in small steps, release: at viewport coordinates."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.mouse_button import MouseButton

    if hold:  # a key held through the gesture: pressed in an action sequence of its own
        ActionChains(d).key_down(hold).perform()
    chain = ActionChains(d, duration=30)
    b: ActionBuilder = chain.w3c_actions
    b.pointer_action.move_to_location(int(points[0][0]), int(points[0][1]))
    b.pointer_action.pointer_down(MouseButton.LEFT if button == "left" else MouseButton.RIGHT)
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        for k in range(1, 6):
            b.pointer_action.move_to_location(int(x0 + (x1 - x0) * k / 5), int(y0 + (y1 - y0) * k / 5))
    b.pointer_action.pause(0.15)
    b.pointer_action.pointer_up(MouseButton.LEFT if button == "left" else MouseButton.RIGHT)
    chain.perform()
    if hold:
        ActionChains(d).key_up(hold).perform()


def centre(r: dict[str, float]) -> tuple[float, float]:
    return r["left"] + r["width"] / 2, r["top"] + r["height"] / 2


def test_drag_from_a_handle_into_empty_space_adds_a_connected_node(studio: str, browser) -> None:  # type: ignore[no-untyped-def]
    d = browser
    fresh_demo("drawn")
    open_flow(d, studio, "drawn", 5)
    h = centre(rect(d, f'{card("user_1")} .vue-flow__handle.source'))
    gesture(d, [h, (h[0] + 40, h[1] + 20), (h[0] + 320, h[1] + 60)])
    items = wait_for(d, lambda d: css(d, ".st-menu .st-item"), "the 'add after' menu")
    offered = [i.get_attribute("data-action") for i in items]
    assert offered == ["connect-decision", "connect-agent"], offered  # after a user turn: hub or agent turn
    menu_item(d, "connect-decision").click()
    wait_for(d, lambda d: "decision_2" in saved("drawn").node_map, "the new hub saved")
    flow = saved("drawn")
    assert flow.edge_between("user_1", "decision_2") and flow.node("decision_2").position.x > 150  # type: ignore[union-attr]
    node(d, "decision_2")
    # from an agent turn the first offer is a user turn
    h = centre(rect(d, f'{card("greet")} .vue-flow__handle.source'))
    gesture(d, [h, (h[0] + 40, h[1] + 20), (h[0] + 420, h[1] + 10)])
    items = wait_for(d, lambda d: css(d, ".st-menu .st-item"), "the 'add after' menu of an agent turn")
    assert items[0].get_attribute("data-action") == "connect-user"
    from selenium.webdriver.common.keys import Keys

    keys(d, Keys.ESCAPE)
    wait_for(d, lambda d: not css(d, ".st-menu"), "the menu closed by Escape")
    assert "user_2" not in saved("drawn").node_map


def test_box_select_copy_paste_duplicate_move_delete_undo(studio: str, browser) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.keys import Keys

    d = browser
    fresh_demo("boxed")
    open_flow(d, studio, "boxed", 5)
    a, u = rect(d, card("agent_1")), rect(d, card("user_1"))
    # box selection: Shift + drag on empty canvas around agent_1 and user_1
    start = (a["left"] - 30, a["top"] - 12)
    gesture(d, [start, (u["right"] + 30, u["bottom"] + 10)], hold=Keys.SHIFT)
    wait_for(d, lambda d: {e.get_attribute("data-id") for e in css(d, ".vue-flow__node-st.selected")}
             == {"agent_1", "user_1"}, "agent_1 and user_1 box-selected")

    # Ctrl+C, point at empty canvas, Ctrl+V: the two with the edge between them, fresh ids, at the pointer
    keys(d, Keys.CONTROL, "c")
    spot = (u["right"] + 250, u["top"])
    gesture(d, [spot, (spot[0] + 5, spot[1] + 5)])  # a click on the pane: the pointer is now there
    keys(d, Keys.CONTROL, "v")
    wait_for(d, lambda d: {"agent_1_2", "user_1_2"} <= set(saved("boxed").node_map), "the pasted nodes saved")
    flow = saved("boxed")
    assert flow.edge_between("agent_1_2", "user_1_2")
    pasted = ("agent_1_2", "user_1_2")
    assert not [e for e in flow.edges if (e.source in pasted) != (e.target in pasted)]
    assert flow.node("agent_1_2").prompt == flow.node("agent_1").prompt
    assert flow.node("agent_1_2").position.x > flow.node("agent_1").position.x + 150  # type: ignore[union-attr]
    wait_for(d, lambda d: {e.get_attribute("data-id") for e in css(d, ".vue-flow__node-st.selected")}
             == {"agent_1_2", "user_1_2"}, "the pasted nodes selected")

    # Ctrl+D duplicates the (pasted) selection
    keys(d, Keys.CONTROL, "d")
    wait_for(d, lambda d: {"agent_1_2_2", "user_1_2_2"} <= set(saved("boxed").node_map), "the duplicates saved")
    assert saved("boxed").edge_between("agent_1_2_2", "user_1_2_2")
    wait_for(d, lambda d: {e.get_attribute("data-id") for e in css(d, ".vue-flow__node-st.selected")}
             == {"agent_1_2_2", "user_1_2_2"}, "the duplicates selected")

    # dragging one selected node moves both
    before = {n: saved("boxed").node(n).position for n in ("agent_1_2_2", "user_1_2_2")}
    c = centre(rect(d, card("agent_1_2_2")))
    gesture(d, [c, (c[0] + 20, c[1] + 10), (c[0] + 120, c[1] + 60)])
    wait_for(d, lambda d: all(saved("boxed").node(n).position.x > before[n].x + 60 for n in before),  # type: ignore[union-attr]
             "both moved nodes saved")
    after = {n: saved("boxed").node(n).position for n in before}
    assert abs((after["agent_1_2_2"].y - before["agent_1_2_2"].y)  # type: ignore[union-attr]
               - (after["user_1_2_2"].y - before["user_1_2_2"].y)) < 1  # type: ignore[union-attr]

    # Delete removes both; Ctrl+Z brings them back (and the restored flow is autosaved)
    keys(d, Keys.DELETE)
    wait_for(d, lambda d: not ({"agent_1_2_2", "user_1_2_2"} & set(saved("boxed").node_map)), "the deletion saved")
    keys(d, Keys.CONTROL, "z")
    wait_for(d, lambda d: {"agent_1_2_2", "user_1_2_2"} <= set(saved("boxed").node_map), "the undo saved")
    keys(d, Keys.CONTROL, Keys.SHIFT, "z")
    wait_for(d, lambda d: not ({"agent_1_2_2", "user_1_2_2"} & set(saved("boxed").node_map)), "the redo saved")

    # undo survives a reload: it steps back through the stored versions
    store = Store()
    head = store.flow_version("boxed")
    previous = set(store.get_flow("boxed", head - 1).node_map)
    open_flow(d, studio, "boxed", 7)
    keys(d, Keys.CONTROL, "z")
    wait_for(d, lambda d: Store().flow_version("boxed") == head + 1, "the undo after a reload saved")
    assert set(saved("boxed").node_map) == previous
    node(d, "agent_1_2_2")


# -- find and explain -----------------------------------------------------------------------------------

def test_search_shortcut_sheet_and_context_menus(studio: str, browser) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.keys import Keys

    d = browser
    store = Store()
    flow = store.get_flow("insurance").model_copy(update={"name": "claims"})
    store.save_flow(flow, message="copy for the test")
    open_flow(d, studio, "claims", 55)

    # Ctrl+K finds a node by words of its prompt and jumps to it (selected, in the inspector)
    target = next(n for n in reversed(flow.nodes) if n.prompt and len(n.prompt.split()) > 8)
    words = " ".join(target.prompt.split()[3:6])
    keys(d, Keys.CONTROL, "k")
    box = wait_for(d, lambda d: (css(d, ".st-search input") or [None])[0], "the search box")
    box.send_keys(words)
    hit = wait_for(d, lambda d: (css(d, ".st-search .st-hit") or [None])[0], "a search hit")
    assert hit.get_attribute("data-hit") == target.id
    box.send_keys(Keys.ENTER)
    wait_for(d, lambda d: xpath(d, f'//*[contains(text(), "Node · {target.id}")]'), "the found node in the inspector")
    wait_for(d, lambda d: css(d, f'{card(target.id)}.selected'), "the found node selected")
    # by label too, and Escape closes the box
    keys(d, Keys.CONTROL, "k")
    box = wait_for(d, lambda d: (css(d, ".st-search input") or [None])[0], "the search box")
    box.send_keys(flow.node(flow.start).label)
    wait_for(d, lambda d: css(d, f'.st-search .st-hit[data-hit="{flow.start}"]'), "the start node found by label")
    box.send_keys(Keys.ESCAPE)
    wait_for(d, lambda d: not css(d, ".st-search"), "the search box closed")

    # ? opens the shortcut sheet
    css(d, ".vue-flow__pane")[0].click()
    keys(d, "?")
    sheet = wait_for(d, lambda d: (css(d, ".st-help") or [None])[0], "the shortcut sheet")
    assert "Ctrl+K" in sheet.text and "Ctrl+D" in sheet.text and "box selection" in sheet.text
    keys(d, Keys.ESCAPE)
    wait_for(d, lambda d: not css(d, ".st-help"), "the sheet closed")

    # right click on a node: its menu; "Make start" is saved
    other = flow.out_edges(flow.start)[0].target
    reveal(d, other)
    right_click(d, node(d, other))
    actions = [i.get_attribute("data-action") for i in wait_for(d, lambda d: css(d, ".st-menu .st-item"), "a menu")]
    assert {"duplicate", "copy", "make-start", "delete"} <= set(actions), actions
    menu_item(d, "make-start").click()
    wait_for(d, lambda d: saved("claims").start == other, "the new start saved")

    # right click on an edge condition: delete the edge
    hub = next(n.id for n in flow.nodes if n.role == "decision")
    reveal(d, hub)
    edge = next(e for e in flow.edges
                if e.when and in_view(d, f'.vue-flow__edge[data-id="{e.id}"] .vue-flow__edge-textbg'))
    right_click(d, css(d, f'.vue-flow__edge[data-id="{edge.id}"] .vue-flow__edge-text')[0])
    menu_item(d, "delete").click()
    wait_for(d, lambda d: not saved("claims").edge_between(edge.source, edge.target), "the edge deletion saved")

    # right click on the empty canvas: add a node there
    p = rect(d, ".vue-flow")
    gesture(d, [(p["left"] + 40, p["top"] + 40)], button="right")
    menu_item(d, "add-terminal").click()
    wait_for(d, lambda d: "terminal_1" in saved("claims").node_map, "the added terminal saved")


def reveal(d, node_id: str) -> None:  # type: ignore[no-untyped-def]
    """Bring a node into view the way a user would: Ctrl+K, its id, Enter."""
    from selenium.webdriver.common.keys import Keys

    keys(d, Keys.CONTROL, "k")
    box = wait_for(d, lambda d: (css(d, ".st-search input") or [None])[0], "the search box")
    box.send_keys(node_id)
    wait_for(d, lambda d: css(d, f'.st-search .st-hit[data-hit="{node_id}"]'), f"{node_id} found")
    box.send_keys(Keys.ENTER)
    wait_for(d, lambda d: in_view(d, card(node_id)), f"{node_id} in view")
    time.sleep(0.4)  # the end of the viewport transition


def in_view(d, selector: str) -> bool:  # type: ignore[no-untyped-def]
    return bool(d.execute_script("""
        const e = document.querySelector(arguments[0]);
        if (!e) return false;
        const r = e.getBoundingClientRect(), c = document.querySelector('.vue-flow').getBoundingClientRect();
        return r.width > 0 && r.left >= c.left && r.right <= c.right && r.top >= c.top && r.bottom <= c.bottom;""",
                                 selector))


# -- notes and groups --------------------------------------------------------------------------------------

def test_sticky_notes_and_collapsible_groups_are_saved(studio: str, browser, shots: Path) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    from engine.formats import dump_flow

    d = browser
    store = fresh_demo("noted")
    open_flow(d, studio, "noted", 5)
    g = rect(d, card("greet"))
    gesture(d, [(g["right"] + 200, g["top"])], button="right")
    menu_item(d, "add-note").click()
    wait_for(d, lambda d: saved("noted").canvas.notes, "the note saved")
    wait_for(d, lambda d: css(d, ".st-note"), "the note on the canvas")

    def open_note(d):  # type: ignore[no-untyped-def]
        # the canvas re-renders the note once the save comes back: a double-click on the old element is lost
        if not css(d, ".st-note textarea"):
            ActionChains(d).double_click(css(d, ".st-note")[0]).perform()
            time.sleep(0.3)
        return (css(d, ".st-note textarea") or [None])[0]

    area = wait_for(d, open_note, "the note's text box")
    area.send_keys("Ask legal whether refunds need a manager")
    css(d, ".vue-flow__pane")[0].click()  # blur: saved
    wait_for(d, lambda d: saved("noted").canvas.notes[0].text == "Ask legal whether refunds need a manager",
             "the note text saved")
    version = store.flow_version("noted")
    assert "Ask legal whether refunds" in dump_flow(store.get_flow("noted"), "yaml")
    assert store.get_flow("noted", version - 2).canvas.notes == []  # before the note: in the history
    n = centre(rect(d, ".vue-flow__node-stnote"))
    x0 = saved("noted").canvas.notes[0].position.x
    gesture(d, [n, (n[0] + 20, n[1]), (n[0] + 100, n[1] + 30)])
    wait_for(d, lambda d: saved("noted").canvas.notes[0].position.x > x0 + 50, "the moved note saved")

    # Ctrl+click two nodes, Ctrl+G: a group; collapse it (one card, edges attach to it), expand, rename
    node(d, "agent_1").click()
    ActionChains(d).key_down(Keys.CONTROL).click(node(d, "user_1")).key_up(Keys.CONTROL).perform()
    wait_for(d, lambda d: len(css(d, ".vue-flow__node-st.selected")) == 2, "two selected nodes")
    keys(d, Keys.CONTROL, "g")
    wait_for(d, lambda d: saved("noted").canvas.groups, "the group saved")
    group = saved("noted").canvas.groups[0]
    assert group.nodes == ["agent_1", "user_1"] and not group.collapsed
    frame = wait_for(d, lambda d: (css(d, ".vue-flow__node-stgroup") or [None])[0], "the group frame")
    fr, ar = frame.rect, node(d, "agent_1").rect
    assert fr["x"] < ar["x"] and fr["y"] < ar["y"] and fr["x"] + fr["width"] > ar["x"] + ar["width"]
    time.sleep(0.3)
    d.save_screenshot(str(shots / "note-and-group.png"))
    css(d, ".st-group .st-toggle")[0].click()
    wait_for(d, lambda d: saved("noted").canvas.groups[0].collapsed, "the collapse saved")
    wait_for(d, lambda d: not [e for e in css(d, card("agent_1")) if e.is_displayed()], "the group's nodes hidden")
    assert "1 nodes" not in css(d, ".st-group")[0].text and "2 nodes" in css(d, ".st-group")[0].text
    time.sleep(0.3)
    d.save_screenshot(str(shots / "group-collapsed.png"))
    wait_for(d, lambda d: css(d, '.vue-flow__edge[data-id="greet->agent_1"]'), "the edge into the group drawn")
    css(d, ".st-group .st-toggle")[0].click()
    wait_for(d, lambda d: not saved("noted").canvas.groups[0].collapsed, "the expansion saved")
    wait_for(d, lambda d: node(d, "agent_1").is_displayed(), "the nodes back")
    ActionChains(d).double_click(css(d, ".st-group-label")[0]).perform()
    title = wait_for(d, lambda d: (css(d, ".st-group-head input") or [None])[0], "the title box")
    title.send_keys(Keys.CONTROL, "a")
    title.send_keys("Collect the details", Keys.ENTER)
    wait_for(d, lambda d: saved("noted").canvas.groups[0].label == "Collect the details", "the group title saved")
    # dragging the frame carries its nodes
    y0 = saved("noted").node("agent_1").position.y  # type: ignore[union-attr]
    h = centre(rect(d, ".st-group-head .st-count"))
    gesture(d, [h, (h[0] + 10, h[1] + 10), (h[0] + 40, h[1] + 90)])
    wait_for(d, lambda d: saved("noted").node("agent_1").position.y > y0 + 40, "the frame's nodes moved")  # type: ignore[union-attr]
    right_click(d, css(d, ".st-group-head .st-count")[0])
    menu_item(d, "ungroup").click()
    wait_for(d, lambda d: not saved("noted").canvas.groups, "the ungroup saved")
    assert {"agent_1", "user_1"} <= set(saved("noted").node_map)


# -- larger flows stay smooth ------------------------------------------------------------------------------

PAN_FRAMES = 60
PAN_SCRIPT = """
const done = arguments[arguments.length - 1];
const box = document.querySelector('.vue-flow').getBoundingClientRect();
const at = [box.left + box.width / 2, box.top + box.height / 2];
const pane = document.querySelector('.vue-flow__transformationpane');
const before = pane.style.transform;
const frames = [];
let last = null, i = 0;
function step(ts) {
  if (last !== null) frames.push(ts - last);
  last = ts;
  if (i++ >= FRAMES) { done({frames, moved: pane.style.transform !== before}); return; }
  const target = document.elementFromPoint(at[0], at[1]);
  target.dispatchEvent(new WheelEvent('wheel', {deltaX: 14, deltaY: (i % 60 < 30 ? 10 : -10), clientX: at[0],
                                                clientY: at[1], bubbles: true, cancelable: true}));
  requestAnimationFrame(step);
}
requestAnimationFrame(step);
""".replace("FRAMES", str(PAN_FRAMES))


def pan_frames(d) -> tuple[list[float], bool]:  # type: ignore[no-untyped-def]
    """Scroll-pan the canvas one wheel step per animation frame; the frame intervals in ms."""
    d.set_script_timeout(60)
    out = d.execute_async_script(PAN_SCRIPT)
    return [float(f) for f in out["frames"]], bool(out["moved"])


def test_open_and_pan_times_for_14_55_and_200_nodes(studio: str, browser, artifacts_dir: Path,
                                                      shots: Path) -> None:  # type: ignore[no-untyped-def]
    d = browser
    store = Store()
    big = generated_flow(200)
    store.save_flow(big, message="generated")
    open_flow(d, studio, big.name, 200)  # the first open lays the unplaced flow out and saves it
    wait_for(d, lambda d: not editing.unplaced(Store().get_flow(big.name)), "the 200-node layout saved")
    results = {}
    for name, count in (("travel", 14), ("insurance", 55), (big.name, 200)):
        opens = [open_timed(d, studio, name, count)]  # scripts are cached: earlier tests opened the editor
        wait_for(d, lambda d: xpath(d, '//*[contains(text(), "paths ·")]'), "the path statistics")
        time.sleep(1.0)  # the statistics' chart is drawn after them: measure the pan on a quiet page
        frames, moved = pan_frames(d)
        assert moved, f"the pan did not move the {name} canvas"
        results[count] = {"open_s": opens[0][0], "canvas_s": min(o[1] for o in opens),
                          "frame_ms_mean": statistics.mean(frames),
                          "frame_ms_p95": sorted(frames)[int(len(frames) * 0.95) - 1], "frame_ms_max": max(frames)}
    d.save_screenshot(str(shots / "generated-200-open.png"))
    base = results[14]
    lines = []
    for count, r in results.items():
        lines.append(f"{count:>3} nodes: open {r['open_s']:.2f} s ({r['open_s'] / base['open_s']:.2f}x; in the browser "
                     f"{r['canvas_s']:.2f} s, {r['canvas_s'] / base['canvas_s']:.2f}x), pan frame "
                     f"mean {r['frame_ms_mean']:.1f} ms ({r['frame_ms_mean'] / base['frame_ms_mean']:.2f}x), "
                     f"p95 {r['frame_ms_p95']:.1f} ms, max {r['frame_ms_max']:.1f} ms")
    report = "\n".join(lines)
    print("\ncanvas open and pan (ratios against the 14-node travel flow):\n" + report)
    (artifacts_dir / "canvas-open-pan.txt").write_text(report + "\n")
    (artifacts_dir / "canvas-open-pan.json").write_text(json.dumps(results, indent=2))
    # bounds with room for a shared CI box (times here swing 2-3x with the machine's load; measured 2.6-4.4x
    # for the open): the browser draws the 200-node flow within 6x the 14-node time (or 5 s) and pans it at
    # a mean frame time within 3x (or 80 ms); re-rendering every card on each pan step, say, breaks the
    # second bound. The whole open also includes the server building the page (the generate panel's
    # estimate grows with the flow).
    assert results[200]["canvas_s"] < max(6 * base["canvas_s"], 5.0), report
    assert results[200]["frame_ms_mean"] < max(3 * base["frame_ms_mean"], 80.0), report
    assert results[200]["open_s"] < 30, report
