"""The compile panel in a real headless Chromium: a tiny compile's loss chart gains points, a reload
mid-compile shows the progress continuing, SIGKILL of the worker turns the job failed with the reason,
resume runs it again and cancel stops it. Screenshots of the compile panel and /jobs."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

from test_ui_browser import browser, button, css, field, has_text, pytestmark, studio, wait_for, xpath  # noqa: F401
from test_ui_generate_browser import set_number, shot

from engine.generate import GenerateConfig, generate_dataset
from engine.jobs import get_job, list_jobs
from engine.store import Store


def points(driver) -> int:  # type: ignore[no-untyped-def]
    """Markers of the train-loss trace in the plotly chart."""
    traces = css(driver, ".js-plotly-plot .scatterlayer .trace")
    return len(traces[0].find_elements("css selector", "path.point")) if traces else 0


def step_shown(driver) -> int:  # type: ignore[no-untyped-def]
    for el in xpath(driver, '//*[contains(text(), "step ") and contains(text(), "/60")]'):
        m = re.search(r"step (\d+)/60", el.text)
        if m:
            return int(m.group(1))
    return -1


def test_tiny_compile_chart_reload_kill_resume_cancel(studio: str, browser, artifacts_dir: Path,  # type: ignore[no-untyped-def]  # noqa: F811
                                                      tiny_model_dir: Path) -> None:
    store = Store()
    generate_dataset(store.get_flow("travel"), GenerateConfig(n=20, dataset="travel-v1"), store)
    d = browser
    d.get(studio + "/flow/travel?panel=compile")
    wait_for(d, lambda d: css(d, ".vue-flow__node"), "the canvas")
    wait_for(d, lambda d: has_text(d, "travel-v1 · v1 · 20 conversations"), "the dataset in the compile form")
    base = field(d, "Base model")
    from selenium.webdriver.common.keys import Keys

    base.send_keys(Keys.CONTROL, "a")
    base.send_keys(str(tiny_model_dir))
    set_number(d, "Max steps", 60)
    set_number(d, "Batch size", 1)
    time.sleep(0.5)
    button(d, "Compile").click()
    wait_for(d, lambda d: points(d) >= 2, "the loss chart's first points", 120)
    first = points(d)
    wait_for(d, lambda d: points(d) >= first + 3, "the loss chart to gain points", 90)
    assert has_text(d, "tokens/s") and has_text(d, "ETA")
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", css(d, ".q-drawer .js-plotly-plot")[0])
    shot(d, artifacts_dir, "compile-running")
    # reload mid-compile: the page finds the running job and its progress continues
    before = step_shown(d)
    d.refresh()
    wait_for(d, lambda d: css(d, ".vue-flow__node"), "the canvas after the reload")
    wait_for(d, lambda d: step_shown(d) > before, "the progress to continue after the reload", 90)
    wait_for(d, lambda d: points(d) > first, "the chart to come back with its points")
    assert field(d, "Max steps").get_attribute("value") == "60"  # the form shows the running job's settings
    job = list_jobs(kind="compile")[0]
    assert job.status == "running"
    # kill the worker with SIGKILL: the job turns failed, with the reason
    os.killpg(job.pid, signal.SIGKILL)
    wait_for(d, lambda d: has_text(d, "is gone: killed or crashed"), "the failed job's reason", 30)
    assert get_job(job.id).status == "failed"
    wait_for(d, lambda d: xpath(d, '//*[contains(@class,"q-badge") and normalize-space()="failed"]'), "a failed badge")
    d.execute_script("arguments[0].scrollIntoView({block: 'center'})", css(d, ".q-drawer .js-plotly-plot")[0])
    shot(d, artifacts_dir, "compile-killed")
    # resume, then cancel
    button(d, "Resume").click()
    wait_for(d, lambda d: get_job(job.id).status == "running" and get_job(job.id).message.startswith("step "),
             "the resumed job to train again", 120)
    wait_for(d, lambda d: xpath(d, '//*[contains(@class,"q-badge") and normalize-space()="running"]'),
             "a running badge")
    button(d, "Cancel").click()
    wait_for(d, lambda d: get_job(job.id).status == "cancelled", "the job to be cancelled", 60)
    wait_for(d, lambda d: xpath(d, '//*[contains(@class,"q-badge") and normalize-space()="cancelled"]'),
             "a cancelled badge")
    assert "stopped at step" in get_job(job.id).message
    shot(d, artifacts_dir, "compile-cancelled")
    d.get(studio + "/jobs")
    wait_for(d, lambda d: has_text(d, "Background jobs") and has_text(d, "stopped at step"), "the jobs page")
    shot(d, artifacts_dir, "jobs-page")
