"""A small travel flow and real agents implementing the Agent protocol, for the evaluation tests.

`FlowWalkerAgent` follows the flowchart honestly: it keeps its node, reads the user's last message,
picks the hub branch whose examples/condition it resembles (MiniLM) and says an example of the next
agent node. `skip` makes it jump over one agent node; `RandomAgent` says random agent-node lines.
They are real agents (the protocol, usage, latency), usable as oracles for the metrics.
"""

from __future__ import annotations

import random
import time

from engine.agents.base import AgentReply
from engine.backends.base import Message, Usage
from engine.evaluate.conformance import get_embedder
from engine.flow import Flow, render_template

MINI_TRAVEL = {
    "name": "minitravel",
    "description": "A tiny travel booking procedure.",
    "start": "greet",
    "system_prompt": "You are a helpful travel booking assistant for Wanderly.",
    "variables": {
        "destination": {"kind": "choice", "values": ["Lisbon", "Kyoto", "Denver"]},
        "month": {"kind": "choice", "values": ["May", "June", "September"]},
        "budget": {"kind": "range", "min": 1000, "max": 5000},
        "challenge": {"kind": "choice", "values": ["none"]},
    },
    "nodes": [
        {"id": "greet", "role": "agent", "prompt": "Greet the customer and ask where they want to travel.",
         "examples": ["Hi, welcome to Wanderly! Where would you like to travel?",
                      "Hello and thanks for contacting Wanderly. Which destination do you have in mind?"]},
        {"id": "prefs", "role": "user", "prompt": "Say where, when and your budget.",
         "examples": ["I'd like to go to {destination} in {month}, with a budget of about {budget} dollars.",
                      "Thinking of {destination} for {month}. I can spend {budget} dollars."]},
        {"id": "present", "role": "agent", "prompt": "Present package options that fit the destination and budget.",
         "examples": ["I found three packages for {destination} in {month} within {budget} dollars: a hotel, "
                      "an apartment and a boutique inn. Which one appeals to you?",
                      "Here are the options for {destination} in {month} under {budget} dollars: a city hotel, "
                      "a serviced apartment or a small inn. Which do you prefer?"]},
        {"id": "react", "role": "user", "prompt": "React to the options.", "examples": ["Hmm, let me think."]},
        {"id": "choice", "role": "decision"},
        {"id": "confirm", "role": "agent", "prompt": "Confirm the booking and say the confirmation is sent.",
         "examples": ["Wonderful, your trip to {destination} is booked. The confirmation is on its way to your email.",
                      "All set: your {destination} booking is confirmed and the details are in your inbox."]},
        {"id": "done", "role": "terminal", "outcome": "success"},
        {"id": "farewell", "role": "agent", "prompt": "Accept the decision politely and say goodbye.",
         "examples": ["I understand. Thanks for considering Wanderly, and come back anytime.",
                      "No problem at all. Thank you for your time, and have a lovely day."]},
        {"id": "left", "role": "terminal", "outcome": "abandoned"},
        {"id": "cheaper", "role": "agent", "prompt": "Offer a cheaper alternative.",
         "examples": ["Let me find something more affordable. There is a cosy guesthouse in {destination} for much "
                      "less. Would that work for you?",
                      "I can offer a budget guesthouse in {destination} at a lower price. Shall we go with that?"]},
        {"id": "cheaper_reply", "role": "user", "prompt": "Answer about the cheaper option.",
         "examples": ["Okay."]},
        {"id": "choice2", "role": "decision"},
    ],
    "edges": [
        {"source": "greet", "target": "prefs"},
        {"source": "prefs", "target": "present"},
        {"source": "present", "target": "react"},
        {"source": "react", "target": "choice"},
        {"source": "choice", "target": "confirm", "when": "the customer accepts an option",
         "examples": ["The hotel sounds perfect, let's book it.", "Great, I'll take the apartment please."]},
        {"source": "choice", "target": "farewell", "when": "the customer declines and leaves",
         "examples": ["None of these work for me, I'll look elsewhere. Goodbye.",
                      "Thanks, but I'm not interested anymore."]},
        {"source": "choice", "target": "cheaper", "when": "the customer asks for something cheaper",
         "examples": ["Do you have anything cheaper?", "That's too expensive, any budget options?"]},
        {"source": "confirm", "target": "done"},
        {"source": "farewell", "target": "left"},
        {"source": "cheaper", "target": "cheaper_reply"},
        {"source": "cheaper_reply", "target": "choice2"},
        {"source": "choice2", "target": "confirm", "when": "the customer accepts the cheaper option",
         "examples": ["Yes, the guesthouse is fine, book it.", "That works, let's do it."]},
        {"source": "choice2", "target": "farewell", "when": "the customer still declines",
         "examples": ["No, I'll pass. Goodbye.", "Still not for me, thanks anyway."]},
    ],
}


