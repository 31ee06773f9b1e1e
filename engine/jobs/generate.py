"""The `generate` job kind: `engine.generate.generate_dataset` in a worker, reporting to its job row.

    start_generation("travel", GenerateConfig(n=300), env={"ANTHROPIC_API_KEY": key})

Resuming the job runs the same config again on the same flow version, which fills only the
dataset's empty slots. `events` carries the live `Progress` (done, failed, rate, ETA, spend) and
the cost estimate made before anything was spent.
"""

from __future__ import annotations

from typing import Any

from engine.generate import Estimate, GenerateConfig, Progress, generate_dataset
from engine.jobs import JobContext, JobRecord, start_job
from engine.store import Store


def start_generation(flow: str, config: GenerateConfig, env: dict[str, str] | None = None,
                     store: Store | None = None, flow_version: int | None = None) -> JobRecord:
    """Start generating `config` for stored flow `flow` (its head version unless `flow_version`)."""
    st = store or Store(seed=False)
    version = flow_version or st.flow_version(flow)
    st.get_flow(flow, version)  # a missing flow or version fails here, in the caller, not in the worker
    dataset = config.dataset or flow
    cfg = config.model_copy(update={"dataset": dataset})
    return start_job("generate", {"generate": cfg.model_dump(mode="json")}, env, flow=flow, flow_version=version,
                     name=dataset, output=f"dataset:{dataset}", store=st)


def run(ctx: JobContext) -> dict[str, Any]:
    config = GenerateConfig(**ctx.config["generate"])
    if ctx.flow is None:
        raise ValueError("a generate job needs a flow")
    flow = ctx.store.get_flow(ctx.flow, ctx.flow_version)
    events: dict[str, Any] = {}

    def on_estimate(est: Estimate) -> None:
        events["estimate"] = est.model_dump(mode="json")
        ctx.log(f"estimate: {est.conversations} conversations, {est.llm_calls} LLM calls, ${est.usd:.4f}")
        ctx.report(events=events, force=True)

    def on_progress(p: Progress) -> None:
        events["progress"] = p.model_dump(mode="json")
        eta = f"{p.eta_s:.0f}s" if p.eta_s is not None else "?"
        ctx.report(p.done / max(1, p.total), f"{p.done}/{p.total} done, {p.failed} failed, {p.rate:.1f}/s, "
                   f"ETA {eta}, ${p.spent_usd:.4f}", events, force=p.done >= p.total)

    report = generate_dataset(flow, config, ctx.store, on_progress=on_progress, on_estimate=on_estimate)
    ctx.report(report.done / max(1, report.total), events=events, force=True)
    result: dict[str, Any] = report.model_dump(mode="json")
    summary = (f"{report.done}/{report.total} conversations in '{report.dataset}' ({report.new} new, "
               f"{report.failed_attempts} failed attempts, ${report.cost_usd:.4f})")
    if report.stopped:
        result |= {"_status": "failed", "_message": f"{summary}; {report.stopped}; resume with a higher max cost"}
    elif not report.complete:
        result |= {"_status": "failed",
                   "_message": f"{summary}; {len(report.empty_slots)} slot(s) failed every attempt; "
                               "resume to retry them"}
    else:
        result["_message"] = summary
    ctx.log(result["_message"])
    return result


KEY_ENV = {"anthropic": "ANTHROPIC_API_KEY", "openai": "OPENAI_API_KEY"}
"""The environment variable each API backend reads its key from (what a job's `env` should set)."""


def key_env(backend: str, key: str | None) -> dict[str, str]:
    """The worker environment that hands `key` to `backend` (empty when there is none to hand)."""
    var = KEY_ENV.get(backend)
    return {var: key} if var and key else {}
