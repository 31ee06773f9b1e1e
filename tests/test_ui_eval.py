"""The Evaluate tab through NiceGUI's simulated user: an evaluation started from the page runs as a job in
a worker process, its progress shows (and is found again after a reload), the report appears with its
charts and tables, and two runs compare metric by metric. Agents are tiny random models."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from nicegui import ui
from nicegui.testing.user import User

from engine.evaluate.compare import compare_reports, match_agents
from engine.evaluate.schema import EvalConfig, EvalReport
from engine.jobs import list_jobs, wait_for
from engine.jobs.evaluate import start_evaluation
from engine.store import Store

pytestmark = pytest.mark.slow  # two evaluation jobs with tiny models: ~1-2 min on 2 cores


def tiny_specs(tiny: Path) -> list[str]:
    return [f"compiled:{tiny}", f"in-context:travel@local:{tiny}"]


async def until(cond, what: str, timeout: float = 240.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.5)


def present(user: User, marker: str) -> int:
    try:
        return len(user.find(marker=marker).elements)
    except AssertionError:
        return 0


async def test_an_evaluation_from_the_page_runs_as_a_job_and_shows_its_report(user: User, tiny_model_dir: Path) -> None:
    await user.open("/chat?tab=evaluate&flow=travel")
    await user.should_see(marker="eval-form")
    user.find(marker="eval-agents").clear().type("\n".join(tiny_specs(tiny_model_dir)))
    user.find(marker="eval-scenarios").clear().type("3")
    user.find(marker="eval-max_turns").clear().type("3")
    user.find(marker="eval-agent_max_tokens").clear().type("8")
    user.find(marker="eval-run").click()
    await user.should_see(marker="eval-progress-bar")
    job = list_jobs(kind="evaluate", flow="travel")[0]
    assert job.config["evaluate"]["scenarios"] == 3 and job.config["evaluate"]["agents"] == tiny_specs(tiny_model_dir)
    await until(lambda: present(user, "report-chart") >= 3, "the report's charts")
    assert present(user, "agents-table") == 1 and present(user, "conformance-table") == 1
    assert present(user, "break-even-table") == 1 and present(user, "tests-table") >= 1
    assert present(user, "download-html") == 1 and present(user, "download-json") == 1
    done = list_jobs(kind="evaluate", flow="travel")[0]
    assert done.status == "done" and done.result and done.result["evaluation"]
    report = EvalReport.model_validate(Store().get_evaluation(done.result["evaluation"])["report"])
    assert len(report.scenarios) == 3 and set(report.agents) == set(tiny_specs(tiny_model_dir))

    # a reload finds the job again; a second run lists both and compares them
    second = start_evaluation(EvalConfig(flow="travel", agents=tiny_specs(tiny_model_dir), scenarios=3, max_turns=2,
                                         agent_max_tokens=8, seed=1))
    await user.open("/chat?tab=evaluate&flow=travel")
    await user.should_see(marker=f"eval-job-{second.id}")
    await asyncio.to_thread(wait_for, second.id, None, 240.0)
    await until(lambda: present(user, "compare") == 1, "the compare controls")
    user.find(marker="compare").click()
    await user.should_see(marker="comparison-table")
    table = user.find(marker="comparison-table").elements.pop()
    metrics = {r["metric"] for r in table.rows}  # type: ignore[attr-defined]
    assert {"success (objective)", "valid-edge share", "cost per conversation (USD)"} <= metrics


def test_runs_match_agents_by_spec_then_by_kind(tiny_model_dir: Path, tmp_path: Path) -> None:
    from engine.evaluate.run import run_evaluation

    first = run_evaluation(EvalConfig(flow="travel", agents=tiny_specs(tiny_model_dir), scenarios=2, max_turns=2,
                                      agent_max_tokens=6)).report
    moved = first.model_copy(update={"agents": {("compiled:/elsewhere" if k.startswith("compiled:") else k): v
                                                for k, v in first.agents.items()}})
    assert sorted(match_agents(first, moved)) == sorted([(f"compiled:{tiny_model_dir}", "compiled:/elsewhere"),
                                                         (f"in-context:travel@local:{tiny_model_dir}",) * 2])
    result = compare_reports(first, first)
    assert result.deltas and all(d.verdict in ("same", "n/a") for d in result.deltas)
    worse = first.model_copy(deep=True)
    spec = f"compiled:{tiny_model_dir}"
    worse.agents[spec].cost_usd.mean = (first.agents[spec].cost_usd.mean or 0) + 1.0
    cost = next(d for d in compare_reports(first, worse).deltas if d.agent == spec and d.metric.startswith("cost"))
    assert cost.verdict == "worse" and cost.delta == pytest.approx(1.0)
    assert ui  # the page module imports with the engine's typed report
