"""Objective procedure-following metrics: no LLM judge, cheap enough to run on every recompile.

Every agent message is mapped to the flowchart node it enacts: the bundled all-MiniLM-L6-v2 model
embeds the message and each agent node's prompt and example utterances (rendered with the scenario's
values); the node with the highest cosine similarity wins if it clears a confidence threshold and beats the
runner-up by a margin, else the message is unmatched (None). From the mapped sequence of agent nodes:

- valid-edge share: of the mapped agent turns, how many follow a valid edge from the previous mapped
  agent node. User turns and decision hubs in between are free: the agent is judged on whether its
  next move is one the flowchart allows after *some* user reply and branch.
- terminal reached (the last agent message leads to a terminal through decision hubs only, or through
  one user turn when the user spoke last) and its outcome vs the scenario's expected one.
- edit distance from the nearest valid walk (start → terminal) over agent nodes: insertions (the agent
  skipped a node), deletions (an unmatched or extra message) and substitutions cost 1; computed exactly
  with a 0-1 BFS over (position in the conversation, flowchart node), so loops are handled.
- repeated questions (a question sentence ≥ 0.9 cosine to one asked in an earlier turn), questions per
  agent turn and the share of turns asking exactly one.
- scenario facts: the variables the procedure expects the agent to use (placeholders in agent nodes)
  that the user stated; dropped = never echoed by the agent afterwards; wrong = the agent stated
  another value of that choice variable that the user never said.
"""

from __future__ import annotations

import re
import threading
from collections import deque
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from engine.backends.base import Message
from engine.flow import Flow, placeholders, render_template
from engine.quality import conversation_quality

# Calibrated on the scripted generator's dialogues of the three sample flows (8 seeds each): every agent
# message's best node was right (108/108), the lowest best score was 0.52 and one margin was 0.02. An
# untrained SmolLM2's rambling scored 0.40-0.69 but with margins mostly under 0.03: ambiguity, not a match.
DEFAULT_THRESHOLD = 0.5
DEFAULT_MARGIN = 0.03
REPEAT_THRESHOLD = 0.9
# A sentence this close to one of the opening node's greeting sentences is the greeting a reply to a
# customer who spoke first opens with (the generator's greetings are those sentences, a compiled model's
# are near copies).
GREETING_SIMILARITY = 0.7
_START = "\x00start"  # virtual node before the flow's start node


# ----------------------------------------------------------------------------------------------
# embeddings


