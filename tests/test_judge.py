"""The judge: parsing, retries on malformed replies from a real local server, the cap, two judges."""

from __future__ import annotations

import json

import pytest
from fake_llm import FakeLLMServer

from engine.backends.base import Message, get_backend
from engine.errors import BackendResponseError
from engine.evaluate.judge import CRITERIA, Judge, Judgement, compare_judges, judge_prompt, parse_verdict

GOOD = {"task_success": 5, "information_accuracy": 4, "consistency": 4, "graceful_handling": 5,
        "naturalness": 3, "user_posed_challenge": False, "rationale": "Booked the trip."}
TRANSCRIPT = [
    Message(role="assistant", content="Hi, where would you like to travel?"),
    Message(role="user", content="Lisbon in May, about 2000 dollars."),
    Message(role="assistant", content="Your Lisbon trip in May is booked."),
]


def test_parse_verdict_accepts_fences_and_surrounding_text():
    v = parse_verdict("Sure! ```json\n" + json.dumps(GOOD) + "\n``` Hope that helps.")
    assert v.scores() == {c: GOOD[c] for c in CRITERIA}
    v = parse_verdict("Here: " + json.dumps({**GOOD, "naturalness": "4", "consistency": 2.0}) + " done")
    assert v.naturalness == 4 and v.consistency == 2


@pytest.mark.parametrize(("reply", "message"), [
    ("", "the reply was empty"),
    ("I think it was fine, 4/5.", "the reply contains no JSON object"),
    ('{"task_success": 5, "information_accuracy": ', "the JSON does not parse (Expecting value at character 44)"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "consistency"}), "consistency: Field required"),
    (json.dumps({**GOOD, "naturalness": 7}), "naturalness: Input should be less than or equal to 5"),
    (json.dumps({**GOOD, "naturalness": 3.5}),
     "naturalness: Input should be a valid integer, got a number with a fractional part"),
    (json.dumps({**GOOD, "verdict": "great"}), "verdict: Extra inputs are not permitted"),
])
def test_parse_verdict_names_the_problem(reply, message):
    with pytest.raises(BackendResponseError) as e:
        parse_verdict(reply)
    assert str(e.value) == message


def test_prompt_is_blind_and_carries_rubric_and_details():
    text = judge_prompt(TRANSCRIPT, {"destination": "Lisbon"})
    assert "Customer: Lisbon in May" in text and "Assistant: Hi, where" in text
    assert "- destination: Lisbon" in text and "give at most 3" in text
    for word in ("compiled", "in-context", "orchestrator", "smollm"):
        assert word not in text.lower()


async def test_judge_retries_malformed_replies_from_the_openai_server():
    replies = ["Great conversation!", json.dumps({**GOOD, "task_success": 9}), "```json\n" + json.dumps(GOOD) + "\n```"]
    with FakeLLMServer(reply=replies) as srv:
        backend = get_backend("openai", model="judge-model", base_url=srv.openai_base_url)
        try:
            j = await Judge(backend).judge(TRANSCRIPT, {"destination": "Lisbon"}, challenged=True)
        finally:
            await backend.aclose()
        assert len(srv.requests) == 3
        # the retry quotes what was wrong
        assert "task_success: Input should be less than or equal to 5" in srv.requests[2].last_user
    assert j.attempts == 3 and j.error is None
    assert j.scores == {c: GOOD[c] for c in CRITERIA} and not j.capped
    assert j.usage.input_tokens > 0


async def test_judge_caps_graceful_handling_without_a_challenge_via_anthropic(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    with FakeLLMServer(reply=json.dumps(GOOD)) as srv:
        backend = get_backend("anthropic", model="claude-judge", base_url=srv.base_url)
        try:
            judge = Judge(backend)
            no_challenge = await judge.judge(TRANSCRIPT, challenged=False)
            unknown = await judge.judge(TRANSCRIPT, challenged=None)  # the judge's own flag decides: False
            challenged = await judge.judge(TRANSCRIPT, challenged=True)
        finally:
            await backend.aclose()
    assert no_challenge.scores["graceful_handling"] == 3 and no_challenge.capped
    assert no_challenge.raw_scores["graceful_handling"] == 5
    assert unknown.scores["graceful_handling"] == 3
    assert challenged.scores["graceful_handling"] == 5 and not challenged.capped
    assert no_challenge.judge == "anthropic:claude-judge"


async def test_judge_gives_up_after_max_attempts_without_crashing():
    with FakeLLMServer(reply="no json here") as srv:
        backend = get_backend("openai", model="judge-model", base_url=srv.openai_base_url)
        try:
            j = await Judge(backend, max_attempts=2).judge(TRANSCRIPT)
        finally:
            await backend.aclose()
        assert len(srv.requests) == 2
    assert j.scores is None
    assert j.error == "no valid verdict after 2 attempts; last problem: the reply contains no JSON object"


def test_compare_judges():
    def jd(ts: int, nat: int) -> Judgement:
        scores = {c: 4 for c in CRITERIA} | {"task_success": ts, "naturalness": nat}
        return Judgement(judge="x", scores=scores, attempts=1)

    first = [jd(5, 4), jd(3, 4), jd(4, 2), jd(2, 5)]
    second = [jd(5, 3), jd(4, 4), jd(4, 2), jd(1, 1)]
    agree = {a.criterion: a for a in compare_judges(first, second)}
    ts = agree["task_success"]
    assert ts.n == 4 and ts.exact == 0.5 and ts.within_one == 1.0 and ts.mean_diff == pytest.approx(0.0)
    assert ts.spearman == pytest.approx(0.9486832980505138)
    assert agree["naturalness"].within_one == 0.75 and agree["naturalness"].mean_diff == pytest.approx(1.25)
    assert agree["consistency"].exact == 1.0 and agree["consistency"].spearman is None
