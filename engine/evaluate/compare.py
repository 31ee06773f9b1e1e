"""Two evaluation runs compared metric by metric: what got better or worse since the last compile.

Agents are matched by spec, else by kind when each run has one agent of that kind (a recompile
writes the compiled model to another folder, so its spec changes while it is still "the compiled
agent"). Each metric knows its direction (success up is better, edit distance and cost down are
better), so a front end can colour the change. The unpaired tests of each matched pair come from
`engine.evaluate.run.compare_runs` (Mann-Whitney U, Holm-Bonferroni).
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from engine.evaluate.schema import AgentSummary, Comparison, EvalReport

# (metric, how to read it from an agent summary, higher is better)
METRICS: list[tuple[str, Callable[[AgentSummary], float | None], bool]] = [
    ("success (objective)", lambda s: s.conformance.success.mean, True),
    ("valid-edge share", lambda s: s.conformance.valid_edge_share.mean, True),
    ("terminal reached", lambda s: s.conformance.terminal_reached.mean, True),
    ("outcome match", lambda s: s.conformance.outcome_match.mean, True),
    ("edit distance (normalised)", lambda s: s.conformance.edit_distance_norm.mean, False),
    ("unmatched share", lambda s: s.conformance.unmatched_share.mean, False),
    ("repeated questions", lambda s: s.conformance.repeated_questions.mean, False),
    ("one-question share", lambda s: s.conformance.one_question_share.mean, True),
    ("facts dropped share", lambda s: s.conformance.facts_dropped_share.mean, False),
    ("judged failure rate", lambda s: s.failure_rate, False),
    ("turns per conversation", lambda s: s.turns.mean, False),
    ("input tokens per conversation", lambda s: s.input_tokens.mean, False),
    ("output tokens per conversation", lambda s: s.output_tokens.mean, False),
    ("agent latency per conversation (s)", lambda s: s.agent_latency_s.mean, False),
    ("cost per conversation (USD)", lambda s: s.cost_usd.mean, False),
]


class MetricDelta(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent: str = Field(description="The agent in the second run (its spec).")
    metric: str
    first: float | None = Field(description="Value in the first (older) run.")
    second: float | None = Field(description="Value in the second (newer) run.")
    delta: float | None = Field(description="second - first.")
    higher_is_better: bool
    verdict: str = Field(description="better, worse, same or n/a (seen from the second run).")


class RunComparison(BaseModel):
    model_config = ConfigDict(extra="forbid")
    first: str = Field(description="Name of the first run.")
    second: str = Field(description="Name of the second run.")
    pairs: list[tuple[str, str]] = Field(description="Matched agents: (spec in first, spec in second).")
    deltas: list[MetricDelta]
    tests: list[Comparison] = Field(description="Unpaired tests per matched pair.")
    unmatched: list[str] = Field(description="Agents of either run without a counterpart.")


def compare_reports(first: EvalReport, second: EvalReport, tol: float = 1e-9) -> RunComparison:
    from engine.evaluate.run import compare_runs

    pairs = match_agents(first, second)
    deltas = []
    for a, b in pairs:
        for name, read, up in METRICS:
            x, y = read(first.agents[a]), read(second.agents[b])
            d = None if x is None or y is None else y - x
            verdict = "n/a" if d is None else "same" if abs(d) <= tol else \
                ("better" if (d > 0) == up else "worse")
            deltas.append(MetricDelta(agent=b, metric=name, first=x, second=y, delta=d, higher_is_better=up,
                                      verdict=verdict))
    tests = [compare_runs(first, second, a, b) for a, b in pairs]
    matched = {a for a, _ in pairs} | {b for _, b in pairs}
    unmatched = [s for s in [*first.agents, *second.agents] if s not in matched]
    return RunComparison(first=first.name, second=second.name, pairs=pairs, deltas=deltas, tests=tests,
                         unmatched=unmatched)


def match_agents(first: EvalReport, second: EvalReport) -> list[tuple[str, str]]:
    pairs = [(s, s) for s in first.agents if s in second.agents]
    left = [s for s in first.agents if s not in second.agents]
    right = [s for s in second.agents if s not in first.agents]
    for kind in dict.fromkeys(first.agents[s].kind for s in left):
        xs = [s for s in left if first.agents[s].kind == kind]
        ys = [s for s in right if second.agents[s].kind == kind]
        if len(xs) == 1 and len(ys) == 1:
            pairs.append((xs[0], ys[0]))
    return pairs
