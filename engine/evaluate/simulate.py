"""Simulated users: the customer side of an evaluation conversation.

Scenarios are sampled to cover the flow's paths (`engine.paths.coverage_paths`): each has an index
(runs are paired across agents by it), scenario variables, the sampled path and the outcome that
path ends in. User style (specific ↔ vague), satisfaction (enthusiastic ↔ skeptical) and challenge
(none, change of mind, ambiguity) are scenario variables when the flow defines them, else drawn here.

Two simulators speak the same small interface (`opening()`, `reply(history)`; None ends the talk):

- `ScriptedUser` (offline default, no LLM): recognises which agent node the agent's last message
  enacts (the MiniLM node mapper of `engine.evaluate.conformance`) and answers with the example utterances of
  the user node that follows it on the scenario's path (or the branch examples of the hub edge the
  path takes next), rendered with the scenario's values. It keeps the same conversation state as the
  offline generator (`engine.dialogue_state`): it answers the facts the agent asks for, keeps back
  what the path still has the agent ask, changes a fact only on the path's loop-backs, and never
  names a value its scenario does not hold. Asked again for a fact it already gave, it repeats it ("as
  I said, ..."). When the agent strays or says something unrecognisable, it answers what the path needs
  next, steering back. It ends when the path has no user turn left.
- `LLMUser`: any backend role-plays the customer from the scenario variables, persona and the
  conversation so far. It never sees the flowchart (only the assistant's one-line description and the
  outcome the customer is after). It ends the conversation by answering `[END]`.
"""

from __future__ import annotations

import random
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from engine.backends.base import Backend, ChatRequest, Message, Sampling, Usage
from engine.dialogue_state import (
    DialogueState,
    asked_facts,
    customer_turn,
    fact_phrase,
    fact_specs,
    gathered,
    join_phrases,
    stated_facts,
)
from engine.evaluate.conformance import NodeMapper
from engine.flow import Flow, render_template

END_MARK = "[END]"
PERSONA_DEFAULTS: dict[str, list[str]] = {
    "user_style": ["specific", "somewhat specific", "vague"],
    "satisfaction": ["enthusiastic", "neutral", "skeptical"],
    "challenge": ["none", "none", "change_of_mind", "ambiguity"],
}
ACKS = ["Okay.", "Sounds good.", "Alright, thanks.", "Sure."]


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: int = Field(description="Position in the run; conversations are paired across agents by it.")
    seed: int = Field(description="Seed for this scenario's random choices.")
    variables: dict[str, Any] = Field(description="Scenario variable values (destination, budget, ...).")
    persona: dict[str, str] = Field(description="user_style, satisfaction and challenge of the simulated user.")
    path: list[str] = Field(description="The flowchart path this scenario is meant to follow.")
    expected_outcome: str | None = Field(description="Outcome of the terminal the path ends in.")
    customer_opens: bool = Field(False, description="The customer speaks first even where the path opens with "
                                 "the assistant's greeting (as a person does in a chat window).")

    @property
    def challenged(self) -> bool:
        """Whether the simulated user poses a challenge (the judge caps graceful handling otherwise)."""
        return self.persona.get("challenge", "none") not in ("none", "", "no")


class UserTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(description="The user's message; None ends the conversation.")
    usage: Usage = Field(default_factory=Usage, description="Tokens the simulator spent (LLM simulators).")


class UserSimulator(Protocol):
    async def opening(self) -> UserTurn | None:
        """The user's first message when the path starts with a user turn, else None (the agent opens)."""
        ...

    async def reply(self, history: list[Message]) -> UserTurn: ...


def sample_scenarios(flow: Flow, n: int, seed: int = 0, customer_first: float = 0.0) -> list[Scenario]:
    """`n` scenarios whose paths cover every edge when `n` allows (then uniform); a `customer_first` share
    of them (by index, deterministic) has the customer speak first."""
    from engine.paths import coverage_paths
    from engine.scenario import fit_to_path

    paths = coverage_paths(flow, n, seed=seed)
    out = []
    for i, path in enumerate(paths):
        rng = random.Random(seed * 1_000_003 + i)
        variables = fit_to_path(flow, path, _sample_variables(flow, rng))
        persona = {k: str(variables[k]) if k in variables else rng.choice(v) for k, v in PERSONA_DEFAULTS.items()}
        terminal = flow.node(path[-1]) if path and path[-1] in flow.node_map else None
        out.append(Scenario(
            index=i, seed=rng.randrange(2**31), variables=variables, persona=persona, path=path,
            expected_outcome=(terminal.outcome or terminal.id) if terminal and terminal.role == "terminal" else None,
            customer_opens=int((i + 1) * customer_first) > int(i * customer_first),  # an even spread
        ))
    return out


