# ruff: noqa: F811  (the studio and browser fixtures come from test_ui_browser)
"""/chat and its Evaluate tab in a real headless Chromium against `subterra studio` (a subprocess):
a message to both columns streams in several steps in each (a MutationObserver records every paint of
the growing reply), node badges under the replies, the simulated user plays three turns in both
columns, and a scripted evaluation of 3 scenarios started from the page ends with the report's charts.
Tiny random models keep it fast. Screenshots go to test-artifacts/ (and SUBTERRA_SHOTS when set)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from test_ui_browser import CHROMEDRIVER, CHROMIUM, browser, css, field, has_text, studio, wait_for, xpath  # noqa: F401

from engine.agents.session import scenario_preset
from engine.agents.worker import shutdown_workers
from engine.jobs import list_jobs
from engine.registry import register_model
from engine.store import Store
from ui.components.flow_canvas import assets_built

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()),
                       reason="needs chromium and chromedriver (make system-deps)"),
    pytest.mark.skipif(not assets_built(), reason="canvas assets not built; run `make ui-assets`"),
]
COLUMNS = ("compiled", "in-context")
RECORD_JS = """
window.__lens = {};
const cols = arguments[0];
for (const k of cols) window.__lens[k] = [];
new MutationObserver(() => {
  for (const k of cols) {
    const el = document.querySelector('.st-col-' + k + ' .st-streaming .st-agent-text');
    const a = window.__lens[k];
    if (el && (!a.length || a[a.length - 1] !== el.textContent.length)) a.push(el.textContent.length);
  }
}).observe(document.body, {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture(autouse=True)
def _stop_workers():
    yield
    shutdown_workers()


def shot(driver, artifacts: Path, name: str, height: int | None = None) -> None:  # type: ignore[no-untyped-def]
    if height:  # the whole conversation: a taller window for this one picture
        driver.set_window_size(1600, height)
    time.sleep(0.5)
    driver.save_screenshot(str(artifacts / f"chat-{name}.png"))
    extra = os.environ.get("SUBTERRA_SHOTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(extra) / f"{name}.png"))
    if height:
        driver.set_window_size(1600, 1100)


def set_field(driver, label: str, value: str) -> None:  # type: ignore[no-untyped-def]
    """Type `value` into the field, again until it holds exactly that: the page may re-render the field
    between keystrokes (a number field then reads '00' for '0')."""
    from selenium.webdriver.common.keys import Keys

    def attempt(d) -> bool:  # type: ignore[no-untyped-def]
        el = field(d, label)
        d.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].focus(); "
                         "arguments[0].select();", el)
        el.send_keys(Keys.BACKSPACE * (len(el.get_attribute("value") or "") + 1))
        el.send_keys(value)
        time.sleep(0.3)
        return el.get_attribute("value") == value

    wait_for(driver, attempt, f"the field {label!r} to hold {value!r}")


def click(driver, text: str) -> None:  # type: ignore[no-untyped-def]
    el = wait_for(driver, lambda d: (xpath(d, f'//button[.//span[normalize-space()="{text}"]]') or [None])[0],
                  f"button {text}")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click();", el)


def done(driver, column: str) -> int:  # type: ignore[no-untyped-def]
    return len(css(driver, f".st-col-{column} .st-done"))


def simulated(driver, column: str) -> int:  # type: ignore[no-untyped-def]
    return sum(e.text == "simulated customer" for e in css(driver, f".st-col-{column} .st-who"))


@pytest.fixture
def tiny_registered(tiny_model_dir: Path, subterra_home: Path) -> Path:
    register_model("tiny", tiny_model_dir, {"flow": "travel"}, store=Store())
    return tiny_model_dir


def test_both_columns_stream_map_nodes_and_let_the_simulated_user_play(
        tiny_registered: Path, studio: str, browser, artifacts_dir: Path) -> None:  # type: ignore[no-untyped-def]
    d = browser
    t0 = time.perf_counter()
    d.get(f"{studio}/chat?model=tiny&backend=local&backend_model={quote(str(tiny_registered), safe='')}&max_tokens=48")
    # a fresh worker is loading its model: the columns say so instead of hanging silently
    wait_for(d, lambda d: any("loading" in e.text for e in css(d, ".st-col-compiled .st-status")), "the loading state")
    shot(d, artifacts_dir, "loading")
    wait_for(d, lambda d: css(d, ".st-col-compiled .st-agent-text"), "the compiled model's first streamed text", 120)
    first_token_s = time.perf_counter() - t0
    wait_for(d, lambda d: all(done(d, c) == 1 for c in COLUMNS), "both greetings", 120)
    shot(d, artifacts_dir, "greeting")

    d.execute_script(RECORD_JS, list(COLUMNS))
    box = css(d, ".st-chat-input input")[0]
    box.send_keys("Hi, I want to book a trip to Lisbon\n")
    wait_for(d, lambda d: all(done(d, c) == 2 for c in COLUMNS), "both replies", 120)
    lens = d.execute_script("return window.__lens")
    for c in COLUMNS:
        steps = lens[c]
        assert len(steps) >= 3 and steps == sorted(steps), (c, steps)  # grew in several paints, never shrank
    assert all(css(d, f".st-col-{c} .st-done .st-node-badge") for c in COLUMNS)
    assert all(len(css(d, f".st-col-{c} .st-done")) == 2 for c in COLUMNS)
    assert has_text(d, "first token") and has_text(d, "conversation: $")
    shot(d, artifacts_dir, "reply")

    flow = Store().get_flow("travel")
    seed = next(s for s in range(100) if sum(flow.node(n).role == "user" for n in scenario_preset(flow, s).path) >= 3)
    set_field(d, "Scenario #", str(seed))
    click(d, "New scenario")
    wait_for(d, lambda d: has_text(d, f"Role card #{seed}: you are the customer"), "the role card")
    click(d, "Let the simulated user play")
    wait_for(d, lambda d: all(simulated(d, c) >= 3 for c in COLUMNS)
             and all(done(d, c) >= 5 for c in COLUMNS), "three simulated turns in both columns", 180)
    shot(d, artifacts_dir, "simulated", height=int(d.execute_script("return document.body.scrollHeight")) + 200)
    (artifacts_dir / "chat-timings.json").write_text(json.dumps({"open_to_first_token_s": first_token_s}))


def test_a_scripted_evaluation_from_the_page_shows_the_report_charts(
        tiny_registered: Path, studio: str, browser, artifacts_dir: Path) -> None:  # type: ignore[no-untyped-def]
    d = browser
    d.get(f"{studio}/chat?tab=evaluate&flow=travel&model=tiny")
    set_field(d, "Agents (one spec per line)", f"compiled:{tiny_registered}\nin-context:travel@local:{tiny_registered}")
    for label, value in (("Scenarios", "3"), ("Max turns", "3"), ("Agent max tokens", "8"), ("Customer first", "0.5")):
        set_field(d, label, value)
    click(d, "Run evaluation")
    wait_for(d, lambda d: has_text(d, "Evaluation job"), "the job's progress")
    shot(d, artifacts_dir, "evaluate-progress")
    wait_for(d, lambda d: len([p for p in css(d, ".js-plotly-plot .main-svg") if p.size["height"] > 200]) >= 3,
             "the report's charts, drawn", 300)
    assert has_text(d, "Procedure following") and has_text(d, "Cost")
    assert has_text(d, "english_share")  # the English share is one of the charted metrics
    job = next(j for j in list_jobs() if j.kind == "evaluate")
    assert job.config["evaluate"]["customer_first"] == 0.5  # the form's field reached the evaluation
    shot(d, artifacts_dir, "evaluate-report", height=3200)
