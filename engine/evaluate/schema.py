"""The evaluation's typed contracts: its config, one record per conversation, and the report.

`EvalReport` is what `engine.evaluate.run` builds, what `report.json` holds, what the HTML writer
(`engine.evaluate.report`), the CLI summary and the studio read: every number has a field here.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from engine.backends.base import Message, Usage, backend_names
from engine.evaluate.conformance import DEFAULT_MARGIN, DEFAULT_THRESHOLD, ConversationMetrics
from engine.evaluate.cost import CostInputs, PriceTable
from engine.evaluate.judge import JudgeAgreement, Judgement
from engine.evaluate.simulate import Scenario
from engine.evaluate.stats import Summary, TestResult


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flow: str = Field(description="Flow: a file path or a stored flow name (name@version allowed).")
    agents: list[str] = Field(min_length=1, description="Agent specs (compiled:DIR, in-context:FLOW@backend, ...).")
    scenarios: int = Field(20, ge=1, description="Scenarios to sample (covering the flow's paths).")
    repeats: int = Field(1, ge=1, description="Runs per scenario and agent (k of pass^k).")
    simulator: str = Field("scripted", description="Who plays the user: scripted (offline, no LLM) or an LLM backend.")
    simulator_model: str | None = Field(None, description="Model for an LLM simulator.")
    judge: str = Field("none", description="Backend of the LLM judge; none skips judging.")
    judge_model: str | None = Field(None, description="Model of the judge.")
    judge2: str = Field("none", description="Backend of a second judge that re-scores everything.")
    judge2_model: str | None = Field(None, description="Model of the second judge.")
    concurrency: int = Field(4, ge=1, description="Conversations (and judge calls) in flight at once.")
    customer_first: float = Field(0.0, ge=0, le=1, description="Share of scenarios in which the customer speaks "
                                  "first, as in a chat window, where the flow opens with the assistant.")
    max_turns: int | None = Field(None, ge=1, description="Agent turns per conversation; default from the path.")
    seed: int = Field(0, description="Seed for scenarios and simulators.")
    agent_temperature: float = Field(0.7, ge=0, description="Sampling temperature of the agents (0: greedy).")
    agent_max_tokens: int = Field(256, gt=0, description="Most tokens per agent message.")
    threshold: float = Field(DEFAULT_THRESHOLD, ge=0, le=1, description="Node-mapping confidence threshold.")
    margin: float = Field(DEFAULT_MARGIN, ge=0, le=1,
                          description="Node mapping: how far the best node must beat the next.")
    cost: CostInputs = Field(default_factory=CostInputs, description="Cost model inputs.")
    name: str | None = Field(None, description="Name of the evaluation in the store.")
    out: str | None = Field(None, description="Folder for report.html and report.json.")

    @field_validator("simulator")
    @classmethod
    def _known_simulator(cls, v: str) -> str:
        return _one_of(v, simulator_choices(), "simulator")

    @field_validator("judge", "judge2")
    @classmethod
    def _known_judge(cls, v: str) -> str:
        return _one_of(v, judge_choices(), "judge")


def simulator_choices() -> list[str]:
    """Who can play the user: every registered backend (scripted plays it offline)."""
    return backend_names()


def judge_choices() -> list[str]:
    """Judges: `none`, or any backend that writes free text (the scripted one cannot judge)."""
    return ["none", *(b for b in backend_names() if b != "scripted")]


def _one_of(value: str, allowed: list[str], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} '{value}'; use one of: {', '.join(allowed)}")
    return value


class ConversationRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent: str = Field(description="Agent spec.")
    scenario: int = Field(description="Scenario index (pairs conversations across agents).")
    repeat: int = Field(description="Repeat number, 0-based.")
    messages: list[Message] = Field(description="The conversation (user/assistant).")
    reported_nodes: list[str | None] = Field(default_factory=list, description="Nodes the agent said it enacted.")
    agent_usage: Usage = Field(default_factory=Usage, description="Agent tokens over the conversation.")
    simulator_usage: Usage = Field(default_factory=Usage, description="Simulator tokens.")
    agent_calls: int = 0
    turns: int = Field(0, description="Agent turns.")
    words: int = Field(0, description="Words the agent wrote.")
    wall_s: float = Field(0.0, description="Wall-clock seconds of the conversation.")
    agent_latency_s: float = Field(0.0, description="Seconds spent waiting for the agent.")
    ended_by: str = Field("", description="path_end | agent_closed | turn_limit | error.")
    error: str | None = None
    metrics: ConversationMetrics | None = None
    judgements: list[Judgement] = Field(default_factory=list, description="First judge, then the second.")
    cost_usd: float = Field(0.0, description="What the agent's tokens cost at its hosting's prices.")
    api_equivalent_usd: float = Field(0.0, description="The same tokens at the configured API prices.")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _empty() -> Summary:
    """No observations (reports saved before a metric existed load with this)."""
    return Summary(n=0, mean=None, sd=None, ci_low=None, ci_high=None)


class ConformanceSummary(_Model):
    """Objective procedure-following metrics of one agent, each summarised over its conversations."""

    valid_edge_share: Summary = Field(description="Share of agent moves that are edges of the flow.")
    unmatched_share: Summary = Field(description="Share of agent messages mapped to no node.")
    terminal_reached: Summary = Field(description="Share of conversations that reached a terminal.")
    outcome_match: Summary = Field(description="Share whose terminal has the scenario's expected outcome.")
    success: Summary = Field(description="Terminal reached with the expected outcome.")
    edit_distance: Summary = Field(description="Node-sequence edit distance to the nearest flow path.")
    edit_distance_norm: Summary = Field(description="The same, divided by the path length.")
    repeated_questions: Summary = Field(description="Questions asked again per conversation.")
    questions_per_turn: Summary = Field(description="Questions per agent turn.")
    one_question_share: Summary = Field(description="Share of agent turns with at most one question.")
    facts_dropped_share: Summary = Field(description="Share of the facts the user gave that the agent dropped.")
    facts_wrong: Summary = Field(description="Facts the agent restated wrongly, per conversation.")
    facts_reasked: Summary = Field(default_factory=_empty,
                                   description="Facts asked for again after the user stated them, per conversation.")
    english_share: Summary = Field(default_factory=_empty,
                                   description="Share of agent messages that read as English.")
    first_reply_on_step: Summary = Field(default_factory=_empty, description="Conversations the "
                                         "customer opened: share whose first reply is the flow's first or next step.")


class AgentSummary(_Model):
    """One agent's results over all its conversations."""

    kind: str = Field(description="compiled, in-context, orchestrator, ...")
    model: str = Field(description="The model behind the agent.")
    hosting: str = Field(description="self (runs on our own hardware) or api (a paid API).")
    conversations: int = Field(description="Conversations run.")
    errors: int = Field(description="Conversations that ended in an error.")
    ended_by: dict[str, int] = Field(description="How conversations ended, counted.")
    turns: Summary
    words: Summary
    wall_s: Summary
    agent_latency_s: Summary
    input_tokens: Summary
    output_tokens: Summary
    cost_usd: Summary = Field(description="Cost per conversation at the agent's own hosting prices.")
    measured_tokens_per_s: Summary = Field(description="Tokens over agent wait, measured on this machine.")
    api_equivalent_usd: Summary = Field(description="The same tokens at the configured API prices.")
    conformance: ConformanceSummary
    failure_rate_objective: float | None = Field(description="Share of conversations without success.")
    pass_k: dict[str, float | None] = Field(description="pass^k by k (objective success).")
    criteria: dict[str, Summary] | None = Field(None, description="First judge's scores per criterion.")
    failure_rate: float | None = Field(None, description="Share judged failed (task success at most 3).")
    judge_failures: int | None = Field(None, description="Conversations the judge could not score.")
    pass_k_judged: dict[str, float | None] | None = Field(None, description="pass^k by k (judged success).")
    criteria_judge2: dict[str, Summary] | None = Field(None, description="Second judge's scores per criterion.")


