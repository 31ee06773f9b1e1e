"""The compile panel and the jobs page through NiceGUI's simulated user: a tiny compile runs as a job
to a registered model with a loss chart and a chat link; the registry marks it stale once the flow
changes, with the diff; /jobs lists jobs and cancels one; two compiles into one folder are refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nicegui.testing.user import User

from engine import editing
from engine.generate import GenerateConfig, agenerate_dataset
from engine.jobs import list_jobs
from engine.jobs.generate import start_generation
from engine.store import Store
from ui.components.flow_canvas import assets_built

pytestmark = pytest.mark.skipif(not assets_built(), reason="canvas assets not built; run `make ui-assets`")


def element(user: User, marker: str):  # type: ignore[no-untyped-def]
    return next(iter(user.find(marker=marker).elements))


async def until(check, what: str, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.3)


@pytest.mark.slow
async def test_compile_panel_trains_registers_and_marks_stale(user: User, tiny_model_dir: Path) -> None:
    store = Store()
    await agenerate_dataset(store.get_flow("travel"), GenerateConfig(n=12, dataset="travel-v1"), store)
    await user.open("/flow/travel?panel=compile")
    await user.should_see(marker="compile-panel")
    assert element(user, "compile-dataset").value == "travel-v1"
    assert element(user, "compile-name").value == "travel-v1"
    element(user, "compile-base").value = str(tiny_model_dir)
    element(user, "compile-max_steps").value = 3
    element(user, "compile-batch_size").value = 2
    element(user, "compile-lr").value = 1e-3
    user.find(marker="compile-start").click()
    await until(lambda: list_jobs(kind="compile") and not list_jobs(kind="compile")[0].live, "the compile job")
    job = list_jobs(kind="compile")[0]
    assert job.status == "done", job.message
    assert job.result["model"] == "travel-v1" and job.output.startswith("model:")
    await user.should_see(marker="open-chat", retries=50)
    link = element(user, "open-chat")
    assert link.props["href"] == "/chat?model=travel-v1"
    chart = element(user, "loss-chart")
    assert len(chart.figure["data"][0]["x"]) == 3
    assert len(chart.figure["data"][1]["x"]) >= 1  # eval loss at the end
    await user.should_see(marker="model-travel-v1", retries=50)
    await user.should_see(marker="current")
    # the flow changes on the canvas: the model is now stale, with what changed
    flow = store.get_flow("travel")
    node = next(n for n in flow.nodes if n.speaks)
    store.save_flow(editing.update_node(flow, node.id, prompt=node.prompt + " Be brief."), message="edit")
    await user.should_see(marker="stale", retries=50)
    await user.should_see("stale: flow is at v2")
    await user.should_see(f"~ node {node.id}: prompt", retries=20)


async def test_compile_panel_refuses_a_second_compile_into_one_folder(user: User, tiny_model_dir: Path) -> None:
    store = Store()
    await agenerate_dataset(store.get_flow("travel"), GenerateConfig(n=12, dataset="travel-v1"), store)
    from engine.jobs.compile import start_compile
    from engine.store import data_dir
    from engine.train.config import TrainConfig

    cfg = TrainConfig(out=str(data_dir() / "models" / "travel-v1"), base=str(tiny_model_dir), dataset="travel-v1",
                      flow="travel", max_steps=500, batch_size=1, grad_accum=1)
    first = start_compile(cfg)
    await user.open("/flow/travel?panel=compile")
    element(user, "compile-base").value = str(tiny_model_dir)
    user.find(marker="compile-start").click()
    await user.should_see(f"job {first.id} (compile,", retries=50)
    assert len(list_jobs(kind="compile")) == 1


async def test_jobs_page_lists_and_cancels(user: User) -> None:
    job = start_generation("zoom", GenerateConfig(n=5000, dataset="zoom-big", concurrency=1))
    await user.open("/jobs")
    await user.should_see(marker=f"job-{job.id}", retries=50)
    await user.should_see(marker="nav-jobs")
    await until(lambda: list_jobs()[0].status == "running", "the job to run", 60)
    await user.should_see(marker="status-running", retries=50)
    with user.scope(marker=f"job-{job.id}"):
        user.find(marker="cancel-job").click()
    await until(lambda: list_jobs()[0].status == "cancelled", "the job to be cancelled", 30)
    await user.should_see(marker="status-cancelled", retries=50)
    with user.scope(marker=f"job-{job.id}"):
        await user.should_see(marker="resume-job")
        user.find(marker="job-log").click()
    await user.should_see(marker="log-text")
    await user.should_see("started, pid")


async def test_a_finished_generation_appears_in_the_compile_form(user: User) -> None:
    await user.open("/flow/travel?panel=compile")
    await user.should_see(marker="compile-panel")
    assert element(user, "compile-dataset").value is None
    job = start_generation("travel", GenerateConfig(n=6, dataset="fresh"))
    await until(lambda: element(user, "compile-dataset").value == "fresh", "the new dataset in the compile form", 60)
    assert list_jobs()[0].id == job.id


async def test_job_buttons_survive_progress_polls(user: User) -> None:
    """A fast job changes its progress every poll; the Cancel button must stay the same element, or a
    click landing while it is replaced is lost (the CI race behind a compile that never cancelled)."""
    import os
    import time

    store = Store()
    ids = {}
    for kind in ("generate", "compile"):
        ids[kind] = store.insert_runner_job({"kind": kind, "name": "fast", "flow": "travel", "output": f"{kind}:x",
                                             "entry": f"engine.jobs.{kind}:run", "config": {}})
        store.update_job(ids[kind], status="running", pid=os.getpid(), heartbeat=time.time(), log=os.devnull)

    def step(i: int) -> None:
        last = {"step": i, "total": 100, "loss": 1.0 / i, "tokens_per_s": 100.0, "eta_s": 10.0}
        store.update_job(ids["compile"], heartbeat=time.time(), progress=i / 100, message=f"step {i}/100",
                         events={"last": last, "losses": [{"step": k, "loss": 1.0 / k} for k in range(1, i + 1)]})
        store.update_job(ids["generate"], heartbeat=time.time(), progress=i / 100, message=f"{i}/100 done")

    pages = (("/flow/travel?panel=compile", "compile-panel"), ("/flow/travel?panel=generate", "generate-panel"),
             ("/jobs", f"job-{ids['compile']}"))
    for page, scope in pages:
        step(1)
        await user.open(page)
        await user.should_see(marker=scope, retries=50)
        with user.scope(marker=scope):
            await user.should_see(marker="cancel-job", retries=50)
            first = element(user, "cancel-job").id
        for i in range(2, 5):
            step(i)
            await asyncio.sleep(1.3)  # longer than a poll
            with user.scope(marker=scope):
                assert element(user, "cancel-job").id == first, f"{page}: the Cancel button was rebuilt at step {i}"
        if page.startswith("/jobs"):
            await user.should_see("step 4/100")
    for job_id in ids.values():
        store.update_job(job_id, status="cancelled", finished=time.time())