def first_speaker(flow: Flow, path: list[str]) -> str:
    """'user' when the path's first speaking node is a user turn, else 'assistant'."""
    for nid in path:
        role = flow.node(nid).role
        if role in ("agent", "user"):
            return "user" if role == "user" else "assistant"
    return "assistant"


# ----------------------------------------------------------------------------------------------
# scripted


class ScriptedUser:
    def __init__(self, flow: Flow, scenario: Scenario, mapper: NodeMapper):
        self.flow, self.scenario, self.mapper = flow, scenario, mapper
        self.path = scenario.path
        self.pointer = -1  # index in the path of the last node the conversation has reached
        self.rng = random.Random(scenario.seed)
        self.last_node: str | None = None
        self.specs, facts = fact_specs(flow), gathered(flow)
        self.state = DialogueState(values=dict(scenario.variables), facts=facts)

    async def opening(self) -> UserTurn | None:
        if first_speaker(self.flow, self.path) != "user" and not self.scenario.customer_opens:
            return None
        idx = next((i for i, nid in enumerate(self.path) if self.flow.node(nid).role == "user"), None)
        if idx is None:
            return None
        self.pointer = idx
        return UserTurn(text=self._say(idx))

    async def reply(self, history: list[Message]) -> UserTurn:
        last = next((m.content for m in reversed(history) if m.role == "assistant"), "")
        said = [m for m in history if m.role != "system"]
        greeted = bool(said) and said[0].role == "user" and sum(m.role == "assistant" for m in said) == 1
        self.last_node = self.mapper.map([last], self.state.values, greeted=greeted)[0].node
        facts = self.state.facts
        self.state.note_assistant(asked_facts(last, self.specs, facts), stated_facts(last, self.state.values, facts))
        anchor = self._locate(self.last_node)
        if anchor is None:
            return UserTurn(text=None)  # the path is exhausted: nothing left for the user to say
        user_idx = self._next_user(anchor)
        if user_idx is None:
            self.pointer = max(self.pointer, anchor)
            # two agent turns in a row on the path: acknowledge and let the agent go on; at the end, stop
            return UserTurn(text=self.rng.choice(ACKS) if self._agent_after(anchor) else None)
        self.pointer = max(self.pointer, user_idx)
        return UserTurn(text=self._say(user_idx))

    def _locate(self, node: str | None) -> int | None:
        """Which agent step of the path the agent's message corresponds to."""
        ahead = [i for i in range(self.pointer + 1, len(self.path)) if self.path[i] == node]
        if ahead:
            return ahead[0]
        behind = [i for i in range(0, self.pointer + 1) if self.path[i] == node]
        if behind:
            return behind[-1]  # the agent repeated an earlier step: answer that step again
        # unrecognised or off the path: assume the step the path expects next, steering back to it
        return self._agent_after(self.pointer)

    def _agent_after(self, idx: int) -> int | None:
        return next((i for i in range(idx + 1, len(self.path)) if self.flow.node(self.path[i]).role == "agent"), None)

    def _next_user(self, idx: int) -> int | None:
        for i in range(idx + 1, len(self.path)):
            role = self.flow.node(self.path[i]).role
            if role == "user":
                return i
            if role in ("agent", "terminal"):
                return None
        return None

    def _say(self, idx: int) -> str:
        node = self.flow.node(self.path[idx])
        templates = list(node.examples)
        hubs: list[str] = []
        # the branch the path takes at the hub right after this turn: say what makes its condition true
        if idx + 2 < len(self.path) and self.flow.node(self.path[idx + 1]).role == "decision":
            hubs.append(self.path[idx + 1])
            edge = self.flow.edge_between(self.path[idx + 1], self.path[idx + 2])
            if edge is not None and edge.examples:
                templates = list(edge.examples)
        if not templates:
            templates = [node.prompt] if node.prompt.strip() else ACKS
        state, facts = self.state, self.state.facts
        nxt = self._agent_after(idx)
        repeat = [f for f in state.asked if state.known(f)]  # asked again for what it already said
        said = customer_turn(
            self.flow, state, self.specs, templates, self.rng, node=node,
            next_agent=self.flow.node(self.path[nxt]) if nxt is not None else None,
            loops=nxt is not None and _reaches(self.flow, self.path[nxt], self.path[idx]),
            persona=self.scenario.persona.get("user_style", "somewhat specific"),
            opening=state.customer_turns == 0, implied=[h for h in hubs if h in facts],
        )
        state.note_customer(said.stated, said.changed, said.retracted)
        text = render_template(said.template, state.values)
        if repeat:
            again = join_phrases([render_template(fact_phrase(self.specs[f], self.rng), state.values) for f in repeat])
            text = f"As I said, {again}. {text}"
        return text


