"""Simulated users: scenario coverage, the scripted user's recognition and steering, the LLM user."""

from __future__ import annotations

import pytest
from eval_helpers import FlowWalkerAgent, mini_flow, say
from fake_llm import FakeLLMServer

from engine.agents.base import AgentReply
from engine.backends.base import Message, get_backend
from engine.evaluate.conformance import NodeMapper
from engine.evaluate.run import run_conversation
from engine.evaluate.simulate import (
    END_MARK,
    LLMUser,
    Scenario,
    ScriptedUser,
    first_speaker,
    sample_scenarios,
)


@pytest.fixture(scope="module")
def flow():
    return mini_flow()


@pytest.fixture(scope="module")
def mapper(flow):
    return NodeMapper(flow)


def scenario(flow, path: list[str], outcome: str = "success") -> Scenario:
    return Scenario(index=0, seed=1, variables={"destination": "Kyoto", "month": "June", "budget": 3100,
                                                 "challenge": "none"},
                    persona={"user_style": "vague", "satisfaction": "skeptical", "challenge": "none"},
                    path=path, expected_outcome=outcome)


CHEAPER_PATH = ["greet", "prefs", "present", "react", "choice", "cheaper", "cheaper_reply", "choice2", "confirm",
                "done"]


def test_scenarios_cover_every_edge_and_are_reproducible(flow):
    scenarios = sample_scenarios(flow, 4, seed=7)
    covered = {(p, q) for s in scenarios for p, q in zip(s.path, s.path[1:], strict=False)}
    assert covered == {(e.source, e.target) for e in flow.edges}
    assert [s.index for s in scenarios] == [0, 1, 2, 3]
    assert {s.expected_outcome for s in scenarios} == {"success", "abandoned"}
    assert all(set(s.persona) == {"user_style", "satisfaction", "challenge"} for s in scenarios)
    assert all(s.persona["challenge"] == "none" and not s.challenged for s in scenarios)  # the flow pins it
    assert sample_scenarios(flow, 4, seed=7) == scenarios
    assert sample_scenarios(flow, 4, seed=8) != scenarios
    assert first_speaker(flow, scenarios[0].path) == "assistant"


async def test_scripted_user_answers_the_recognised_node_along_its_path(flow, mapper):
    user = ScriptedUser(flow, scenario(flow, CHEAPER_PATH), mapper)
    assert await user.opening() is None  # the agent opens this flow
    history = [Message(role="assistant", content="Hey there! Which place are you hoping to visit?")]
    first = await user.reply(history)
    assert "Kyoto" in first.text and "June" in first.text and "3100" in first.text
    history += [Message(role="user", content=first.text),
                Message(role="assistant", content="For Kyoto in June I have a hotel or an apartment. Which one?")]
    second = await user.reply(history)
    # the path asks for something cheaper next: the user says what makes that branch's condition true
    assert second.text in {e for edge in flow.out_edges("choice") if edge.target == "cheaper" for e in edge.examples}
    history += [Message(role="user", content=second.text), Message(role="assistant", content=say(flow, "cheaper", {}))]
    third = await user.reply(history)
    assert third.text in {"Yes, the guesthouse is fine, book it.", "That works, let's do it."}
    history += [Message(role="user", content=third.text), Message(role="assistant", content=say(flow, "confirm", {}))]
    assert (await user.reply(history)).text is None  # the path is done


async def test_scripted_user_steers_back_and_reanswers_repeats(flow, mapper):
    user = ScriptedUser(flow, scenario(flow, CHEAPER_PATH), mapper)
    greet = [Message(role="assistant", content=say(flow, "greet"))]
    first = (await user.reply(greet)).text
    # gibberish from the agent: the user gives what the path needs next instead of derailing
    odd = greet + [Message(role="user", content=first), Message(role="assistant", content="Bananas are yellow.")]
    steer = (await user.reply(odd)).text
    assert steer in {e for edge in flow.out_edges("choice") if edge.target == "cheaper" for e in edge.examples}
    # the agent asks its first question again: the user repeats its preferences
    again = odd + [Message(role="user", content=steer), Message(role="assistant", content=say(flow, "greet", k=1))]
    assert "Kyoto" in (await user.reply(again)).text


async def test_llm_user_never_sees_the_flowchart_and_ends_with_the_mark(flow):
    replies = ["I want to travel somewhere warm, maybe Kyoto.", END_MARK]
    with FakeLLMServer(reply=replies) as srv:
        backend = get_backend("openai", model="sim", base_url=srv.openai_base_url)
        user = LLMUser(flow, scenario(flow, CHEAPER_PATH, outcome="abandoned"), backend)
        try:
            t1 = await user.reply([Message(role="assistant", content="Hi! Where to?")])
            t2 = await user.reply([Message(role="assistant", content="Hi! Where to?"),
                                   Message(role="user", content=t1.text),
                                   Message(role="assistant", content="Kyoto it is.")])
        finally:
            await backend.aclose()
        req = srv.requests[0]
    assert t1.text == replies[0] and t1.usage.output_tokens > 0
    assert t2.text is None
    assert "destination: Kyoto" in req.system and "skeptical" in req.system and "not to go ahead" in req.system
    for node in flow.nodes:  # no node prompt, id or branch condition leaks into the simulator
        assert not node.prompt or node.prompt not in req.system
        assert f" {node.id} " not in req.system
    for edge in flow.edges:
        assert not edge.when or edge.when not in req.system
    # roles flipped: the agent's words arrive as the simulator's "user" turns
    assert req.messages[-1] == {"role": "user", "content": "Hi! Where to?"}


async def test_a_whole_scripted_conversation_and_an_agent_error(flow, mapper):
    s = scenario(flow, CHEAPER_PATH)
    rec = await run_conversation(FlowWalkerAgent(flow, variables=s.variables), "walker",
                                 ScriptedUser(flow, s, mapper), s, 0, max_turns=10)
    assert rec.ended_by == "agent_closed" and rec.error is None
    assert rec.reported_nodes == ["greet", "present", "cheaper", "confirm"]
    assert [m.role for m in rec.messages] == ["assistant", "user"] * 3 + ["assistant"]
    assert rec.agent_usage.input_tokens > 0 and rec.turns == 4

    class Broken:
        kind, model, spec = "compiled", "broken", "broken"

        def session(self):
            return self

        async def reply(self, history):
            if history:
                raise RuntimeError("model crashed")
            return AgentReply(text=say(flow, "greet"))

    rec = await run_conversation(Broken(), "broken", ScriptedUser(flow, s, mapper), s, 0, max_turns=10)
    assert rec.ended_by == "error" and rec.error == "RuntimeError: model crashed" and rec.turns == 1

    rec = await run_conversation(FlowWalkerAgent(flow), "walker", ScriptedUser(flow, s, mapper), s, 0, max_turns=2)
    assert rec.ended_by == "turn_limit" and rec.turns == 2