def mini_flow() -> Flow:
    return Flow.model_validate(MINI_TRAVEL)


def say(flow: Flow, node: str, variables: dict | None = None, k: int = 0) -> str:
    n = flow.node(node)
    return render_template(n.examples[k % len(n.examples)], variables or {})


class _Session:
    def __init__(self, agent: FlowWalkerAgent):
        self.agent = agent
        self.node: str | None = None
        self.turn = 0
        self.skipped = False

    async def reply(self, history: list[Message]) -> AgentReply:
        t0 = time.perf_counter()
        flow = self.agent.flow
        last_user = next((m.content for m in reversed(history) if m.role == "user"), "")
        nxt = self._next(self.node, last_user)
        if self.agent.skip and not self.skipped and nxt == self.agent.skip:
            self.skipped = True  # jump over this node: say the one after it
            nxt = self._next(nxt, last_user)
        if nxt is None:
            return AgentReply(text="Goodbye.", done=True, latency_s=time.perf_counter() - t0)
        self.node = nxt
        self.turn += 1
        text = say(flow, nxt, self.agent.variables, self.turn)
        done = any(flow.node(e.target).role == "terminal" for e in flow.out_edges(nxt))
        prompt_tokens = sum(len(m.content.split()) for m in history) + 20
        return AgentReply(text=text, usage=Usage(input_tokens=prompt_tokens, output_tokens=len(text.split())),
                          latency_s=time.perf_counter() - t0, node_id=nxt, done=done)

    def stream(self, history):  # pragma: no cover - not used by the evaluator
        raise NotImplementedError

    def _next(self, node: str | None, user_text: str) -> str | None:
        flow = self.agent.flow
        cur: str | None = flow.start if node is None else self._step(node, user_text)
        while cur is not None:
            role = flow.node(cur).role
            if role == "agent":
                return cur
            if role == "terminal":
                return None
            cur = self._step(cur, user_text)
        return None

    def _step(self, node: str, user_text: str) -> str | None:
        edges = self.agent.flow.out_edges(node)
        if len(edges) <= 1:
            return edges[0].target if edges else None
        emb = get_embedder()  # a hub: take the branch the user's words resemble
        scores = []
        for e in edges:
            texts = [t for t in [e.when or "", *e.examples] if t]
            scores.append(float((emb.embed([user_text or "ok"]) @ emb.embed(texts).T).max()))
        return edges[scores.index(max(scores))].target


class FlowWalkerAgent:
    kind = "compiled"

    def __init__(self, flow: Flow, spec: str = "walker", variables: dict | None = None, skip: str | None = None):
        self.flow, self.spec, self.variables, self.skip = flow, spec, variables or {}, skip
        self.model = "flow-walker"

    def session(self) -> _Session:
        return _Session(self)

    async def aclose(self) -> None:
        return None


class _RandomSession:
    def __init__(self, agent: RandomAgent):
        self.agent = agent
        self.rng = random.Random(agent.seed)

    async def reply(self, history: list[Message]) -> AgentReply:
        nodes = [n for n in self.agent.flow.nodes if n.role == "agent"]
        node = self.rng.choice(nodes)
        text = render_template(self.rng.choice(node.examples), {})
        return AgentReply(text=text, usage=Usage(input_tokens=200 + 10 * len(history), output_tokens=30))

    def stream(self, history):  # pragma: no cover
        raise NotImplementedError


class RandomAgent:
    kind = "in-context"

    def __init__(self, flow: Flow, seed: int = 0):
        self.flow, self.seed = flow, seed
        self.spec, self.model = "random", "random"

    def session(self) -> _RandomSession:
        return _RandomSession(self)

    async def aclose(self) -> None:
        return None