class Embedder:
    """all-MiniLM-L6-v2 via transformers: mean pooling over tokens, L2-normalised. Caches every text."""

    def __init__(self, model_dir: str | Path | None = None, max_cache: int = 50_000, threads: int | None = 1):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from engine.base_model import minilm_dir

        path = str(model_dir or minilm_dir())
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self._cache: dict[str, np.ndarray] = {}
        self._max_cache = max_cache
        self._lock = threading.Lock()  # one forward pass at a time; callers may be threads
        # MiniLM on batches of 1-64 sentences gains nothing from more threads, and on a busy machine
        # two spinning threads made a one-sentence pass 15x slower (1 s vs 70 ms): use one by default
        self.threads = threads

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 384) unit vectors."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            with self._lock:
                vectors = self._forward(missing)
            if len(self._cache) + len(missing) > self._max_cache:
                self._cache.clear()
            self._cache.update(zip(missing, vectors, strict=True))
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        return np.stack([self._cache[t] if t in self._cache else self._forward([t])[0] for t in texts])

    def clear_cache(self) -> None:
        self._cache.clear()

    def _forward(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            out = self._batches(texts)
        finally:
            torch.set_num_threads(before)
        return np.concatenate(out).astype(np.float32)

    def _batches(self, texts: list[str]) -> list[np.ndarray]:
        torch = self._torch
        out: list[np.ndarray] = []
        with torch.inference_mode():
            for i in range(0, len(texts), 64):
                batch = self.tokenizer(texts[i : i + 64], padding=True, truncation=True, max_length=256,
                                       return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state  # (B, T, H)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return out


@lru_cache(maxsize=2)
def get_embedder(model_dir: str | None = None) -> Embedder:
    """One embedder per process (loading MiniLM takes seconds)."""
    return Embedder(model_dir)


# ----------------------------------------------------------------------------------------------
# mapping messages to nodes


class NodeMatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    node: str | None = Field(description="The node the message enacts, None when below the threshold.")
    score: float = Field(description="Cosine similarity to the best node's closest text.")
    best: str = Field(description="The best-scoring node even when below the threshold.")
    runner_up: str | None = Field(None, description="The second-best node.")
    runner_up_score: float | None = Field(None, description="Its similarity.")


class NodeMapper:
    """Maps messages to the flow's nodes of one role (agent by default) by embedding similarity."""

    def __init__(self, flow: Flow, threshold: float = DEFAULT_THRESHOLD, role: str = "agent",
                 embedder: Embedder | None = None, render_scenario: bool = False, margin: float = DEFAULT_MARGIN):
        self.flow = flow
        self.threshold = threshold
        self.margin = margin
        # Node texts read placeholders as their names ("{destination}" → "destination") unless
        # render_scenario: then they are rendered with each scenario's values, a little closer to what an
        # agent says but a fresh set of embeddings per scenario (~10x the evaluator's cost on the travel flow)
        self.render_scenario = render_scenario
        self.nodes = [n for n in flow.nodes if n.role == role]
        self.embedder = embedder or get_embedder()

    def node_texts(self, variables: dict[str, Any] | None = None) -> tuple[list[str], list[int]]:
        """Each candidate text and the index of its node: the prompt and every example, rendered."""
        texts: list[str] = []
        owners: list[int] = []
        for i, node in enumerate(self.nodes):
            for template in [node.prompt, *node.examples]:
                if template.strip():
                    texts.append(_render(template, variables))
                    owners.append(i)
        return texts, owners

    def map(self, messages: Sequence[str], variables: dict[str, Any] | None = None,
            greeted: bool = False) -> list[NodeMatch]:
        """The node each message enacts. `greeted`: the customer spoke first, so the first message may open
        with the flow's greeting before its step; it is mapped on what follows the greeting, and on what
        follows the acknowledgement after it when that reads as a step other than the greeting."""
        matches = self._map(messages, variables)
        cut = self._greeting_cut(messages[0]) if greeted and messages else None
        if cut is not None:
            sentences, greeting, acknowledgement = cut
            matches[0] = self._map([" ".join(sentences[greeting:])], variables)[0]
            if greeting < acknowledgement < len(sentences):
                match = self._map([" ".join(sentences[acknowledgement:])], variables)[0]
                if match.node not in (None, self.flow.start):
                    matches[0] = match
        return matches

    def after_greeting(self, text: str, acknowledgement: bool = False) -> str | None:
        """What a reply says after its opening greeting, or None when it does not open with one.

        The greeting is the run of leading sentences that ask nothing and read as a greeting: they use a
        greeting's words or are close to a sentence of the opening node's examples. `acknowledgement`:
        drop as well the acknowledgement of what the customer said that may follow it ("Welcome to Harbor
        Mutual. I'll help you get your claim started. Noted: policy HM-1 and the auto claim. That sounds
        stressful. When did ...?" → "That sounds stressful. When did ...?"). A reply that is all greeting
        is left whole (None); so is one from a flow that does not open with the assistant."""
        cut = self._greeting_cut(text)
        if cut is None:
            return None
        sentences, greeting, after = cut
        k = after if acknowledgement else greeting
        return " ".join(sentences[k:]) if k < len(sentences) else None

    def _greeting_cut(self, text: str) -> tuple[list[str], int, int] | None:
        """The reply's sentences, where its greeting ends and where the acknowledgement after it ends; None
        when it does not open with a greeting followed by something else."""
        start = self.flow.node_map.get(self.flow.start)
        sentences = [s.strip() for s in _SENTENCE.split(text) if s.strip()]
        if start is None or start.role != "agent" or len(sentences) < 2:
            return None
        examples = [s.strip() for t in start.examples for s in _SENTENCE.split(t)
                    if s.strip() and not s.strip().endswith("?") and not placeholders(s)]
        close = np.zeros(len(sentences), dtype=bool)
        if examples:
            close = (self.embedder.embed(sentences) @ self.embedder.embed(examples).T).max(axis=1) \
                >= GREETING_SIMILARITY
        k = 0
        while k < len(sentences) and not sentences[k].endswith("?") and (
                close[k] or _GREETING.search(sentences[k])):
            k += 1
        if not 0 < k < len(sentences):
            return None
        after = k
        while after < len(sentences) and _ACKNOWLEDGEMENT.search(sentences[after]):
            after += 1
        return sentences, k, after

    def _map(self, messages: Sequence[str], variables: dict[str, Any] | None = None) -> list[NodeMatch]:
        if not messages or not self.nodes:
            return [NodeMatch(node=None, score=0.0, best="") for _ in messages]
        texts, owners = self.node_texts(variables if self.render_scenario else None)
        refs = self.embedder.embed(texts)
        sims = self.embedder.embed(list(messages)) @ refs.T  # (M, K)
        # a message that opens with a restatement is also read without it: the facts it echoes can read
        # as another step (policy number and claim type as the greeting), or name this one (AirPods: audio)
        steps = [_without_restatement(m) for m in messages]
        if any(st is not m for st, m in zip(steps, messages, strict=True)):
            sims = np.maximum(sims, self.embedder.embed(steps) @ refs.T)
        per_node = np.full((len(messages), len(self.nodes)), -1.0, dtype=np.float32)
        for k, owner in enumerate(owners):
            per_node[:, owner] = np.maximum(per_node[:, owner], sims[:, k])
        matches = []
        for row in per_node:
            order = np.argsort(-row)
            best, score = self.nodes[order[0]].id, float(row[order[0]])
            second = order[1] if len(order) > 1 else None
            gap = score - float(row[second]) if second is not None else score
            confident = score >= self.threshold and gap >= self.margin
            matches.append(NodeMatch(
                node=best if confident else None, score=round(score, 4), best=best,
                runner_up=self.nodes[second].id if second is not None else None,
                runner_up_score=round(float(row[second]), 4) if second is not None else None,
            ))
        return matches


# ----------------------------------------------------------------------------------------------
# metrics


class ConversationMetrics(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent_turns: int = Field(description="Agent messages in the conversation.")
    mapping: list[NodeMatch] = Field(description="Node each agent message was mapped to, in order.")
    unmatched_share: float | None = Field(description="Share of agent messages below the threshold.")
    valid_edge_share: float | None = Field(description="Share of mapped agent turns that follow a valid edge.")
    terminal_reached: bool = Field(description="The conversation ended at a terminal of the flow.")
    terminal: str | None = Field(description="Id of the terminal reached.")
    outcome: str | None = Field(description="Outcome of the terminal reached.")
    expected_outcome: str | None = Field(description="Outcome of the scenario's sampled path.")
    outcome_match: bool | None = Field(description="outcome == expected_outcome (None when nothing expected).")
    edit_distance: int = Field(description="Edits from the agent-node sequence to the nearest valid walk.")
    edit_distance_norm: float = Field(description="edit_distance ÷ max(agent turns, 1).")
    repeated_questions: int = Field(description="Questions asked again in a later turn.")
    questions_per_turn: float | None = Field(description="Question sentences per agent message.")
    one_question_share: float | None = Field(description="Share of agent messages with exactly one question.")
    facts_given: list[str] = Field(description="Scenario variables the user stated that the agent should use.")
    facts_dropped: list[str] = Field(description="Given facts the agent never used afterwards.")
    facts_wrong: list[str] = Field(description="Variables for which the agent stated a value the user never said.")
    facts_reasked: list[str] = Field(default_factory=list, description="Gathered facts the agent asked for again "
                                     "after the user had stated them (engine.quality's rule, on the agent's turns).")
    success: bool = Field(description="Objective success: terminal reached with the expected outcome.")
    english_share: float | None = Field(None, description="Share of agent messages that read as English.")
    customer_opened: bool = Field(False, description="The customer spoke first although the flow opens with "
                                  "the assistant (as a person does in a chat window).")
    first_reply_on_step: bool | None = Field(None, description="Customer opened: the agent's first reply enacts "
                                             "the flow's first step or the one after it (None otherwise).")


def conversation_metrics(
    flow: Flow,
    messages: Sequence[Message | dict[str, str]],
    variables: dict[str, Any] | None = None,
    expected_outcome: str | None = None,
    mapper: NodeMapper | None = None,
) -> ConversationMetrics:
    mapper = mapper or NodeMapper(flow)
    msgs = [m if isinstance(m, Message) else Message(**m) for m in messages]
    msgs = [m for m in msgs if m.role != "system"]
    agent_texts = [m.content for m in msgs if m.role == "assistant"]
    opened = bool(msgs) and msgs[0].role == "user" and _opens_with_agent(flow)
    mapping = mapper.map(agent_texts, variables, greeted=opened)
    seq = [m.node for m in mapping]
    mapped = [n for n in seq if n is not None]
    terminal = _terminal_reached(flow, msgs, seq, mapper, variables)
    outcome = _outcome(flow, terminal)
    questions = [_questions(t) for t in agent_texts]
    facts = _facts(flow, msgs, variables or {})
    dist = edit_distance_to_flow(flow, seq, opened)
    outcome_match = None if expected_outcome is None or terminal is None else outcome == expected_outcome
    return ConversationMetrics(
        agent_turns=len(agent_texts), mapping=mapping,
        unmatched_share=_share(sum(n is None for n in seq), len(seq)),
        valid_edge_share=_share(_valid_steps(flow, mapped, opened), len(mapped)),
        terminal_reached=terminal is not None, terminal=terminal, outcome=outcome,
        expected_outcome=expected_outcome, outcome_match=outcome_match,
        edit_distance=dist, edit_distance_norm=dist / max(len(seq), 1),
        repeated_questions=_repeated_questions(questions, mapper.embedder),
        questions_per_turn=float(np.mean([len(q) for q in questions])) if questions else None,
        one_question_share=_share(sum(len(q) == 1 for q in questions), len(questions)),
        facts_given=facts[0], facts_dropped=facts[1], facts_wrong=facts[2],
        facts_reasked=_reasked(flow, msgs, variables or {}),
        success=terminal is not None and outcome_match is not False,
        english_share=_share(sum(reads_english(t) for t in agent_texts), len(agent_texts)),
        customer_opened=opened,
        first_reply_on_step=(seq[0] in first_moves(flow, opened)) if opened and seq else None,
    )


def agent_successors(flow: Flow, node: str) -> tuple[set[str], set[str]]:
    """Agent nodes and terminals reachable from `node` through user turns and decision hubs only."""
    agents: set[str] = set()
    terminals: set[str] = set()
    frontier = [flow.start] if node == _START else [e.target for e in flow.out_edges(node)]
    seen: set[str] = set()
    while frontier:
        cur = frontier.pop()
        if cur in seen or cur not in flow.node_map:
            continue
        seen.add(cur)
        role = flow.node(cur).role
        if role == "agent":
            agents.add(cur)
        elif role == "terminal":
            terminals.add(cur)
        else:
            frontier.extend(e.target for e in flow.out_edges(cur))
    return agents, terminals


def edit_distance_to_flow(flow: Flow, seq: Sequence[str | None], customer_opened: bool = False) -> int:
    """Fewest edits turning the agent-node sequence into the agent nodes of a start→terminal walk.

    0-1 BFS over states (i, v): i messages consumed, standing at node v. Entering a non-agent node is
    free; entering agent node w either consumes message i (free if it is w, 1 if not) or skips w (1);
    dropping message i costs 1. The goal is (len(seq), any terminal). When the customer opened the
    conversation, skipping the flow's opening agent turn (the greeting it answered) is free.
    """
    n = len(seq)
    dist: dict[tuple[int, str], int] = {(0, _START): 0}
    queue: deque[tuple[int, str]] = deque([(0, _START)])
    best: int | None = None
    while queue:
        i, v = queue.popleft()
        d = dist[(i, v)]
        if best is not None and d >= best:
            continue
        if i == n and v != _START and flow.node(v).role == "terminal":
            best = d
            continue
        targets = [flow.start] if v == _START else [e.target for e in flow.out_edges(v)]
        moves: list[tuple[int, str, int]] = []
        if i < n:
            moves.append((i + 1, v, 1))  # drop message i
        for w in targets:
            if w not in flow.node_map:
                continue
            if flow.node(w).role != "agent":
                moves.append((i, w, 0))
            else:
                skip = 0 if customer_opened and v == _START else 1  # a customer who opened skipped the greeting
                moves.append((i, w, skip))  # the walk visits w, the conversation skipped it
                if i < n:
                    moves.append((i + 1, w, 0 if seq[i] == w else 1))
        for j, w, cost in moves:
            nd = d + cost
            if nd < dist.get((j, w), 1 << 30):
                dist[(j, w)] = nd
                (queue.appendleft if cost == 0 else queue.append)((j, w))
    return best if best is not None else n


# ----------------------------------------------------------------------------------------------
# helpers


def _render(template: str, variables: dict[str, Any] | None) -> str:
    # without a scenario, a placeholder reads as its name ("{travel_dates}" → "travel dates")
    humanized = {name: name.replace("_", " ") for name in placeholders(template)}
    return render_template(template, {**humanized, **(variables or {})})


def _share(k: int, n: int) -> float | None:
    return k / n if n else None


def _valid_steps(flow: Flow, mapped: list[str], customer_opened: bool = False) -> int:
    prev, valid = _START, 0
    for node in mapped:
        allowed = first_moves(flow, customer_opened) if prev == _START else agent_successors(flow, prev)[0]
        if node in allowed:
            valid += 1
        prev = node
    return valid


def _opens_with_agent(flow: Flow) -> bool:
    return flow.start in flow.node_map and flow.node(flow.start).role == "agent"


def first_moves(flow: Flow, customer_opened: bool) -> set[str]:
    """Agent nodes a conversation may start with. When the customer spoke first where the flow opens with
    the assistant, the first reply may be that opening (greeting and answering) or the step after it, the
    customer's message having taken the place of the first customer turn."""
    first = agent_successors(flow, _START)[0]
    if not customer_opened:
        return first
    return first.union(*(agent_successors(flow, a)[0] for a in first))


def _terminal_reached(flow: Flow, msgs: list[Message], seq: list[str | None], mapper: NodeMapper,
                      variables: dict[str, Any] | None) -> str | None:
    last = next((n for n in reversed(seq) if n is not None), None)
    if last is None:
        return None
    # terminals right after the last agent node (through hubs), or after one user turn if the user spoke last
    terminals = _terminals_via(flow, last, through_user=bool(msgs) and msgs[-1].role == "user")
    if len(terminals) <= 1:
        return next(iter(terminals), None)
    # several: pick the one whose branch condition reads most like how the conversation ended
    tail = " ".join(m.content for m in msgs[-2:])
    names = sorted(terminals)
    descriptions = [_terminal_text(flow, t, variables) for t in names]
    sims = mapper.embedder.embed([tail]) @ mapper.embedder.embed(descriptions).T
    return names[int(np.argmax(sims[0]))]


def _terminals_via(flow: Flow, node: str, through_user: bool) -> set[str]:
    found: set[str] = set()
    frontier = [(e.target, through_user) for e in flow.out_edges(node)]
    seen: set[tuple[str, bool]] = set()
    while frontier:
        cur, user_ok = frontier.pop()
        if (cur, user_ok) in seen or cur not in flow.node_map:
            continue
        seen.add((cur, user_ok))
        role = flow.node(cur).role
        if role == "terminal":
            found.add(cur)
        elif role == "decision" or (role == "user" and user_ok):
            frontier.extend((e.target, user_ok and role != "user") for e in flow.out_edges(cur))
    return found


def _terminal_text(flow: Flow, terminal: str, variables: dict[str, Any] | None) -> str:
    node = flow.node(terminal)
    parts = [node.display, node.outcome or ""]
    for e in flow.in_edges(terminal):
        parts += [e.when or "", *(_render(x, variables) for x in e.examples)]
    return " ".join(p for p in parts if p)


def _outcome(flow: Flow, terminal: str | None) -> str | None:
    if terminal is None:
        return None
    node = flow.node(terminal)
    return node.outcome or node.id


# Function words: a small model drifting out of English ("Zinon de Juniors: 3000€ à Portugal") shows in
# them before anything else. English ones against those of the languages SmolLM2 drifts into.
_EN_WORDS = frozenset("""
the a an and or but if so to of in on at for from with by about as into than then that this these those there
here is are was were be been being am do does did have has had will would can could shall should may might must
i you he she it we they me him her us them my your his its our their mine yours what which who whom whose when
where why how not no yes all any some each every more most other such only own same very just also too please
let get got go going see find book booked help like want need i'm i'll you'll we'll it's that's okay
""".split())
_FOREIGN_WORDS = frozenset("""
de la el los las del y en por para con una uno es está son muy pero como más su sus al lo le les des du et est
une un ce cette pour avec dans sur qui pas vous nous je tu il elle ils não um uma com para os as do da dos das
em no na nos nas é são ao pelo pela und der die das ist nicht ein eine mit für auf ich sie wir zu von den dem
""".split())


def reads_english(text: str) -> bool:
    """Whether a message reads as English: its function words are English ones, and few letters are outside
    Latin-1 (a script SmolLM2 drifts into). Empty or wordless messages count as English."""
    words = re.findall(r"[^\W\d_]+(?:'[a-z]+)?", text.lower())
    if not words:
        return True
    letters = [c for c in text if c.isalpha()]
    if sum(ord(c) > 0x24F for c in letters) > 0.1 * len(letters):
        return False
    en = sum(w in _EN_WORDS for w in words)
    foreign = sum(w in _FOREIGN_WORDS and w not in _EN_WORDS for w in words)
    if foreign and foreign >= en:
        return False
    return en >= 0.15 * len(words) or len(words) < 6  # a short line of names and dates is neutral


_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
# the words a greeting is made of, in the sentences an assistant opens with
_GREETING = re.compile(
    r"^(hi|hello|hey|welcome|good (morning|afternoon|evening))\b|\bwelcome to\b|\byou've reached\b|"
    r"\bthanks? (you )?for (reaching out|contacting|getting in touch|calling)\b|"
    r"\b(i'm|i am)\b.{0,60}\b(assistant|agent)\b|\b(i'd|i would) love to help\b|"
    r"\b(i'll|i will|i can|happy to|glad to) help you\b", re.IGNORECASE)
_ACKNOWLEDGEMENT = re.compile(r"^(so far i have|got it|noted|understood|thanks|thank you|great|okay|ok)\b[^?]*[.!]$",
                              re.IGNORECASE)


# the frames a turn restates what the customer said in ("Noted: policy HM-1 and the auto claim."): any node
# may open with one (engine.dialogue_state.ACK_FRAMES), so they say nothing about which step the turn takes
_RESTATEMENT = re.compile(r"^(so far i have|got it|noted|to recap|just to confirm)\s*:", re.IGNORECASE)


def _without_restatement(text: str) -> str:
    """The message without the restatements it opens with, when something follows them."""
    sentences = [s.strip() for s in _SENTENCE.split(text) if s.strip()]
    k = 0
    while k < len(sentences) - 1 and _RESTATEMENT.match(sentences[k]):
        k += 1
    return " ".join(sentences[k:]) if k else text


def _questions(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s.strip().endswith("?")]


def _repeated_questions(questions: list[list[str]], embedder: Embedder) -> int:
    flat = [(turn, q) for turn, qs in enumerate(questions) for q in qs]
    if len(flat) < 2:
        return 0
    vecs = embedder.embed([q for _, q in flat])
    sims = vecs @ vecs.T
    repeated = 0
    for j, (turn_j, _) in enumerate(flat):
        if any(sims[j, i] >= REPEAT_THRESHOLD for i, (turn_i, _) in enumerate(flat[:j]) if turn_i < turn_j):
            repeated += 1
    return repeated


def _facts(flow: Flow, msgs: list[Message], variables: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    expected = {p for n in flow.nodes if n.role == "agent" for t in [n.prompt, *n.examples] for p in placeholders(t)}
    given: list[str] = []
    dropped: list[str] = []
    wrong: list[str] = []
    users = [(i, _norm(m.content)) for i, m in enumerate(msgs) if m.role == "user"]
    agents = [(i, _norm(m.content)) for i, m in enumerate(msgs) if m.role == "assistant"]
    for name in sorted(expected & set(variables)):
        value = _norm(str(_plain(variables[name])))
        if not value:
            continue
        first = next((i for i, text in users if _mentions(text, value)), None)
        if first is None:
            continue
        given.append(name)
        if not any(_mentions(text, value) for i, text in agents if i > first):
            dropped.append(name)
        spec = flow.variables.get(name)
        others = [_norm(str(v)) for v in getattr(spec, "values", []) if _norm(str(v)) != value]
        others = [o for o in others if len(o) > 2 and not o.isdigit()]
        if any(_mentions(text, o) and not any(_mentions(u, o) for _, u in users) for o in others for _, text in agents):
            wrong.append(name)
    return given, dropped, wrong


def _reasked(flow: Flow, msgs: list[Message], variables: dict[str, Any]) -> list[str]:
    """The data-quality report's re-ask check, applied to an evaluated conversation."""
    msgs_d = [{"role": m.role, "content": m.content} for m in msgs]
    return [r.fact for r in conversation_quality(flow, msgs_d, variables).reasked]


def _plain(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _norm(text: str) -> str:
    # "$2,500" and "2500" are the same fact
    return re.sub(r"(?<=\d),(?=\d{3})", "", text.lower()).strip()


def _mentions(text: str, value: str) -> bool:
    return re.search(r"(?<![\w])" + re.escape(value) + r"(?![\w])", text) is not None
