"""Dataset generation: synthetic conversations along paths through a flow (step 2 of the paper).

For each conversation slot we pick a path (coverage-guided by default, so every edge appears;
uniform on request) and a scenario, then write the dialogue turn by turn along the path. Each
turn's generator gets the node's prompt filled with the scenario and the conversation so far.
A decision hub speaks no line, but the branch it takes is fixed by the path, so the turn just
before it is told the chosen edge's condition (and, offline, uses the edge's own examples):
dialogue and path never contradict each other. Roles alternate strictly (a short reply is
inserted where two same-role nodes follow each other); the stored dialogue has no annotation.

Safety at scale: a dataset has N numbered slots per seed; a finished conversation is one INSERT
of its slot (unique), so a re-run resumes with no duplicates and `kill -9` loses only the
conversations in flight. A slot whose attempt keeps failing is recorded in
`generation_failures` and retried with a fresh scenario, never stored half-done.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.backends.base import Backend, ChatRequest, Message, RenderHints, Sampling, Usage, get_backend
from engine.backends.pricing import cost
from engine.dialogue_state import (
    DialogueState,
    Said,
    asked_facts,
    assistant_turn,
    customer_turn,
    fact_specs,
    gathered,
    greeting_of,
    new_value,
    refresh_for_revisit,
    stated_facts,
)
from engine.errors import (
    BackendError,
    BackendUnavailableError,
    FlowInvalidError,
    GenerationError,
    SubterraError,
)
from engine.flow import Flow, render_template
from engine.holdout import HELDOUT_SHARE, training_view
from engine.paths import coverage_paths, sample_paths
from engine.provenance import git_revision
from engine.ratelimit import RateLimiter
from engine.scenario import fit_to_path, sample_scenario
from engine.store import Store, now
from engine.validate import has_errors, validate

ROLE_OF = {"agent": "assistant", "user": "user"}
SPEAKER = {"assistant": "agent", "user": "customer"}

# Short replies inserted between two same-role turns, keyed by the role that must speak.
FILLERS = {
    "user": ["Okay.", "Sure.", "Alright, go on.", "Okay, thanks.", "Got it.", "Mm-hm."],
    "assistant": ["Thank you.", "Got it, thanks.", "Understood.", "Thanks for letting me know.", "I see.", "Okay."],
}

GENERATOR_SYSTEM = """\
You write realistic training conversations between a customer and a service agent, one message \
at a time. Write only the text of the message you are asked for, in the voice of its speaker: no \
speaker label, no quotation marks, no stage directions, and never mention flowcharts, nodes, \
steps, branches, scenarios or these instructions. Keep each message natural and short (one to \
three sentences) unless the instruction asks for more. The customer knows their own details; \
the agent learns them only when the customer says them.

The agent works under this system prompt:
{system_prompt}

