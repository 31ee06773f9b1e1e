"""The conversation state shared by the offline generator and the scripted user simulator.

A dialogue that listens keeps track of which scenario facts the customer has stated, which the
assistant has restated (confirmed), which were asked for, and what changed. Both the scripted
generator (`engine.generate`) and the scripted user simulator (`engine.evaluate.simulate`) write
their turns through this module, so a gathering turn asks only for what is still missing, a
customer answers what it was asked, and a change of plan replaces the fact for every later turn.

The facts are the flow's *gathered* variables: those named in some node's `gathers` (when no node
names any, none; the flow then behaves as before). How a fact is asked for, stated and recognised
comes from the variable's `ask`, `state` and `cues` fields, each defaulting from its description.

Recognising facts in text (`asked_facts`, `stated_facts`) is deliberately simple and deterministic:
a question sentence asks for a fact when it contains one of the fact's cues; a message states a fact
when it mentions the fact's current value as a whole word (values of other facts masked first, so
"March 3" does not count as "3 travellers"). The data-quality report (`engine.quality`) uses the same
functions on any dataset, LLM-written ones included.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.flow import ChoiceVariable, Flow, Node, RangeVariable, TextVariable, placeholders, render_template

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_STOP = {
    "about", "again", "also", "and", "are", "could", "does", "from", "have", "just", "know", "like",
    "please", "that", "tell", "than", "the", "them", "there", "they", "this", "what", "when", "where",
    "which", "will", "with", "would", "your", "you're", "you'll", "should", "shall", "into", "mind",
}
PERSONA_SHARE = {"specific": 1.0, "somewhat specific": 0.5, "vague": 0.0}
ANSWER_FRAMES = ["{facts}.", "Sure: {facts}.", "Okay: {facts}.", "{facts}, yes."]
OPENING_FRAMES = ["Hi! {facts}.", "Hello, here's what I have: {facts}.", "Hi there. {facts}."]
ADD_FRAMES = ["Also, {facts}.", "And {facts}.", "Oh, and {facts}."]
HEDGE_FRAMES = ["I'm not sure about the {what} yet.", "Not sure about the {what} yet, to be honest.",
                "The {what} I haven't decided yet."]
RETRACT_FRAMES = ["Actually, I'm not sure about the {what} any more.", "Hmm, let me rethink the {what}."]
ACK_FRAMES = ["So far I have: {facts}.", "Got it: {facts}.", "Noted: {facts}."]
# a confirming turn's restatement goes before its closing sentence, not in front: the opening words are what
# tells a small model (and the node mapper) which step it is at ("For a trip to Rome: ..." taught a 135M model
# to open its options like a gathering turn and ask again for what it had just restated); three, not two: with
# two, a travel model compiled on the data left the dates out of its options in 12 of 20 conversations
MAX_RESTATED = 3
RESTATE_FRAMES = ["I've kept {facts} in mind.", "That takes into account {facts}.", "That's with {facts} in mind."]
CHANGE_FRAMES = ["No problem, {facts} instead.", "Of course, let's go with {facts} instead."]
READ_BACK = ["So that's {facts}. Is that all correct?", "Let me read that back: {facts}. Did I get everything?"]
KEEP_REST = ["Shall I keep everything else as it was?", "Should everything else stay as before?"]
SAME_REST = ["Yes, everything else stays the same.", "Yes, keep the rest as it was."]


# ----------------------------------------------------------------------------------------------
# what a flow says about its facts


@dataclass(frozen=True)
class FactSpec:
    """How the dialogue talks about one variable (the flow's fields, or defaults from the description)."""

    name: str
    ask: tuple[str, ...]
    state: tuple[str, ...]
    cues: tuple[str, ...]

    @property
    def what(self) -> str:
        """A short noun for the fact ("dates", "policy number"): its first cue."""
        return self.cues[0] if self.cues else self.name.replace("_", " ")


def fact_specs(flow: Flow) -> dict[str, FactSpec]:
    """One spec per variable of the flow."""
    return {name: _spec(name, var) for name, var in flow.variables.items()}


def gathered(flow: Flow) -> list[str]:
    """The facts the procedure collects from the customer: variables named in some node's `gathers`."""
    out: dict[str, None] = {}
    for n in flow.nodes:
        for v in n.gathers:
            if v in flow.variables:
                out.setdefault(v, None)
    return list(out)


def default_ask(name: str, description: str) -> str:
    """'Where the customer flies from.' -> 'Could you tell me where you fly from?'"""
    text = description.strip().rstrip(".").strip()
    if not text:
        return f"Could you tell me the {name.replace('_', ' ')}?"
    text = text[0].lower() + text[1:]
    text = re.sub(r"\bthe (customer|policyholder|caller|user)'s\b", "your", text)
    text = re.sub(r"\bthe (customer|policyholder|caller|user)\b", "you", text)
    text = re.sub(r"\byou (\w+?)ies\b", r"you \1y", text)
    text = re.sub(r"\byou (\w+?[^s])s\b", r"you \1", text)
    if not re.match(r"(where|when|what|which|who|how|whether|your|the|a|an)\b", text):
        text = "the " + text
    return f"Could you tell me {text}?"


def _spec(name: str, var: ChoiceVariable | RangeVariable | TextVariable) -> FactSpec:
    ask = tuple(var.ask) or (default_ask(name, var.description),)
    state = tuple(var.state) or (f"{name.replace('_', ' ')} {{{name}}}",)
    cues = tuple(c.lower() for c in var.cues) or _default_cues(name, ask)
    return FactSpec(name, ask, state, cues)


def _default_cues(name: str, ask: Sequence[str]) -> tuple[str, ...]:
    words = [name.replace("_", " ")]
    for q in ask:
        for w in re.findall(r"[a-z][a-z'-]{3,}", q.lower()):
            if w not in _STOP and w not in words:
                words.append(w)
    return tuple(words)


# ----------------------------------------------------------------------------------------------
# recognising facts in text


def questions(text: str) -> list[str]:
    """The question sentences of a message."""
    return [s.strip() for s in _SENTENCE.split(text or "") if s.strip().endswith("?")]


def asked_facts(text: str, specs: dict[str, FactSpec], among: Sequence[str] | None = None) -> list[str]:
    """Facts a message asks for: a question sentence that contains one of the fact's cues."""
    names = list(among) if among is not None else list(specs)
    qs = [q.lower() for q in questions(text)]
    return [n for n in names if n in specs and any(_has_cue(q, c) for q in qs for c in specs[n].cues)]


def stated_facts(text: str, values: dict[str, Any], among: Sequence[str]) -> list[str]:
    """Facts whose value the message mentions (whole words; longer values masked first)."""
    low = _norm(text)
    order = sorted((n for n in among if n in values and _norm(str(_plain(values[n])))),
                   key=lambda n: -len(str(values[n])))
    found: list[str] = []
    for n in order:
        value = _norm(str(_plain(values[n])))
        pattern = r"(?<![\w])" + re.escape(value) + r"(?![\w])"
        if re.search(pattern, low):
            found.append(n)
            low = re.sub(pattern, " \x00 ", low)
    return [n for n in among if n in found]


def _has_cue(sentence: str, cue: str) -> bool:
    return re.search(r"(?<![\w])" + re.escape(cue) + r"(?![\w])", sentence) is not None


def _plain(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _norm(text: str) -> str:
    return re.sub(r"(?<=\d),(?=\d{3})", "", str(text).lower()).strip()


# ----------------------------------------------------------------------------------------------
# the state


@dataclass
class DialogueState:
    """What has been said so far. `values` are the scenario's values with changes applied."""

    values: dict[str, Any]
    facts: list[str] = field(default_factory=list)  # the gathered facts, in flow order
    stated: list[str] = field(default_factory=list)  # facts the customer has stated (current values)
    confirmed: list[str] = field(default_factory=list)  # facts the assistant has restated
    fresh: list[str] = field(default_factory=list)  # stated or changed since the assistant last spoke
    asked: list[str] = field(default_factory=list)  # facts the assistant's latest turn asked for
    changed: dict[str, Any] = field(default_factory=dict)  # fact -> the value it replaced
    history: dict[str, list[Any]] = field(default_factory=dict)  # variable -> every value it had, in order
    just_changed: list[str] = field(default_factory=list)  # changed in the customer's latest turn
    customer_turns: int = 0
    offered_keep: bool = False  # the assistant asked whether everything else stays as it was

    def known(self, name: str) -> bool:
        return name in self.stated

    def missing(self, names: Sequence[str]) -> list[str]:
        return [n for n in names if n in self.facts and n not in self.stated]

    def stated_values(self) -> dict[str, Any]:
        """The facts the customer has stated so far, with their current values (for instructions)."""
        return {n: self.values[n] for n in self.facts if n in self.stated}

    def note_customer(self, said: Sequence[str], changed: Sequence[str] = (), retracted: Sequence[str] = ()) -> None:
        self.customer_turns += 1
        self.just_changed = [c for c in changed]
        for n in retracted:
            if n in self.stated:
                self.stated.remove(n)
            if n in self.confirmed:
                self.confirmed.remove(n)
        for n in [*said, *changed]:
            if n in self.facts and n not in self.stated:
                self.stated.append(n)
            if n in changed and n in self.confirmed:
                self.confirmed.remove(n)
            if n not in self.fresh:
                self.fresh.append(n)
        self.asked = []

    def note_assistant(self, asked: Sequence[str], restated: Sequence[str], offered_keep: bool = False) -> None:
        self.offered_keep = offered_keep
        for n in restated:
            if n in self.stated and n not in self.confirmed:
                self.confirmed.append(n)
        self.asked = [a for a in asked if a in self.facts]
        self.fresh = []
        self.just_changed = []

    def change(self, name: str, new: Any) -> None:
        if name not in self.changed:
            self.changed[name] = self.values.get(name)
        self.history.setdefault(name, [self.values.get(name)]).append(new)
        self.values[name] = new


def new_value(flow: Flow, name: str, current: Any, rng: random.Random) -> Any:
    """Another value of the variable than `current` (a change of plan); `current` when there is none.
    Numbers move up by one step (one more traveller, the next budget), other values are drawn."""
    from engine.scenario import sample_value

    var = flow.variables[name]
    numeric = isinstance(current, int | float) and not isinstance(current, bool)
    if isinstance(var, ChoiceVariable):
        if numeric:  # a number changes upwards (someone joins, the budget stretches): the next larger value
            larger = sorted(v for v in var.values if isinstance(v, int | float) and v > current)
            if larger:
                return larger[0]
        others = [v for v in var.values if v != current]
        return rng.choice(others) if others else current
    if isinstance(var, RangeVariable) and numeric:
        step = 1 if var.integer else round((var.max - var.min) / 10, 2)
        return current + step  # may pass `max`: the range is what scenarios start from, not a limit
    if isinstance(var, TextVariable):
        others = [v for v in var.pool if v != current]
        return rng.choice(others) if others else current
    for _ in range(20):
        v = sample_value(var, rng)
        if v != current:
            return v
    return current


# ----------------------------------------------------------------------------------------------
# writing turns


@dataclass
class Said:
    """A turn written against the state: the template (placeholders filled from `values` later) and
    what it does to the state."""

    template: str
    stated: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    retracted: list[str] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)
    restated: list[str] = field(default_factory=list)
    keep_rest: bool = False  # the assistant asked whether everything else stays as it was


def fact_phrase(spec: FactSpec, rng: random.Random | None = None, first: bool = False) -> str:
    """How a fact is said: one of its `state` templates (the first for the assistant's restatements)."""
    if first or rng is None:
        return spec.state[0]
    return rng.choice(spec.state)


def join_phrases(parts: Sequence[str]) -> str:
    parts = [p for p in parts if p]
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def customer_turn(
    flow: Flow,
    state: DialogueState,
    specs: dict[str, FactSpec],
    templates: Sequence[str],
    rng: random.Random,
    *,
    node: Node | None,
    next_agent: Node | None,
    loops: bool,
    persona: str = "somewhat specific",
    opening: bool = False,
    implied: Sequence[str] = (),
) -> Said:
    """The customer's turn: answer what was asked, state what the next step needs, keep back what the
    path still has to ask for, change a fact on a loop-back, never contradict what was said before.

    `implied`: facts the turn states through the branch it takes (its examples describe them), such
    as the kind of claim at a hub named after that variable."""
    facts = state.facts
    if not facts or node is None:
        t = _pick(templates, rng) if templates else ""
        return Said(t, stated=stated_by_template(t, facts))
    # a change of plan: a loop-back from a node that may change facts, with a template naming one
    if loops and node.changes:
        changeable = [c for c in node.changes if state.known(c)]
        options = [t for t in templates if set(placeholders(t)) & set(changeable)
                   and _unknown_in(t, state) <= set(changeable)]
        if options:
            t = _pick(options, rng)
            changed = [c for c in placeholders(t) if c in changeable][:1]
            for c in changed:
                state.change(c, new_value(flow, c, state.values[c], rng))
            return Said(t, changed=changed)
    needs = _needs(state, next_agent)
    reserve_pool = state.missing(next_agent.gathers) if next_agent is not None and next_agent.gathers else []
    if opening:
        share = PERSONA_SHARE.get(persona, 0.5)
        # the first fact (the flow's main one: a destination, a problem) comes first; the persona says how
        # many more the customer gives at once
        up_front = [f for f in facts if f in node.gathers] or list(facts)  # what this opening turn can state
        k = max(1, round(len(up_front) * share)) if share > 0 else 1
        chosen = up_front[:1] + rng.sample(up_front[1:], min(k, len(up_front)) - 1)
        want = (set(chosen) | needs) - set(implied)
    else:
        want = (set(state.missing(state.asked)) | needs) - set(implied)
        if state.offered_keep and not want and not state.missing(next_agent.gathers if next_agent else []) \
                and not (next_agent is not None and asks_only(next_agent, specs, facts)):
            return Said(rng.choice(SAME_REST), stated=list(implied))
    retract: list[str] = []
    keep_back: set[str] = set()
    # the branch leads to a turn that exists to ask (all its examples ask for facts): leave it something to ask
    if next_agent is not None and asks_only(next_agent, specs, facts) and not needs >= set(next_agent.gathers):
        left = [f for f in reserve_pool if f not in want]
        if not left:
            candidates = [f for f in reserve_pool if f not in needs]
            if candidates:
                # keep back a secondary fact (the opening's main one, a destination, stays)
                secondary = [f for f in candidates if f != facts[0]] or candidates
                keep = secondary[-1] if not opening else rng.choice(secondary)
                want.discard(keep)
                keep_back.add(keep)
            elif not reserve_pool:
                # nothing is left for the next gathering turn to ask: the customer reconsiders one fact
                known = [f for f in next_agent.gathers if state.known(f) and f not in needs]
                if known:
                    retract = [rng.choice(known)]
    chosen_t = _best_template(flow, templates, state, want, keep_back | set(retract), rng)
    covered = [p for p in placeholders(chosen_t) if p in facts] if chosen_t else []
    # a template that talks about a wanted fact without giving it ("still waiting for one document")
    # answers for it: the fact stays open and the assistant may ask again
    addressed = {f for f in want
                 if f not in covered and chosen_t and any(_has_cue(chosen_t.lower(), c) for c in specs[f].cues)}
    rest = [f for f in facts if f in want and f not in covered and f not in addressed]
    parts: list[str] = []
    answering = bool(state.asked) and not opening and bool(want)
    if chosen_t and not answering:
        parts.append(chosen_t)
    if rest:
        phrase = join_phrases([fact_phrase(specs[f], rng) for f in rest])
        frames = ADD_FRAMES if chosen_t and not answering else (OPENING_FRAMES if opening else ANSWER_FRAMES)
        parts.append(_cap(rng.choice(frames).format(facts=phrase)))
    if chosen_t and answering:
        parts.append(chosen_t)
    hedged = [f for f in state.asked if f in keep_back]
    for f in hedged:
        parts.append(rng.choice(HEDGE_FRAMES).format(what=specs[f].what))
    for f in retract:
        parts.append(rng.choice(RETRACT_FRAMES).format(what=specs[f].what))
    if not parts:
        parts.append(_pick(templates, rng) if templates else "Okay.")
    text = " ".join(parts)
    said = [f for f in facts if f in set(covered) | set(rest) | set(implied) or f in stated_by_template(text, facts)]
    return Said(text, stated=said, retracted=retract)


def assistant_turn(
    flow: Flow,
    state: DialogueState,
    specs: dict[str, FactSpec],
    templates: Sequence[str],
    rng: random.Random,
    *,
    node: Node | None,
    greeting: str = "",
    max_questions: int = 2,
) -> Said:
    """The assistant's turn: at a gathering node, acknowledge what was just said and ask only for what is
    missing (at most `max_questions` facts); elsewhere, a template that restates known facts and never
    asks for one already given; after a change of plan, restate the new value."""
    facts = state.facts
    if not facts or node is None:
        t = _pick(templates, rng) if templates else ""
        return Said((greeting + " " + t).strip() if greeting else t)
    missing = state.missing(node.gathers)
    known = {f for f in facts if state.known(f)}
    usable = [t for t in templates if {p for p in placeholders(t) if p in facts} <= known] or list(templates)
    usable = [t for t in usable if not contradicts(flow, t, state)] or usable
    no_reask = [t for t in usable if not set(asked_facts(render_template(t, {}), specs, facts)) & known]
    pool = no_reask or usable
    parts: list[str] = [greeting] if greeting else []
    asked: list[str] = []
    restated: list[str] = []
    if node.gathers:
        want = missing[:max_questions]
        # a template that asks exactly for what is missing; else one with no fact question (its content, the
        # troubleshooting steps say, stays) after our own question; else our own opener and question
        exact = [t for t in pool if asked_facts(t, specs, facts) and set(asked_facts(t, specs, facts)) == set(want)]
        plain = [t for t in pool if not asked_facts(t, specs, facts)]
        if state.just_changed:
            phrase = join_phrases([fact_phrase(specs[c], first=True) for c in state.just_changed])
            parts.append(_cap(rng.choice(CHANGE_FRAMES).format(facts=phrase)))
            restated += state.just_changed
        else:
            ack = [f for f in state.fresh if f in facts and f not in state.confirmed]
            if ack:
                phrase = join_phrases([fact_phrase(specs[f], first=True) for f in ack])
                if not (exact and not plain) or greeting:  # a greeting opens the turn already
                    parts.append(_cap(rng.choice(ACK_FRAMES).format(facts=phrase)))
                else:
                    opener = _opener(pool, specs, facts, rng)
                    parts += [opener, _cap(rng.choice(ACK_FRAMES).format(facts=phrase))]
                restated += ack
        keep = False
        if want and exact and not state.just_changed:
            t = _pick(exact, rng)
            parts.append(" ".join(questions(t)) if restated else t)
            asked = list(want)
        elif want:
            parts.append(_ask(specs, want, rng))
            asked = list(want)
            if plain and not state.just_changed:
                parts.append(_pick(plain, rng))
            elif not restated and not state.just_changed and not greeting:
                parts.insert(len(parts) - 1, _opener(pool, specs, facts, rng))
        elif state.just_changed:
            parts.append(rng.choice(KEEP_REST))
            keep = True
        elif plain or no_reask:
            parts.append(_pick(plain or no_reask, rng))
        else:  # everything is known and every example would ask again: read it back instead
            phrase = join_phrases([fact_phrase(specs[f], first=True) for f in node.gathers if state.known(f)])
            parts.append(_cap(rng.choice(READ_BACK).format(facts=phrase)))
            restated += [f for f in node.gathers if state.known(f)]
        text = " ".join(p for p in parts if p)
        return Said(text, asked=asked, restated=restated, keep_rest=keep)
    t = _pick(pool, rng) if pool else ""
    if state.just_changed and node.confirms:
        phrase = join_phrases([fact_phrase(specs[c], first=True) for c in state.just_changed])
        parts.append(_cap(rng.choice(CHANGE_FRAMES).format(facts=phrase)))
    elif node.confirms:
        # a confirming turn uses what the customer said: the facts it confirms that the customer stated, the
        # assistant has not yet restated and the template leaves out are restated in the turn (else the data
        # would teach a model to drop them: measured on travel, the budget went unused in 69% of conversations)
        unsaid = [f for f in node.confirms if state.known(f) and f not in state.confirmed and f not in placeholders(t)]
        # at most MAX_RESTATED, those fewest agent turns say first by their `confirms` or examples (a long list
        # of facts reads like a gathering turn, to the node mapper as to a model); on travel the budget is said
        # at the options only, the dates also at the booking, the destination there and in the handoff too
        unsaid = sorted(unsaid, key=lambda f: said_elsewhere(flow, f))[:MAX_RESTATED]
        if unsaid:
            phrase = join_phrases([fact_phrase(specs[f], first=True) for f in unsaid])
            t = before_last_sentence(t, _cap(rng.choice(RESTATE_FRAMES).format(facts=phrase)))
    parts.append(t)
    text = " ".join(p for p in parts if p)
    restated = [p for p in placeholders(text) if p in facts]
    return Said(text, asked=asked_facts(text, specs, facts), restated=restated)


def said_elsewhere(flow: Flow, fact: str) -> int:
    """How many agent nodes say `fact`: they confirm it or one of their examples names it."""
    return sum(n.role == "agent" and (fact in n.confirms or any(fact in placeholders(e) for e in n.examples))
               for n in flow.nodes)


def asks_only(node: Node, specs: dict[str, FactSpec], facts: Sequence[str]) -> bool:
    """A gathering node whose every example asks for facts (it exists to ask, like 'ask for missing details'),
    as opposed to one that asks on the side of its own content (troubleshooting steps)."""
    return bool(node.gathers) and bool(node.examples) and all(asked_facts(t, specs, facts) for t in node.examples)


def stated_by_template(template: str, facts: Sequence[str]) -> list[str]:
    return [p for p in placeholders(template) if p in facts]


def greeting_of(flow: Flow, rng: random.Random) -> str:
    """A greeting without a question, from the start node's examples (for a customer who spoke first)."""
    start = flow.node_map.get(flow.start)
    lines = []
    for t in (start.examples if start is not None else []):
        keep = [s for s in _SENTENCE.split(t) if s.strip() and not s.strip().endswith("?")]
        if keep and not placeholders(" ".join(keep)):
            lines.append(" ".join(keep).strip())
    if not lines:
        return "Hello!"
    line = rng.choice(lines)
    return line if line[-1] in ".!" else line + "."


# ----------------------------------------------------------------------------------------------
# helpers


def contradicts(flow: Flow, template: str, state: DialogueState) -> bool:
    """Whether a template names another value of a stated fact than the customer's (and not theirs too):
    macOS instructions for a Windows user."""
    low = _norm(template)
    for f in state.stated:
        current = _norm(str(_plain(state.values.get(f, ""))))
        if current and _word(low, current):
            continue
        if any(_word(low, v) for v in alternatives(flow, f, state.values.get(f))):
            return True
    return False


def variable_values(flow: Flow, name: str) -> list[str]:
    """The values a choice or text variable can take that are long enough to be recognised in text."""
    var = flow.variables.get(name)
    if isinstance(var, ChoiceVariable):
        vals = [str(v) for v in var.values]
    elif isinstance(var, TextVariable):
        vals = list(var.pool)
    else:
        return []
    return [v for v in vals if len(v) > 2 and not v.isdigit()]


def alternatives(flow: Flow, name: str, current: Any) -> list[str]:
    """The other values a choice or text variable can take (normalised), without `current`."""
    cur = _norm(str(current))
    return [_norm(v) for v in variable_values(flow, name) if _norm(v) != cur]


def _word(text: str, w: str) -> bool:
    return re.search(r"(?<![\w])" + re.escape(w) + r"(?![\w])", text) is not None


def _needs(state: DialogueState, next_agent: Node | None) -> set[str]:
    """Facts the next agent turn restates: they must be known once the customer has spoken."""
    if next_agent is None or not next_agent.confirms:
        return set()
    return set(state.missing(next_agent.confirms))


def _unknown_in(template: str, state: DialogueState) -> set[str]:
    return {p for p in placeholders(template) if p in state.facts and not state.known(p)}


def _best_template(flow: Flow, templates: Sequence[str], state: DialogueState, want: set[str], keep_back: set[str],
                   rng: random.Random) -> str:
    """The template that states only wanted facts (never one kept back), most of them, and repeats none."""
    scored = []
    for t in templates:
        ph = {p for p in placeholders(t) if p in state.facts}
        if contradicts(flow, t, state):
            continue
        if (ph - want) - {f for f in ph if state.known(f)}:
            continue  # it would state a fact the customer is not to give now
        if ph & keep_back:
            continue
        repeats = len({f for f in ph if state.known(f)} - want)
        scored.append((repeats, -len(ph & want), t))
    if not scored:
        return ""
    # fewest repeated old facts (same values: no contradiction, just wordier), then most wanted ones
    best = min((r, c) for r, c, _ in scored)
    options = [t for r, c, t in scored if (r, c) == best]
    return _pick(options, rng)


def _ask(specs: dict[str, FactSpec], names: Sequence[str], rng: random.Random) -> str:
    qs = [rng.choice(specs[n].ask).rstrip("?").rstrip() for n in names]
    if len(qs) == 1:
        return qs[0] + "?"
    second = qs[1][0].lower() + qs[1][1:] if qs[1][:2] != "I " else qs[1]
    return f"{qs[0]}, and {second}?"


def _opener(templates: Sequence[str], specs: dict[str, FactSpec], facts: Sequence[str], rng: random.Random) -> str:
    """A short non-question sentence from the node's examples ("Sounds wonderful!") to open with."""
    cues = [c for f in facts for c in specs[f].cues]
    found = []
    for t in templates:
        first = next((s.strip() for s in _SENTENCE.split(t) if s.strip()), "")
        if first and not first.endswith("?") and not placeholders(first) and len(first) < 60 \
                and not any(_has_cue(first.lower(), c) for c in cues):
            found.append(first)
    return rng.choice(found) if found else ""


def _pick(options: Sequence[str], rng: random.Random) -> str:
    return rng.choice(list(options)) if options else ""


def before_last_sentence(text: str, insert: str) -> str:
    """`insert` placed before the closing sentence of `text` (its question, its sign-off), or after a
    one-sentence text: what a turn opens with stays the node's own words."""
    cuts = [m.start() for m in _SENTENCE.finditer(text)]
    if not cuts:
        return f"{text} {insert}".strip()
    i = cuts[-1]
    return f"{text[:i].rstrip()} {insert} {text[i:].lstrip()}"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:] if text else text


def refresh_for_revisit(flow: Flow, state: DialogueState, node: Node, customer_said: Sequence[str],
                        rng: random.Random) -> list[str]:
    """Before an agent node speaks again (a loop-back: "other options"), give the details it offers anew:
    placeholders of its examples that are no fact, no persona trait and not named by the customer (a
    hotel the customer turned down is not offered twice). Returns the variables that changed."""
    from engine.scenario import PERSONA_VARIABLES, sample_value

    said = _norm(" ".join(customer_said))
    names = {p for t in node.examples for p in placeholders(t)}
    fresh = []
    for name in sorted(names):
        if name in state.facts or name in PERSONA_VARIABLES or name not in flow.variables:
            continue
        current = state.values.get(name)
        if current is not None and re.search(r"(?<![\w])" + re.escape(_norm(str(_plain(current)))) + r"(?![\w])", said):
            continue
        new = sample_value(flow.variables[name], rng)
        if new != current:
            state.change(name, new)
            fresh.append(name)
    return fresh