# ----------------------------------------------------------------------------------------------
# LLM


class LLMUser:
    def __init__(self, flow: Flow, scenario: Scenario, backend: Backend, max_tokens: int = 200,
                 temperature: float = 0.8):
        self.flow, self.scenario, self.backend = flow, scenario, backend
        self.sampling = Sampling(temperature=temperature, max_tokens=max_tokens, seed=scenario.seed)
        self.system = user_system_prompt(flow, scenario)

    async def opening(self) -> UserTurn | None:
        if first_speaker(self.flow, self.scenario.path) != "user" and not self.scenario.customer_opens:
            return None
        return await self._ask([Message(role="user", content="(The chat window opens. Write your first message.)")])

    async def reply(self, history: list[Message]) -> UserTurn:
        # from the simulator's side the agent is the "user" and the customer the "assistant"
        flipped = [Message(role="user" if m.role == "assistant" else "assistant", content=m.content)
                   for m in history if m.role != "system"]
        if flipped and flipped[0].role == "assistant":
            flipped.insert(0, Message(role="user", content="(The chat window opens.)"))
        return await self._ask(flipped)

    async def _ask(self, messages: list[Message]) -> UserTurn:
        result = await self.backend.complete(ChatRequest(system=self.system, messages=messages, sampling=self.sampling))
        text = result.text.strip()
        if not text or text.startswith(END_MARK):
            return UserTurn(text=None, usage=result.usage)
        return UserTurn(text=text.replace(END_MARK, "").strip() or None, usage=result.usage)


_GOALS = {
    "success": "If what the assistant offers fits your needs, go ahead and complete it.",
    "abandoned": "In the end you decide not to go ahead and leave the conversation politely.",
    "escalated": "At some point you insist on talking to a human instead.",
}
_CHALLENGES = {
    "change_of_mind": "Partway through, change your mind about one of your details.",
    "ambiguity": "Be ambiguous at first about one detail, so the assistant has to clarify it.",
}


def user_system_prompt(flow: Flow, scenario: Scenario) -> str:
    """What the LLM user gets: who it is and wants, never the procedure."""
    persona = scenario.persona
    details = "\n".join(f"- {k.replace('_', ' ')}: {v}" for k, v in scenario.variables.items() if k not in persona)
    assistant = flow.system_prompt.strip() or f"an assistant ({flow.description or flow.name})"
    lines = [
        "You are role-playing a customer in a chat with a company's assistant. Stay in character.",
        f"The assistant was introduced as: {assistant}",
        "Your details (reveal them naturally, only when relevant or asked):",
        details or "- (none)",
        f"Your style: {persona.get('user_style', 'specific')}; your mood: {persona.get('satisfaction', 'neutral')}.",
        _GOALS.get(scenario.expected_outcome or "", "Pursue your goal naturally."),
        _CHALLENGES.get(persona.get("challenge", "none"), ""),
        "Write only the customer's next message, one or two sentences, no stage directions.",
        f"When the conversation is over (your goal met, you left, or a human takes over), answer exactly {END_MARK}.",
    ]
    return "\n".join(x for x in lines if x)


# ----------------------------------------------------------------------------------------------


def _reaches(flow: Flow, source: str, target: str) -> bool:
    """Whether `target` can be reached from `source` (going there from `target` loops back)."""
    seen, frontier = set(), [source]
    while frontier:
        cur = frontier.pop()
        if cur == target:
            return True
        if cur not in seen:
            seen.add(cur)
            frontier.extend(e.target for e in flow.out_edges(cur))
    return False


def _sample_variables(flow: Flow, rng: random.Random) -> dict[str, Any]:
    from engine.scenario import sample_scenario  # the same sampler generation uses

    return dict(sample_scenario(flow, rng))
