"""Evaluation: agents × scenarios × repeats, talked through by a simulated user, then measured.

    run_evaluation(EvalConfig) → EvalResult
      1. scenarios sampled to cover the flow's paths (`engine.evaluate.simulate.sample_scenarios`)
      2. every agent talks every scenario `repeats` times with a fresh simulated user (asyncio, at most
         `concurrency` conversations at once); a conversation ends at the path's end, when the agent
         closes, at the turn limit, or on an error (recorded, never fatal to the run)
      3. objective metrics for every conversation (`engine.evaluate.conformance`), the judge (and the second
         judge) when asked (`engine.evaluate.judge`)
      4. statistics per agent and pairwise, paired by scenario index (`engine.evaluate.stats`); costs
         (`engine.evaluate.cost`)
      5. the report (JSON with every number + self-contained HTML, `engine.evaluate.report`), stored in the
         store's `evaluations` table with its provenance
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import json
import platform
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine.agents.base import Agent
from engine.backends.base import Message, Usage, is_local_backend
from engine.errors import EvaluationError
from engine.evaluate.conformance import (
    NodeMapper,
    conversation_metrics,
)
from engine.evaluate.cost import (
    PriceTable,
    api_usd,
    blended_ratio,
    break_even_conversations,
    price_table,
    self_hosted_usd,
)
from engine.evaluate.judge import CRITERIA, FAILURE_AT, Judge, compare_judges
from engine.evaluate.schema import (
    AgentSummary,
    Comparison,
    ConversationRecord,
    CostPair,
    CostSection,
    EvalConfig,
    EvalProvenance,
    EvalReport,
    EvalResult,
    FlowInfo,
    JudgesSection,
)
from engine.evaluate.simulate import LLMUser, Scenario, ScriptedUser, UserSimulator, sample_scenarios
from engine.evaluate.stats import (
    Summary,
    TestResult,
    adjust_family,
    mann_whitney,
    pass_hat_k,
    summarize,
    wilcoxon_paired,
)
from engine.flow import Flow
from engine.provenance import git_revision

OBJECTIVE = ("valid_edge_share", "edit_distance_norm", "success")


Progress = Callable[[float, str], None]


def run_evaluation(config: EvalConfig, agents: dict[str, Agent] | None = None, store: Any = None,
                   progress: Progress | None = None) -> EvalResult:
    """Run the evaluation end to end (synchronous wrapper). Pre-built `agents` skip `load_agent`."""
    return asyncio.run(evaluate(config, agents=agents, store=store, progress=progress))


async def evaluate(config: EvalConfig, agents: dict[str, Agent] | None = None, store: Any = None,
                   progress: Progress | None = None) -> EvalResult:
    from engine.store import Store, load_flow

    store = store or Store()
    flow = load_flow(config.flow, store)
    flow_version = store.flow_version(flow.name) if store.has_flow(flow.name) else None
    if len(set(config.agents)) != len(config.agents):
        raise EvaluationError("the same --agent is given twice; give each agent once")
    job = store.create_job("evaluate", config.model_dump(mode="json"), name=config.name or flow.name)
    report_progress = _progress(store, job, progress)
    owned = agents is None
    loaded: dict[str, Agent] = {}
    judges: list[Judge] = []
    try:
        judges = _judges(config)
        loaded = agents or _load_agents(config, flow)
        scenarios = sample_scenarios(flow, config.scenarios, seed=config.seed, customer_first=config.customer_first)
        mapper = NodeMapper(flow, threshold=config.threshold, margin=config.margin)
        records = await _converse_all(config, flow, loaded, scenarios, mapper, report_progress)
        report_progress(0.8, "objective metrics")
        by_index = {s.index: s for s in scenarios}
        for rec in records:
            s = by_index[rec.scenario]
            rec.metrics = conversation_metrics(flow, rec.messages, s.variables, s.expected_outcome, mapper)
        await _judge_all(config, judges, records, by_index, report_progress)
        table = price_table(config.cost)
        _price(records, loaded, table)
        report = build_report(config, flow, flow_version, loaded, scenarios, records, table)
    except BaseException as e:
        store.update_job(job, status="failed", message=str(e) or type(e).__name__)
        raise
    finally:
        for judge in judges:
            await judge.backend.aclose()
        if owned:
            for agent in loaded.values():
                await agent.aclose()
    result = _save(config, flow, flow_version, report, store)
    store.update_job(job, status="done", progress=1.0, message="done", result={"evaluation": result.id})
    return result


# ----------------------------------------------------------------------------------------------
# conversations


async def _converse_all(config: EvalConfig, flow: Flow, agents: dict[str, Agent], scenarios: list[Scenario],
                        mapper: NodeMapper, progress: Progress) -> list[ConversationRecord]:
    sim_backend = None
    if config.simulator != "scripted":
        sim_backend = _backend(config.simulator, config.simulator_model, "--simulator-model")
    gate = asyncio.Semaphore(config.concurrency)
    jobs = list(itertools.product(agents, scenarios, range(config.repeats)))
    done = 0

    async def one(spec: str, scenario: Scenario, repeat: int) -> ConversationRecord:
        nonlocal done
        async with gate:
            sim: UserSimulator
            if sim_backend is None:
                # repeats of a scripted user must differ a little, or pass^k would be trivial
                sim = ScriptedUser(flow, scenario.model_copy(update={"seed": scenario.seed + repeat}), mapper)
            else:
                sim = LLMUser(flow, scenario.model_copy(update={"seed": scenario.seed + repeat}), sim_backend)
            rec = await run_conversation(agents[spec], spec, sim, scenario, repeat, _turn_limit(config, flow, scenario))
        done += 1
        progress(0.8 * done / len(jobs), f"conversation {done}/{len(jobs)}")
        return rec

    try:
        return list(await asyncio.gather(*(one(*j) for j in jobs)))
    finally:
        if sim_backend is not None:
            await sim_backend.aclose()


async def run_conversation(agent: Agent, spec: str, sim: UserSimulator, scenario: Scenario, repeat: int,
                           max_turns: int) -> ConversationRecord:
    """One conversation; an exception from the agent or simulator ends it as `error`, never the run."""
    rec = ConversationRecord(agent=spec, scenario=scenario.index, repeat=repeat, messages=[])
    history: list[Message] = []
    t0 = time.perf_counter()
    try:
        opening = await sim.opening()
        if opening is not None and opening.text:
            history.append(Message(role="user", content=opening.text))
            rec.simulator_usage += opening.usage
        session = agent.session()
        while True:
            if rec.turns >= max_turns:
                rec.ended_by = "turn_limit"
                break
            reply = await session.reply(list(history))
            history.append(Message(role="assistant", content=reply.text))
            rec.turns += 1
            rec.words += len(reply.text.split())
            rec.agent_usage += reply.usage
            rec.agent_calls += reply.calls
            rec.agent_latency_s += reply.latency_s
            rec.reported_nodes.append(reply.node_id)
            if reply.done:
                rec.ended_by = "agent_closed"
                break
            turn = await sim.reply(history)
            rec.simulator_usage += turn.usage
            if turn.text is None:
                rec.ended_by = "path_end"
                break
            history.append(Message(role="user", content=turn.text))
    except Exception as e:  # noqa: BLE001 - one broken conversation is data, not a crash
        rec.ended_by, rec.error = "error", f"{type(e).__name__}: {e}"
    rec.messages = history
    rec.wall_s = time.perf_counter() - t0
    return rec


def _turn_limit(config: EvalConfig, flow: Flow, scenario: Scenario) -> int:
    if config.max_turns:
        return config.max_turns
    agent_steps = sum(1 for n in scenario.path if flow.node(n).role == "agent")
    return max(6, 2 * agent_steps + 2)


# ----------------------------------------------------------------------------------------------
# judging and pricing


def _judges(config: EvalConfig) -> list[Judge]:
    """Built before any conversation, so a judge that cannot run fails the evaluation at once."""
    wanted = [(config.judge, config.judge_model, "--judge-model"),
              (config.judge2, config.judge2_model, "--judge2-model")]
    return [Judge(_backend(name, model, flag)) for name, model, flag in wanted if name != "none"]


async def _judge_all(config: EvalConfig, judges: list[Judge], records: list[ConversationRecord],
                     scenarios: dict[int, Scenario], progress: Progress) -> None:
    gate = asyncio.Semaphore(config.concurrency)
    for j, judge in enumerate(judges):
        async def one(rec: ConversationRecord, judge: Judge = judge) -> None:
            s = scenarios[rec.scenario]
            details = {k: v for k, v in s.variables.items() if k not in s.persona}
            # an LLM user was told to pose the scenario's challenge; the scripted one only says the flow's
            # examples, so whether it posed one is left to the judge's reading of the transcript
            challenged = s.challenged if config.simulator != "scripted" else None
            async with gate:
                rec.judgements.append(await judge.judge(rec.messages, details, challenged=challenged))

        await asyncio.gather(*(one(r) for r in records if r.messages))
        progress(0.8 + 0.15 * (j + 1) / len(judges), f"judged by {judge.name}")


def _price(records: list[ConversationRecord], agents: dict[str, Agent], table: PriceTable) -> None:
    for rec in records:
        hosting, model = _hosting(rec.agent, agents[rec.agent])
        api = api_usd(rec.agent_usage, table, None)
        rec.api_equivalent_usd = api
        rec.cost_usd = (api_usd(rec.agent_usage, table, model) if hosting == "api"
                        else self_hosted_usd(rec.agent_usage, table))


def _hosting(spec: str, agent: Agent) -> tuple[str, str]:
    """('api', model) when the agent calls a paid API, else ('self', model): it runs on our own GPU."""
    backend = spec.partition("@")[2].partition(":")[0]
    return ("api" if backend and not is_local_backend(backend) else "self"), getattr(agent, "model", "") or ""


# ----------------------------------------------------------------------------------------------
# the report


def build_report(config: EvalConfig, flow: Flow, flow_version: int | None, agents: dict[str, Agent],
                 scenarios: list[Scenario], records: list[ConversationRecord], table: PriceTable) -> EvalReport:
    per_agent = {spec: _agent_summary(spec, agents[spec], [r for r in records if r.agent == spec], config)
                 for spec in agents}
    judged = any(r.judgements for r in records)
    return EvalReport(
        name=config.name or f"{flow.name}-eval", created=time.time(),
        provenance=provenance(config, flow, flow_version, agents), config=config,
        flow=FlowInfo(name=flow.name, version=flow_version, nodes=len(flow.nodes),
                      agent_nodes=[n.id for n in flow.nodes if n.role == "agent"]),
        criteria=list(CRITERIA), agents=per_agent, comparisons=_comparisons(list(agents), records, judged),
        judges=_judges_section(records), cost=_cost_section(per_agent, table), scenarios=scenarios,
        conversations=records,
    )


def _agent_summary(spec: str, agent: Agent, recs: list[ConversationRecord], config: EvalConfig) -> AgentSummary:
    ok = [r for r in recs if r.metrics is not None]
    first = [r.judgements[0] for r in recs if r.judgements]
    second = [r.judgements[1] for r in recs if len(r.judgements) > 1]
    hosting, model = _hosting(spec, agent)
    m = [r.metrics for r in ok if r.metrics]
    out: dict[str, Any] = {
        "kind": getattr(agent, "kind", ""), "model": model, "hosting": hosting,
        "conversations": len(recs), "errors": sum(r.ended_by == "error" for r in recs),
        "ended_by": dict(sorted(_count(r.ended_by for r in recs).items())),
        "turns": _s([r.turns for r in recs]), "words": _s([r.words for r in recs]),
        "wall_s": _s([r.wall_s for r in recs]), "agent_latency_s": _s([r.agent_latency_s for r in recs]),
        "input_tokens": _s([_tokens_in(r.agent_usage) for r in recs]),
        "output_tokens": _s([r.agent_usage.output_tokens for r in recs]),
        "cost_usd": _s([r.cost_usd for r in recs]),
        # measured on this machine, one conversation's tokens over its agent wait (prefill + decode mixed)
        "measured_tokens_per_s": _s([(_tokens_in(r.agent_usage) + r.agent_usage.output_tokens) / r.agent_latency_s
                                     for r in recs if r.agent_latency_s > 0]),
        "api_equivalent_usd": _s([r.api_equivalent_usd for r in recs]),
        "conformance": {
            "valid_edge_share": _s([x.valid_edge_share for x in m]),
            "unmatched_share": _s([x.unmatched_share for x in m]),
            "terminal_reached": _s([float(x.terminal_reached) for x in m]),
            "outcome_match": _s([float(x.outcome_match) for x in m if x.outcome_match is not None]),
            "success": _s([float(x.success) for x in m]),
            "edit_distance": _s([x.edit_distance for x in m]),
            "edit_distance_norm": _s([x.edit_distance_norm for x in m]),
            "repeated_questions": _s([x.repeated_questions for x in m]),
            "questions_per_turn": _s([x.questions_per_turn for x in m]),
            "one_question_share": _s([x.one_question_share for x in m]),
            "facts_dropped_share": _s([len(x.facts_dropped) / len(x.facts_given) for x in m if x.facts_given]),
            "facts_wrong": _s([len(x.facts_wrong) for x in m]),
            "facts_reasked": _s([len(x.facts_reasked) for x in m]),
            "english_share": _s([x.english_share for x in m]),
            "first_reply_on_step": _s([float(x.first_reply_on_step) for x in m if x.first_reply_on_step is not None]),
        },
        "failure_rate_objective": _mean([0.0 if x.success else 1.0 for x in m]),
        "pass_k": _pass_k(recs, config.repeats, lambda r: bool(r.metrics and r.metrics.success)),
    }
    if first:
        scored = [j for j in first if j.scores]
        out["criteria"] = {c: _s([j.scores[c] for j in scored if j.scores]) for c in CRITERIA}
        out["failure_rate"] = _mean([float(j.scores["task_success"] <= FAILURE_AT) for j in scored if j.scores])
        out["judge_failures"] = len(first) - len(scored)
        out["pass_k_judged"] = _pass_k(recs, config.repeats, lambda r: bool(
            r.judgements and r.judgements[0].scores and r.judgements[0].scores["task_success"] > FAILURE_AT))
    if second:
        out["criteria_judge2"] = {c: _s([j.scores[c] for j in second if j.scores]) for c in CRITERIA}
    return AgentSummary(**out)


def _comparisons(specs: list[str], records: list[ConversationRecord], judged: bool) -> list[Comparison]:
    """Every pair of agents, paired by scenario index (repeats averaged): Wilcoxon + Holm per family."""
    out = []
    for a, b in itertools.combinations(specs, 2):
        crit: dict[str, TestResult] | None = None
        if judged:
            crit = {c: _paired(records, a, b, functools.partial(_score, criterion=c)) for c in CRITERIA}
            adjust_family(crit)
        objective = {
            "valid_edge_share": _paired(records, a, b, lambda r: r.metrics.valid_edge_share if r.metrics else None),
            "edit_distance_norm": _paired(records, a, b, lambda r: r.metrics.edit_distance_norm if r.metrics else None),
            "success": _paired(records, a, b, lambda r: float(r.metrics.success) if r.metrics else None),
        }
        adjust_family(objective)
        out.append(Comparison(a=a, b=b, paired_by="scenario index", criteria=crit, objective=objective))
    return out


def _paired(records: list[ConversationRecord], a: str, b: str,
            value: Callable[[ConversationRecord], float | None]) -> TestResult:
    per: dict[str, dict[int, list[float]]] = {a: defaultdict(list), b: defaultdict(list)}
    for r in records:
        if r.agent in per and (v := value(r)) is not None:
            per[r.agent][r.scenario].append(v)
    common = sorted(set(per[a]) & set(per[b]))
    return wilcoxon_paired([float(np.mean(per[a][i])) for i in common], [float(np.mean(per[b][i])) for i in common])


def compare_runs(first: EvalReport, second: EvalReport, agent_first: str, agent_second: str) -> Comparison:
    """Unpaired comparison across two evaluation reports (different runs or scenario sets): Mann-Whitney U
    per criterion (when both were judged) and per objective metric, Holm-Bonferroni within each family."""
    def values(report: EvalReport, agent: str,
               pick: Callable[[ConversationRecord], float | None]) -> list[float | None]:
        if agent not in report.agents:
            raise EvaluationError(f"agent '{agent}' is not in evaluation '{report.name}'; it has: "
                                  + ", ".join(report.agents))
        return [pick(c) for c in report.conversations if c.agent == agent]

    def test(pick: Callable[[ConversationRecord], float | None]) -> TestResult:
        return mann_whitney(values(first, agent_first, pick), values(second, agent_second, pick))

    crit: dict[str, TestResult] | None = None
    if any(c.judgements for r in (first, second) for c in r.conversations):
        crit = {c: test(functools.partial(_score, criterion=c)) for c in CRITERIA}
        adjust_family(crit)
    objective = {k: test(functools.partial(_metric, key=k)) for k in OBJECTIVE}
    adjust_family(objective)
    return Comparison(a=f"{first.name}:{agent_first}", b=f"{second.name}:{agent_second}",
                      test="mann-whitney (unpaired)", criteria=crit, objective=objective)


def _metric(conv: ConversationRecord, key: str) -> float | None:
    value = getattr(conv.metrics, key, None) if conv.metrics else None
    return None if value is None else float(value)


def _judges_section(records: list[ConversationRecord]) -> JudgesSection:
    both = [r for r in records if len(r.judgements) > 1]
    names = next((tuple(j.judge for j in r.judgements) for r in records if r.judgements), ())
    agreement = compare_judges([r.judgements[0] for r in both], [r.judgements[1] for r in both]) if both else None
    return JudgesSection(judges=list(names), agreement=agreement)


def _cost_section(per_agent: dict[str, AgentSummary], table: PriceTable) -> CostSection:
    costs = {spec: s.cost_usd.mean or 0.0 for spec, s in per_agent.items()}
    api_eq = {spec: s.api_equivalent_usd.mean or 0.0 for spec, s in per_agent.items()}
    tokens = {spec: ((s.input_tokens.mean or 0.0), (s.output_tokens.mean or 0.0)) for spec, s in per_agent.items()}
    pairs = []
    for a, b in itertools.permutations(per_agent, 2):
        if per_agent[a].kind != "compiled" or per_agent[b].kind == "compiled":
            continue
        # the paper's comparison: the compiled agent self-hosted vs the other agent's tokens at API prices
        self_a = costs[a]
        api_b = api_eq[b] if per_agent[b].hosting == "self" else costs[b]
        pairs.append(CostPair(
            compiled=a, versus=b, compiled_usd_per_conversation=self_a, versus_api_usd_per_conversation=api_b,
            ratio=api_b / self_a if self_a > 0 else None,
            token_ratio=(sum(tokens[b]) / sum(tokens[a])) if sum(tokens[a]) > 0 else None,
            versus_self_hosted_ratio=blended_ratio(table, *tokens[b]) if sum(tokens[b]) else None,
            break_even_conversations=break_even_conversations(table.compile_cost, api_b, self_a),
        ))
    return CostSection(table=table, per_conversation_usd=costs, api_equivalent_per_conversation_usd=api_eq,
                       pairs=pairs)


def provenance(config: EvalConfig, flow: Flow, flow_version: int | None, agents: dict[str, Agent]) -> EvalProvenance:

    flow_hash = hashlib.sha256(json.dumps(flow.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]
    simulator = (config.simulator if config.simulator == "scripted"
                 else f"{config.simulator}:{config.simulator_model or ''}")
    return EvalProvenance(
        flow=flow.name, flow_version=flow_version, flow_sha256=flow_hash, seed=config.seed, git_revision=git_revision(),
        agents={s: {"kind": getattr(a, "kind", ""), "model": getattr(a, "model", "")} for s, a in agents.items()},
        simulator=simulator, python=platform.python_version(), host=platform.node(),
    )


# ----------------------------------------------------------------------------------------------
# helpers


def _load_agents(config: EvalConfig, flow: Flow) -> dict[str, Agent]:
    from engine.agents import load_agent

    opts = {"temperature": config.agent_temperature, "max_tokens": config.agent_max_tokens, "seed": config.seed}
    # a compiled model without subterra.json still gets the flow's minimal system prompt
    return {spec: load_agent(spec, **opts, **({"flow": flow} if spec.startswith("compiled:") else {}))
            for spec in config.agents}


def _backend(name: str, model: str | None, flag: str) -> Any:
    from engine.backends.base import get_backend
    from engine.errors import BackendUnavailableError

    try:
        return get_backend(name, **({"model": model} if model else {}))
    except BackendUnavailableError as e:  # the backend names its own --model; here the flag differs
        raise BackendUnavailableError(str(e).replace("--model", flag)) from None


def _save(config: EvalConfig, flow: Flow, flow_version: int | None, report: EvalReport, store: Any) -> EvalResult:
    from engine.evaluate.report import write_html

    html_path = json_path = None
    if config.out:
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        json_path = out / "report.json"
        json_path.write_text(report.model_dump_json(indent=1))
        html_path = write_html(report, out / "report.html")
    evaluation_id = store.add_evaluation(report.name, flow.name, flow_version, report.created,
                                         config.model_dump(mode="json"), report.model_dump_json(),
                                         str(config.out or ""))
    return EvalResult(id=evaluation_id, report=report, html_path=str(html_path) if html_path else None,
                      json_path=str(json_path) if json_path else None)


def _progress(store: Any, job: int, callback: Progress | None) -> Progress:
    last = [0.0]

    def report(fraction: float, message: str) -> None:
        if callback:
            callback(fraction, message)
        now = time.monotonic()
        if now - last[0] > 0.5 or fraction >= 1:  # the studio polls; don't hammer SQLite per turn
            last[0] = now
            store.update_job(job, progress=fraction, message=message)

    return report


def _s(values: list[float | None] | list[float] | list[int]) -> Summary:
    return summarize([v for v in values if v is not None])


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for x in items:
        out[x] += 1
    return out


def _tokens_in(u: Usage) -> int:
    return u.input_tokens + u.cache_read_tokens + u.cache_write_tokens


def _score(r: ConversationRecord, criterion: str) -> float | None:
    j = r.judgements[0] if r.judgements else None
    return float(j.scores[criterion]) if j and j.scores else None


def _pass_k(recs: list[ConversationRecord], repeats: int,
            ok: Callable[[ConversationRecord], bool]) -> dict[str, float | None]:
    wins: dict[int, int] = defaultdict(int)
    runs: dict[int, int] = defaultdict(int)
    for r in recs:
        runs[r.scenario] += 1
        wins[r.scenario] += ok(r)
    keys = sorted(runs)
    return {str(k): pass_hat_k([wins[i] for i in keys], [runs[i] for i in keys], k) for k in range(1, repeats + 1)}

