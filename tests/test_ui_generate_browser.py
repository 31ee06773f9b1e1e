"""The generate panel in a real headless Chromium (the studio as a subprocess, as in test_ui_browser):
a scripted generation of 20 conversations runs to done, a conversation is found in the browser and a
click on one of its messages highlights that node on the canvas. Screenshots go to test-artifacts/
(and /work/notes/shots/issue10/ when that folder exists)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from selenium.common.exceptions import ElementClickInterceptedException, ElementNotInteractableException
from test_ui_browser import browser, button, css, field, has_text, pytestmark, studio, wait_for, xpath  # noqa: F401

from engine.jobs import list_jobs
from engine.store import Store

NOTES_SHOTS = Path("/work/notes/shots/issue10")


def shot(driver, artifacts: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    time.sleep(0.5)  # let the last transition finish
    path = artifacts / f"issue10-{name}.png"
    driver.save_screenshot(str(path))
    if NOTES_SHOTS.is_dir():
        shutil.copy(path, NOTES_SHOTS / path.name)


def set_number(driver, label: str, value: object) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.keys import Keys

    el = field(driver, label)
    el.send_keys(Keys.CONTROL, "a")
    el.send_keys(str(value))


def test_generate_twenty_watch_done_browse_and_highlight(studio: str, browser, artifacts_dir: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811, E501
    d = browser
    d.get(studio + "/flow/travel?panel=generate")
    wait_for(d, lambda d: css(d, ".vue-flow__node"), "the canvas")
    set_number(d, "Conversations", 20)
    wait_for(d, lambda d: has_text(d, "Estimate: 20 conversations"), "the cost estimate for 20")
    t0 = time.monotonic()
    button(d, "Generate").click()
    wait_for(d, lambda d: has_text(d, "20/20 conversations in 'travel-v1'"), "the job's progress to reach done", 90)
    took = time.monotonic() - t0
    job = list_jobs()[0]
    assert job.status == "done" and job.kind == "generate" and job.progress == 1.0
    wait_for(d, lambda d: has_text(d, "20 matching conversation(s)"), "the browser to list the dataset")
    wait_for(d, lambda d: all("×" in e.text for e in css(d, ".vue-flow__edge-text")) and css(d, ".vue-flow__edge-text"),
             "edge coverage counts on the canvas")
    wait_for(d, lambda d: has_text(d, "facts re-asked") and has_text(d, "facts unused"), "the data-quality report")
    shot(d, artifacts_dir, "generate-done")
    report = css(d, ".nicegui-column[data-marker='data-quality'], [marker='data-quality']") or \
        xpath(d, '//*[normalize-space()="Data quality"]')
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", report[0])
    shot(d, artifacts_dir, "generate-data-quality")
    # find a conversation by its text, open it, click one of its assistant messages
    store = Store()
    ds = store.dataset_row("travel-v1")
    row = next(store.iter_conversation_rows(ds["id"]))
    meta, messages = json.loads(row["meta"]), json.loads(row["messages"])
    i = next(k for k, n in enumerate(meta["message_nodes"]) if n and k > 1)
    words = messages[i]["content"][:30]
    search = field(d, "Text contains")
    search.send_keys(words)
    wait_for(d, lambda d: has_text(d, "matching conversation(s)") and not has_text(d, "20 matching"), "the text filter")
    title = f'//*[contains(@class,"q-expansion-item")]//*[contains(text(),"#{row["slot"]} ·")]'
    header = wait_for(d, lambda d: (xpath(d, title) or [None])[0], f"conversation #{row['slot']} in the browser")
    header.click()
    target = meta["message_nodes"][i]
    msg = wait_for(d, lambda d: (xpath(d, f'//div[contains(@class,"q-expansion-item--expanded")]//div[contains(@class,'
                                          f'"cursor-pointer")][.//*[normalize-space()="{target}"]]') or [None])[0],
                   "the message row with its node badge")
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", msg)
    wait_for(d, lambda d: _clicked(msg), "the message row to take a click (the expansion animates open)")
    wait_for(d, lambda d: [e.get_attribute("data-node") for e in css(d, ".st-node.st-hl")] == [target],
             f"node {target} highlighted on the canvas")
    shot(d, artifacts_dir, "generate-browse-highlight")
    print(f"generation of 20 conversations in the browser: {took:.1f}s to done")


def _clicked(element) -> bool:  # type: ignore[no-untyped-def]
    """A real click, once the element can take one; False while it is still animating in or covered."""
    try:
        element.click()
    except (ElementNotInteractableException, ElementClickInterceptedException):
        return False
    return True