class Comparison(_Model):
    """Two agents (or two runs) compared metric by metric, Holm-Bonferroni within each family."""

    a: str
    b: str
    paired_by: str | None = Field(None, description="What pairs conversations (paired tests only).")
    test: str | None = Field(None, description="The test, for unpaired comparisons across runs.")
    criteria: dict[str, TestResult] | None = Field(None, description="Judge criteria, when judged.")
    objective: dict[str, TestResult] = Field(description="Objective metrics.")


class JudgesSection(_Model):
    judges: list[str] = Field(description="backend:model of the first and second judge.")
    agreement: list[JudgeAgreement] | None = Field(None, description="Per criterion, when two judges ran.")


class CostPair(_Model):
    """The paper's comparison: a compiled agent self-hosted vs another agent at API prices."""

    compiled: str
    versus: str
    compiled_usd_per_conversation: float
    versus_api_usd_per_conversation: float
    ratio: float | None = Field(description="How many times cheaper the compiled agent is per conversation.")
    token_ratio: float | None = Field(description="Tokens of `versus` over tokens of `compiled`.")
    versus_self_hosted_ratio: float | None = Field(description="API over self-hosted price for versus' tokens.")
    break_even_conversations: float | None = Field(description="Conversations after which compiling paid off.")


class CostSection(_Model):
    table: PriceTable
    per_conversation_usd: dict[str, float]
    api_equivalent_per_conversation_usd: dict[str, float]
    pairs: list[CostPair]


class FlowInfo(_Model):
    name: str
    version: int | None
    nodes: int
    agent_nodes: list[str]


class EvalProvenance(_Model):
    flow: str
    flow_version: int | None
    flow_sha256: str
    seed: int
    git_revision: str | None
    agents: dict[str, dict[str, str]] = Field(description="Per agent spec: kind and model.")
    simulator: str
    python: str
    host: str


class EvalReport(_Model):
    """Every number of one evaluation run (report.json)."""

    name: str
    created: float
    provenance: EvalProvenance
    config: EvalConfig
    flow: FlowInfo
    criteria: list[str]
    agents: dict[str, AgentSummary]
    comparisons: list[Comparison]
    judges: JudgesSection
    cost: CostSection
    scenarios: list[Scenario]
    conversations: list[ConversationRecord]


class EvalResult(_Model):
    id: int | None = Field(None, description="Row id in the evaluations table.")
    report: EvalReport = Field(description="Every number of the evaluation (report.json).")
    html_path: str | None = None
    json_path: str | None = None