What the conversations are about: {description}"""

_LABEL = re.compile(r"^\s*\**\s*(agent|assistant|customer|user|caller|client)\s*\**\s*:\s*\**\s*", re.I)


MAX_CONVERSATIONS = 1_000_000
"""Most conversations one run may ask for per seed (more is a typo, and would fill the memory planning it)."""
MAX_TOKENS = 32_768
"""Longest message a generator may be asked for (beyond any model's context)."""


class GenerateConfig(BaseModel):
    """Everything that decides what a generation run produces (recorded with the dataset)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    n: int = Field(gt=0, le=MAX_CONVERSATIONS, description="Conversations per seed.")
    seeds: list[Annotated[int, Field(ge=0, lt=2**63)]] = Field(
        default_factory=lambda: [0], min_length=1, description="One run of n per seed.")
    backend: str = Field("scripted", description="What writes the turns: example utterances (scripted), a local "
                                                 "model, or an API.")
    model: str | None = Field(None, description="Model name for the backend (none: the backend's own choice).")
    base_url: str | None = Field(None, description="Endpoint for anthropic / openai backends.")
    fallback: str | None = Field(None, description="scripted only: backend for nodes without examples.")
    dataset: str | None = Field(None, description="Dataset name; default: the flow's name.")
    paths: Literal["coverage", "uniform"] = Field("coverage", description="How paths are chosen.")
    max_visits: int = Field(
        2, ge=1, description="How often a path may pass one node: 2 lets each loop run once more, so loop-back "
        "edges (ask again, re-request documents) appear in the data; 1 keeps paths acyclic.",
    )
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Share of each seed's conversations held out.")
    customer_first: float = Field(
        0.25, ge=0, le=1, description="Share of conversations whose path opens with the assistant that start "
        "with the customer instead (the assistant's first turn then greets and answers what was said).",
    )
    heldout_examples: float = Field(
        HELDOUT_SHARE, ge=0, lt=1, description="Share of each node's example utterances never used for "
        "training conversations (engine.holdout.heldout_view gives them to the evaluation).",
    )
    concurrency: int = Field(8, ge=1, le=1024, description="Conversations generated at once.")
    requests_per_minute: float | None = Field(None, gt=0, description="Client-side request rate cap.")
    tokens_per_minute: float | None = Field(None, gt=0, description="Client-side token rate cap.")
    max_cost: float | None = Field(None, ge=0, description="Stop (and refuse to start) beyond this spend in USD.")
    attempts: int = Field(3, ge=1, le=100,
                          description="Tries per slot, each with a fresh scenario, before it is left empty.")
    temperature: float = Field(0.9, ge=0, le=2, description="Sampling temperature of the generator.")
    max_tokens: int = Field(300, gt=0, le=MAX_TOKENS, description="Longest generated message, in tokens.")
    cache_prompt: bool = Field(True, description="Mark the generator's stable system prompt for prompt caching.")


class Progress(BaseModel):
    model_config = ConfigDict(extra="forbid")
    total: int = Field(description="Slots this run must fill (all seeds).")
    done: int = Field(description="Slots filled, earlier runs included.")
    new: int = Field(0, description="Conversations written by this run.")
    failed: int = Field(0, description="Failed attempts in this run (each replaced by a retry).")
    rate: float = Field(0.0, description="New conversations per second.")
    eta_s: float | None = Field(None, description="Seconds to go at the current rate.")
    spent_usd: float = Field(0.0, description="Spend of this run so far.")


class RunReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str
    dataset_id: int
    total: int = Field(description="Slots requested (n x seeds).")
    done: int = Field(description="Conversations now in the dataset for these seeds.")
    new: int = Field(description="Conversations written by this run.")
    failed_attempts: int
    empty_slots: list[int] = Field(default_factory=list, description="Slots still empty (every attempt failed).")
    stopped: str | None = Field(None, description="Why the run stopped early (cost cap), if it did.")
    usage: Usage = Field(default_factory=Usage)
    cost_usd: float = 0.0
    cost_known: bool = True
    elapsed_s: float = 0.0
    job_id: int | None = None

    @property
    def complete(self) -> bool:
        return self.done >= self.total


class Estimate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    conversations: int
    llm_calls: int
    usage: Usage
    usd: float
    price_known: bool


@dataclass
class Turn:
    """One message to write: who speaks, the node behind it, and what it must achieve."""

    role: str  # assistant | user
    node_id: str | None  # None for an inserted short reply
    prompt: str
    conditions: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    next_agent: str | None = None  # the next agent node on the path after this turn
    loops: bool = False  # that agent node was visited before: the path loops back here
    hubs: list[str] = field(default_factory=list)  # decision hubs whose branch this (user) turn decides


@dataclass
class SlotPlan:
    slot: int
    seed: int
    index: int  # position within its seed's run
    path: list[str]
    split: str


class Conversation(BaseModel):
    model_config = ConfigDict(extra="forbid")
    messages: list[dict[str, str]] = Field(description="system, then strictly alternating user/assistant.")
    meta: dict[str, Any] = Field(description="flow, flow_version, path, message_nodes, scenario, seed, ...")
    usage: Usage = Field(default_factory=Usage)


# ----------------------------------------------------------------------------------------------
# public API


def generate_dataset(flow: Flow, config: GenerateConfig, store: Store | None = None,
                     on_progress: Callable[[Progress], None] | None = None,
                     backend: Backend | None = None,
                     on_estimate: Callable[[Estimate], None] | None = None) -> RunReport:
    """Fill the dataset to `config.n` conversations per seed (resuming), synchronously."""
    return asyncio.run(agenerate_dataset(flow, config, store, on_progress, backend, on_estimate))


async def agenerate_dataset(flow: Flow, config: GenerateConfig, store: Store | None = None,
                            on_progress: Callable[[Progress], None] | None = None,
                            backend: Backend | None = None,
                            on_estimate: Callable[[Estimate], None] | None = None) -> RunReport:
    """Fill the dataset to `config.n` conversations per seed, resuming whatever is there.

    `backend` overrides the one `config` names (tests, benchmarks); `on_estimate` sees the
    cost estimate of the remaining work before anything is spent; `on_progress` every change.
    """
    problems = validate(flow)
    if has_errors(problems):
        lines = "; ".join(str(p) for p in problems if p.severity == "error")
        raise FlowInvalidError(f"flow '{flow.name}' has errors, fix them before generating: {lines}", problems)
    store = store or Store()
    own_backend = backend is None
    if backend is None:
        backend = make_backend(config)  # fails early (no key, no model) before anything is written
    try:
        return await _generate(flow, config, store, backend, on_progress, on_estimate)
    finally:
        if own_backend:
            await backend.aclose()


async def _generate(flow: Flow, config: GenerateConfig, store: Store, backend: Backend,
                    on_progress: Callable[[Progress], None] | None,
                    on_estimate: Callable[[Estimate], None] | None) -> RunReport:
    flow_version = _flow_version(store, flow)
    ds_name = config.dataset or flow.name
    new_dataset = store.dataset_row(ds_name) is None
    ds_id = _dataset(store, ds_name, flow, flow_version, config)
    try:  # a run refused before its first conversation leaves no dataset behind
        plans = [p for seed in config.seeds for p in _seed_plan(store, ds_id, flow, config, seed)]
        filled = _filled_slots(store, ds_id)
        todo = [p for p in plans if p.slot not in filled]
        gen_flow = training_view(flow, config.heldout_examples)  # held-out examples stay out of the data
        if backend.name == "scripted" and not config.fallback:
            _check_examples(gen_flow, todo)
        est = estimate_cost(flow, config, plans=todo, model=backend.model, backend=backend.name)
        if on_estimate:
            on_estimate(est)
        if config.max_cost is not None and todo and est.usd > config.max_cost:
            raise GenerationError(
                f"the estimated cost ${est.usd:.2f} of {len(todo)} conversations exceeds --max-cost "
                f"${config.max_cost:.2f}; lower -n or raise --max-cost"
            )
    except BaseException:
        if new_dataset:
            store.delete_dataset(ds_id)
        raise
    job_id = store.create_job("generate", config.model_dump(mode="json"), name=ds_name)
    run = _Run(gen_flow, flow_version, config, store, ds_id, backend, len(plans), len(plans) - len(todo),
               on_progress, job_id)
    try:
        if todo:
            check = getattr(backend, "check", None)
            if check is not None:
                await check()
            await run.execute(todo)
    except BaseException as e:
        store.update_job(job_id, status="failed", message=str(e) if isinstance(e, SubterraError) else repr(e))
        raise
    report = run.report(ds_name, [p.slot for p in plans])
    ended = {} if store.is_runner_job(job_id) else {"status": "done" if report.complete else "incomplete"}
    store.update_job(job_id, progress=report.done / max(1, report.total),
                     result=report.model_dump(mode="json"), message=_summary(report), **ended)
    store.touch_dataset(ds_id)
    return report


def make_backend(config: GenerateConfig) -> Backend:
    opts: dict[str, Any] = {}
    if config.model:
        opts["model"] = config.model
    if config.base_url:
        opts["base_url"] = config.base_url
    if config.backend == "scripted" and config.fallback:
        opts = {"fallback": config.fallback, "fallback_options": opts}
    return get_backend(config.backend, **opts)


def preview_dialogue(flow: Flow, path: list[str] | None = None, seed: int = 0,
                     backend: str | Backend = "scripted", customer_first: bool = False) -> list[dict[str, Any]]:
    """One dialogue along `path` (default: a sampled one) as [{role, content, node}], no store;
    `customer_first`: the customer opens, as in a share of a dataset's conversations.

    Instant with the scripted backend; the studio's "preview dialogue" button calls it. Safe to
    call from inside a running event loop (it then runs on a worker thread); async code can
    await `apreview_dialogue` instead.
    """
    coro = apreview_dialogue(flow, path, seed, backend, customer_first)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def apreview_dialogue(flow: Flow, path: list[str] | None = None, seed: int = 0,
                            backend: str | Backend = "scripted",
                            customer_first: bool = False) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    path = path or sample_paths(flow, 1, seed=seed)[0]
    scenario = sample_scenario(flow, rng)
    be = get_backend(backend) if isinstance(backend, str) else backend
    try:
        conv = await write_conversation(flow, path, scenario, be, seed, Sampling(), customer_first=customer_first)
    finally:
        if isinstance(backend, str):
            await be.aclose()
    nodes = conv.meta["message_nodes"]
    return [{"role": m["role"], "content": m["content"], "node": n} for m, n in zip(conv.messages, nodes, strict=True)]


def estimate_cost(flow: Flow, config: GenerateConfig, plans: list[SlotPlan] | None = None,
                  model: str | None = None, backend: str | None = None) -> Estimate:
    """Tokens and USD for a run, from the path lengths (before spending anything)."""
    if plans is None:
        plans = [p for seed in config.seeds for p in _plan(flow, config, seed, 0)]
    system_tokens = _tokens(_generator_system(flow))
    usage, calls = Usage(), 0
    for p in plans:
        turns = plan_turns(flow, p.path)
        for i, _ in enumerate(turns):
            calls += 1
            history = i * 40  # ~40 tokens per earlier message
            first = calls == 1
            usage = usage + Usage(input_tokens=150 + history, output_tokens=45,
                                  cache_write_tokens=system_tokens if first else 0,
                                  cache_read_tokens=0 if first else system_tokens)
    c = cost(usage, model or config.model or "", backend or config.backend)
    return Estimate(conversations=len(plans), llm_calls=calls, usage=usage, usd=c.usd, price_known=c.known)


def plan_turns(flow: Flow, path: list[str]) -> list[Turn]:
    """The messages a path produces: one per agent/user node, branch conditions attached to the
    turn that must lead to them, and a short reply inserted between two same-role turns."""
    turns: list[Turn] = []
    pending: list[tuple[str | None, list[str]]] = []  # branch info waiting for the next turn
    for k, nid in enumerate(path):
        node = flow.node(nid)
        nxt = path[k + 1] if k + 1 < len(path) else None
        branch = _branch(flow, nid, nxt)
        if node.speaks:
            role = ROLE_OF[node.role]
            if turns and turns[-1].role == role:
                other = "user" if role == "assistant" else "assistant"
                turns.append(Turn(other, None, "a very short natural reply (a few words) that lets the other "
                                  "person go on", [], FILLERS[other]))
            turn = Turn(role, nid, node.prompt, [], list(node.examples))
            turn.next_agent, turn.loops = _next_agent(flow, path, k)
            # a hub at the start or right after an agent turn: the branch is context for this turn
            turn.conditions += [when for when, _ in pending if when]
            pending = []
            if branch is not None and len(flow.out_edges(nid)) > 1:
                _attach(turn, *branch)
            turns.append(turn)
        elif node.role == "decision" and branch is not None:
            last = turns[-1] if turns else None
            if last is not None and last.role == "user":  # hubs speak no line: `last` precedes this hub
                _attach(last, *branch)
                last.hubs.append(nid)
            else:
                pending.append(branch)
    return turns


async def write_conversation(flow: Flow, path: list[str], scenario: dict[str, Any], backend: Backend,
                             seed: int, sampling: Sampling, limiter: RateLimiter | None = None,
                             before_call: Callable[[], None] | None = None,
                             after_call: Callable[[Usage], None] | None = None,
                             cache_system: bool = True, customer_first: bool = False) -> Conversation:
    """Write one conversation along `path` turn by turn; raises on a failed turn (nothing partial).

    A `DialogueState` follows what the customer has stated, what the assistant asked and restated and
    what changed: offline, each turn is composed against it (`engine.dialogue_state`); a model is told
    the facts stated so far and what is still missing. `customer_first` drops the assistant's opening
    greeting: the customer speaks first and the assistant's first turn greets and answers them.
    """
    system = _generator_system(flow)
    messages: list[dict[str, str]] = [{"role": "system", "content": flow.system_prompt}]
    nodes: list[str | None] = [None]
    usage = Usage()
    scenario = fit_to_path(flow, path, scenario)
    specs, facts = fact_specs(flow), gathered(flow)
    state = DialogueState(values=dict(scenario), facts=facts)
    persona = str(scenario.get("user_style", "somewhat specific"))
    turns = plan_turns(flow, path)
    opened_by_customer = customer_first and len(turns) > 1 and turns[0].role == "assistant" and turns[1].role == "user"
    if opened_by_customer:
        turns = turns[1:]
    stated_log: list[list[str]] = [[]]
    asked_log: list[list[str]] = [[]]
    retracted_log: list[list[str]] = [[]]
    for i, turn in enumerate(turns):
        rng = random.Random(_mix(seed, i, "state"))
        greeting = greeting_of(flow, rng) if opened_by_customer and i == 1 else ""
        change = _llm_change(flow, state, turn, rng) if backend.name != "scripted" else None
        if turn.role == "assistant" and turn.node_id is not None and turn.node_id in nodes:  # a revisit
            customer_said = [m["content"] for m in messages if m["role"] == "user"]
            refresh_for_revisit(flow, state, flow.node(turn.node_id), customer_said, rng)
        said = _compose(flow, state, specs, turn, rng, persona, greeting,
                        opening=turn.role == "user" and state.customer_turns == 0) \
            if backend.name == "scripted" and turn.examples else None
        # the scripted backend renders examples and never reads the prompt: skip building it
        offline = said is not None
        prompt = "" if offline else _instruction(turn, messages[1:], state.values, state, specs, greeting, change)
        request = ChatRequest(
            system=system,
            messages=[Message(role="user", content=prompt)],
            sampling=sampling.model_copy(update={"seed": _mix(seed, i)}),
            hints=RenderHints(node_id=turn.node_id, examples=[said.template] if said else turn.examples,
                              variables=state.values),
            cache_system=cache_system,
        )
        if before_call:
            before_call()
        if limiter is not None:
            await limiter.acquire(_tokens(system) + _tokens(request.messages[0].content) + sampling.max_tokens)
        result = await backend.complete(request)
        usage = usage + result.usage
        if after_call:
            after_call(result.usage)
        text = clean_message(result.text)
        if not text:
            raise GenerationError(f"the generator wrote an empty message at node '{turn.node_id or 'reply'}'")
        stated, asked = _observe(state, specs, turn, text, said, change)
        stated_log.append(stated)
        asked_log.append(asked)
        retracted_log.append(list(said.retracted) if said is not None else [])
        messages.append({"role": turn.role, "content": text})
        nodes.append(turn.node_id)
    meta = {"flow": flow.name, "path": path, "message_nodes": nodes, "scenario": scenario, "seed": seed,
            "opening": "customer" if messages[1:] and messages[1]["role"] == "user" else "assistant",
            "customer_first": opened_by_customer,  # the path's opening greeting was dropped
            "facts_stated": stated_log, "facts_asked": asked_log, "facts_retracted": retracted_log,
            "changes": state.history}  # variable -> its values in order (scenario's first)
    return Conversation(messages=messages, meta=meta, usage=usage)


def _compose(flow: Flow, state: DialogueState, specs: dict[str, Any], turn: Turn, rng: random.Random,
             persona: str, greeting: str, opening: bool) -> Said:
    """The scripted turn written against the conversation state."""
    node = flow.node(turn.node_id) if turn.node_id else None
    if turn.role == "user":
        nxt = flow.node(turn.next_agent) if turn.next_agent else None
        return customer_turn(flow, state, specs, turn.examples, rng, node=node, next_agent=nxt, loops=turn.loops,
                             persona=persona, opening=opening, implied=[h for h in turn.hubs if h in state.facts])
    return assistant_turn(flow, state, specs, turn.examples, rng, node=node, greeting=greeting)


def _llm_change(flow: Flow, state: DialogueState, turn: Turn, rng: random.Random) -> tuple[str, Any] | None:
    """A model-written customer turn on a loop-back from a node that may change facts: pick the change
    here, so the state (and every later instruction) carries the new value."""
    if turn.role != "user" or not turn.loops or not turn.node_id:
        return None
    changeable = [c for c in flow.node(turn.node_id).changes if state.known(c)]
    if not changeable or not turn.next_agent or not flow.node(turn.next_agent).gathers:
        return None
    name = rng.choice(changeable)
    old = state.values[name]
    new = new_value(flow, name, old, rng)
    if new == old:
        return None
    state.change(name, new)
    return name, old


def _observe(state: DialogueState, specs: dict[str, Any], turn: Turn, text: str, said: Said | None,
             change: tuple[str, Any] | None) -> tuple[list[str], list[str]]:
    """Update the state from a written turn: what the customer stated, what the assistant asked/restated."""
    facts = state.facts
    if turn.role == "user":
        if said is not None:
            stated = said.stated
            state.note_customer(stated, said.changed, said.retracted)
            return [*stated, *(c for c in said.changed if c not in stated)], []
        stated = stated_facts(text, state.values, facts) + [h for h in turn.hubs if h in facts]
        state.note_customer(stated, [change[0]] if change else [])
        return stated, []
    asked = said.asked if said is not None else asked_facts(text, specs, facts)
    restated = said.restated if said is not None else stated_facts(text, state.values, facts)
    state.note_assistant(asked, restated, said.keep_rest if said is not None else False)
    return [], asked


def clean_message(text: str) -> str:
    """Strip what a model adds around a message: speaker labels, wrapping quotes, whitespace,
    and any further turns it wrote on (a line that starts with a speaker label)."""
    lines = text.strip().splitlines()
    for i, line in enumerate(lines[1:], start=1):
        if _LABEL.match(line):
            lines = lines[:i]
            break
    text = "\n".join(lines).strip()
    text = _LABEL.sub("", text, count=1).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”":
        text = text[1:-1].strip()
    if len(text) >= 2 and text[0] == "“" and text[-1] == "”":
        text = text[1:-1].strip()
    return text


# ----------------------------------------------------------------------------------------------
# the run: workers, retries, commits, progress


class _CostCap(Exception):
    pass


class _Run:
    def __init__(self, flow: Flow, flow_version: int, config: GenerateConfig, store: Store, ds_id: int,
                 backend: Backend, total: int, done: int, on_progress: Callable[[Progress], None] | None,
                 job_id: int):
        self.flow, self.flow_version, self.config, self.store, self.ds_id = flow, flow_version, config, store, ds_id
        self.backend, self.total, self.done, self.on_progress, self.job_id = backend, total, done, on_progress, job_id
        self.new = self.failed = 0
        self.usage, self.spent, self.cost_known = Usage(), 0.0, True
        self.stopped: str | None = None
        self.limiter = RateLimiter(config.requests_per_minute, config.tokens_per_minute)
        self.sampling = Sampling(temperature=config.temperature, max_tokens=config.max_tokens)
        self.t0 = time.monotonic()
        self._last_report = 0.0
        self._fatal: BaseException | None = None

    async def execute(self, todo: list[SlotPlan]) -> None:
        queue: asyncio.Queue[SlotPlan] = asyncio.Queue()
        # longest paths first: the workers then finish together instead of one long conversation
        # running alone at the end (longest-processing-time-first scheduling)
        for p in sorted(todo, key=lambda p: -len(p.path)):
            queue.put_nowait(p)
        workers = [asyncio.create_task(self._worker(queue)) for _ in range(min(self.config.concurrency, len(todo)))]
        try:
            with self.store.fast_writes():  # an fsync per conversation would dominate offline generation
                await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            self._progress(force=True)
        if self._fatal is not None:
            raise self._fatal

    async def _worker(self, queue: asyncio.Queue[SlotPlan]) -> None:
        while not queue.empty() and self._fatal is None and self.stopped is None:
            plan = queue.get_nowait()
            await self._fill(plan)

    async def _fill(self, plan: SlotPlan) -> None:
        for attempt in range(1, self.config.attempts + 1):
            rng = random.Random(_mix(plan.seed, plan.index, attempt))
            scenario = sample_scenario(self.flow, rng)
            try:
                conv = await write_conversation(
                    self.flow, plan.path, scenario, self.backend, _mix(plan.seed, plan.index, attempt, 1),
                    self.sampling, self.limiter, before_call=self._check_cap, after_call=self._charge,
                    cache_system=self.config.cache_prompt, customer_first=self._customer_first(plan),
                )
            except _CostCap:
                self.stopped = f"stopped at the --max-cost cap of ${self.config.max_cost:.2f}"
                return
            except BackendUnavailableError as e:
                self._fatal = e  # no key, unreachable, unknown model: every slot would fail the same way
                return
            except (BackendError, GenerationError) as e:
                self._record_failure(plan, attempt, str(e))
                continue
            except Exception as e:  # noqa: BLE001 - a bug or odd reply must cost one attempt, not the run
                self._record_failure(plan, attempt, f"{type(e).__name__}: {e}")
                continue
            self._commit(plan, attempt, conv)
            return

    def _customer_first(self, plan: SlotPlan) -> bool:
        # by a hash of the slot, not the attempt: a retried slot keeps its opening
        return _mix(plan.seed, plan.index, "customer_first") % 10_000 < round(self.config.customer_first * 10_000)

    def _check_cap(self) -> None:
        if self.config.max_cost is not None and self.spent >= self.config.max_cost:
            raise _CostCap()

    def _charge(self, usage: Usage) -> None:
        self.usage = self.usage + usage
        c = cost(usage, self.backend.model, self.backend.name)
        self.spent += c.usd
        self.cost_known = self.cost_known and c.known

    def _commit(self, plan: SlotPlan, attempt: int, conv: Conversation) -> None:
        c = cost(conv.usage, self.backend.model, self.backend.name)
        meta = conv.meta | {
            "seed": plan.seed, "conversation_seed": conv.meta["seed"], "flow_version": self.flow_version,
            "split": plan.split, "slot": plan.slot, "attempt": attempt,
            "backend": self.backend.name, "model": self.backend.model,
            "usage": conv.usage.model_dump(), "cost_usd": round(c.usd, 6),
        }
        if self.store.add_conversation(self.ds_id, plan.slot, plan.split, conv.messages, meta):
            self.new += 1
            self.done += 1
        self._progress()

    def _record_failure(self, plan: SlotPlan, attempt: int, reason: str) -> None:
        self.failed += 1
        self.store.add_generation_failure(self.ds_id, plan.slot, attempt, reason)
        self._progress()

    def _progress(self, force: bool = False) -> None:
        t = time.monotonic()
        elapsed = max(t - self.t0, 1e-9)
        rate = self.new / elapsed
        left = self.total - self.done
        p = Progress(total=self.total, done=self.done, new=self.new, failed=self.failed, rate=rate,
                     eta_s=left / rate if rate > 0 else None, spent_usd=self.spent)
        if self.on_progress:
            self.on_progress(p)
        if force or t - self._last_report > 0.5:  # the studio polls the jobs table; keep writes rare
            self._last_report = t
            self.store.update_job(self.job_id, progress=self.done / max(1, self.total), message=_progress_line(p))

    def report(self, name: str, slots: list[int]) -> RunReport:
        filled = _filled_slots(self.store, self.ds_id)
        empty = [s for s in slots if s not in filled]
        return RunReport(dataset=name, dataset_id=self.ds_id, total=len(slots), done=len(slots) - len(empty),
                         new=self.new, failed_attempts=self.failed, empty_slots=empty, stopped=self.stopped,
                         usage=self.usage, cost_usd=self.spent, cost_known=self.cost_known,
                         elapsed_s=time.monotonic() - self.t0, job_id=self.job_id)


# ----------------------------------------------------------------------------------------------
# datasets, slots and plans


def _flow_version(store: Store, flow: Flow) -> int:
    """The stored version with exactly this content (any version, not only the head, so that
    `travel@3` or an old file does not move the studio's head); saved as a new one if none is."""
    digest = hashlib.sha256(json.dumps(flow.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
    version = store.flow_version_with_hash(flow.name, digest)
    return version if version is not None else store.save_flow(flow, message="used for generation")


def _dataset(store: Store, name: str, flow: Flow, version: int, config: GenerateConfig) -> int:
    r = store.dataset_row(name)
    if r is not None:
        if r["flow"] != flow.name or r["flow_version"] != version:
            raise GenerationError(
                f"dataset '{name}' holds conversations of flow '{r['flow']}' version {r['flow_version']}, "
                f"not '{flow.name}' version {version}; pick another --dataset "
                f"(or generate from {r['flow']}@{r['flow_version']})"
            )
        return int(r["id"])
    return store.create_dataset(name, flow.name, version, config.model_dump(mode="json"), _provenance())


def _seed_plan(store: Store, ds_id: int, flow: Flow, config: GenerateConfig, seed: int) -> list[SlotPlan]:
    """This seed's n slots, claiming (in a transaction) a new segment of slot numbers if needed."""
    slots = store.claim_slots(ds_id, seed, config.n)
    return _plan(flow, config, seed, slots)


def _plan(flow: Flow, config: GenerateConfig, seed: int, slots: list[int] | int) -> list[SlotPlan]:
    """Path and split for each of a seed's slots; deterministic in (flow, n, seed)."""
    n = config.n
    if isinstance(slots, int):
        slots = list(range(slots, slots + n))
    if config.paths == "uniform":
        paths = sample_paths(flow, n, seed=seed, max_visits=config.max_visits)
    else:
        paths = coverage_paths(flow, n, k=1, seed=seed, max_visits=config.max_visits)
    if not paths:
        raise GenerationError(f"flow '{flow.name}' has no complete path from its start to a terminal; fix its edges")
    splits = stratified_split([tuple(p) for p in paths], config.eval_fraction, seed)
    return [SlotPlan(slot=s, seed=seed, index=i, path=paths[i], split=splits[i]) for i, s in enumerate(slots)]


def stratified_split(keys: list[Any], eval_fraction: float, seed: int) -> list[str]:
    """'train'/'eval' per item, holding out `eval_fraction` so the eval split covers as many
    distinct keys (paths) as it can: one per path in turn, never a path's last train example
    while another choice remains."""
    n_eval = round(len(keys) * eval_fraction)
    if eval_fraction > 0 and len(keys) >= 2:
        n_eval = max(1, n_eval)
    rng = random.Random(_mix(seed, "split"))
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        groups[k].append(i)
    order = list(groups.values())
    rng.shuffle(order)
    for g in order:
        rng.shuffle(g)
    split = ["train"] * len(keys)
    taken, depth = 0, 0
    while taken < n_eval and any(depth < len(g) - 1 for g in order):
        for g in order:
            if depth < len(g) - 1 and taken < n_eval:
                split[g[depth]] = "eval"
                taken += 1
        depth += 1
    for g in order:  # budget left over: only paths with a single conversation remain
        for i in g:
            if taken < n_eval and split[i] == "train":
                split[i] = "eval"
                taken += 1
    return split


def _check_examples(flow: Flow, plans: list[SlotPlan]) -> None:
    """Offline generation needs an example utterance for every turn it will write: say which are
    missing before starting, not once per failed conversation."""
    missing: dict[str, None] = {}
    for p in plans:
        for t in plan_turns(flow, p.path):
            if not t.examples and t.node_id:
                missing.setdefault(t.node_id, None)
    if missing:
        names = ", ".join(f"'{m}'" for m in missing)
        raise GenerationError(
            f"node(s) {names} have no example utterances, which the scripted backend needs; add some to their "
            "examples, or generate with a model (--backend local, or --fallback local for just those nodes)"
        )


def _filled_slots(store: Store, ds_id: int) -> set[int]:
    return store.filled_slots(ds_id)


# ----------------------------------------------------------------------------------------------
# prompts and helpers


def _generator_system(flow: Flow) -> str:
    return GENERATOR_SYSTEM.format(system_prompt=flow.system_prompt or "(none)",
                                   description=flow.description or flow.name)


def _instruction(turn: Turn, history: list[dict[str, str]], scenario: dict[str, Any],
                 state: DialogueState | None = None, specs: dict[str, Any] | None = None,
                 greeting: str = "", change: tuple[str, Any] | None = None) -> str:
    speaker = SPEAKER[turn.role]
    lines = ["Scenario of this conversation:"]
    lines += [f"- {k}: {v}" for k, v in scenario.items()] or ["- (none)"]
    lines += ["", "Conversation so far:"]
    lines += ([f"{SPEAKER[m['role']].capitalize()}: {m['content']}" for m in history]
              or ["(nothing yet: this is the first message)"])
    if state is not None and state.facts:
        lines += ["", *_facts_lines(turn, state, change)]
    lines += ["", f"Write the next message, spoken by the {speaker}."]
    if greeting:
        lines.append("The customer spoke first: greet them briefly, then answer what they said.")
    if turn.prompt:
        lines.append(f"What it must do: {render_template(turn.prompt, scenario)}")
    for c in turn.conditions:
        lines.append(f"It must make this clearly true: {render_template(c, scenario)}")
    if turn.examples:
        lines.append("Examples of such a message (for the idea; do not copy them):")
        lines += [f"- {render_template(e, scenario)}" for e in turn.examples[:5]]
    return "\n".join(lines)


def _facts_lines(turn: Turn, state: DialogueState, change: tuple[str, Any] | None) -> list[str]:
    """What the customer has said so far, so a model-written turn listens too."""
    stated = state.stated_values()
    lines = ["Facts the customer has stated so far (the agent knows these; never ask for them again):"]
    lines += [f"- {k}: {v}" for k, v in stated.items()] or ["- (none yet)"]
    missing = state.missing(state.facts)
    if missing:
        lines.append("Not stated yet: " + ", ".join(missing) + ".")
    if state.asked and turn.role == "user":
        lines.append("The agent just asked for: " + ", ".join(state.asked) + "; answer that.")
    for name, old in state.changed.items():
        lines.append(f"The customer changed {name} from {old} to {state.values[name]}; use the new value.")
    if change is not None:
        lines.append(f"In this message the customer changes their mind: {change[0]} is now {state.values[change[0]]} "
                     f"instead of {change[1]}.")
    return lines


def _next_agent(flow: Flow, path: list[str], k: int) -> tuple[str | None, bool]:
    """The next agent node after path[k], and whether going there loops back (it leads to path[k] again)."""
    for j in range(k + 1, len(path)):
        if flow.node(path[j]).role == "agent":
            return path[j], _reaches(flow, path[j], path[k])
    return None, False


def _reaches(flow: Flow, source: str, target: str) -> bool:
    # asked for every turn of every planned conversation: the nodes reachable from each source are
    # found once per flow and kept on it (flows are immutable once built, as Flow.node_map assumes)
    memo: dict[str, set[str]] = flow.__dict__.setdefault("_reachable", {})
    if source not in memo:
        seen, frontier = set(), [source]
        while frontier:
            cur = frontier.pop()
            if cur not in seen:
                seen.add(cur)
                frontier.extend(e.target for e in flow.out_edges(cur))
        memo[source] = seen
    return target in memo[source]


def _branch(flow: Flow, source: str, target: str | None) -> tuple[str | None, list[str]] | None:
    if target is None:
        return None
    e = flow.edge_between(source, target)
    if e is None:
        return None
    return e.when, list(e.examples)


def _attach(turn: Turn, when: str | None, examples: list[str]) -> None:
    if when:
        turn.conditions.append(when)
    if examples and turn.role == "user":
        turn.examples = examples  # branch-specific lines beat the node's generic ones


def _mix(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest(), "big") >> 1


def _provenance() -> dict[str, Any]:
    return {"git_revision": git_revision(), "created": now()}


def _tokens(text: str) -> int:
    return len(text) // 4 + 1


def _progress_line(p: Progress) -> str:
    eta = f"{p.eta_s:.0f}s" if p.eta_s is not None else "?"
    return f"{p.done}/{p.total} done, {p.failed} failed, {p.rate:.1f}/s, ETA {eta}, ${p.spent_usd:.4f}"


def _summary(r: RunReport) -> str:
    s = f"{r.done}/{r.total} conversations in '{r.dataset}' ({r.new} new, {r.failed_attempts} failed attempts)"
    return s + (f"; {r.stopped}" if r.stopped else "")

