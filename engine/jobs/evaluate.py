"""The `evaluate` job kind: `engine.evaluate.run.evaluate` in a worker, reporting to its job row.

    start_evaluation(EvalConfig(flow="travel", agents=[...], scenarios=3), env={"ANTHROPIC_API_KEY": key})

The run adopts the worker's row (`Store.create_job` inside a job worker), so its own progress lines
("conversation 4/12", "objective metrics", "judged by ...") are what the studio and `subterra jobs`
show. The result names the stored evaluation (`{"evaluation": id}`); its report is in the store's
`evaluations` table (`Store.get_evaluation`).
"""

from __future__ import annotations

from typing import Any

from engine.evaluate.schema import EvalConfig
from engine.jobs import JobContext, JobRecord, start_job
from engine.store import Store

ENTRY = "engine.jobs.evaluate:run"


def start_evaluation(config: EvalConfig, env: dict[str, str] | None = None, store: Store | None = None) -> JobRecord:
    """Queue an evaluation of `config`; returns the queued job at once."""
    from engine.store import load_flow

    st = store or Store(seed=False)
    flow = load_flow(config.flow, st)  # a missing flow fails here, in the caller, not in the worker
    version = st.flow_version(flow.name) if st.has_flow(flow.name) else None
    name = config.name or f"{flow.name}-eval"
    return start_job("evaluate", {"evaluate": config.model_dump(mode="json")}, env, flow=flow.name,
                     flow_version=version, name=name, entry=ENTRY, store=st)


def run(ctx: JobContext) -> dict[str, Any]:
    import asyncio

    from engine.evaluate.run import evaluate

    config = EvalConfig(**ctx.config["evaluate"])
    result = asyncio.run(evaluate(config, store=ctx.store, progress=lambda f, m: ctx.report(f, m)))
    report = result.report
    agents = ", ".join(f"{spec}: success {s.conformance.success.mean or 0:.0%}" for spec, s in report.agents.items())
    return {"evaluation": result.id, "_message": f"evaluation {result.id} stored ({agents})"}
