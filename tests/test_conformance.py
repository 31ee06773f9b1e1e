"""Objective metrics on hand-made conversations that follow, skip and break the flow (real MiniLM)."""

from __future__ import annotations

import pytest
from eval_helpers import mini_flow, say

from engine.evaluate.conformance import (
    NodeMapper,
    agent_successors,
    conversation_metrics,
    edit_distance_to_flow,
    reads_english,
)

SCENARIO = {"destination": "Lisbon", "month": "May", "budget": 2500, "challenge": "none"}


@pytest.fixture(scope="module")
def flow():
    return mini_flow()


@pytest.fixture(scope="module")
def mapper(flow):
    return NodeMapper(flow)


def a(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def u(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def test_a_conversation_that_follows_the_flow(flow, mapper):
    msgs = [
        a(say(flow, "greet", SCENARIO)),
        u("I'd like to go to Lisbon in May, with a budget of about 2,500 dollars."),
        a(say(flow, "present", SCENARIO)),
        u("The hotel sounds perfect, let's book it."),
        a(say(flow, "confirm", SCENARIO)),
    ]
    m = conversation_metrics(flow, msgs, SCENARIO, "success", mapper)
    assert [x.node for x in m.mapping] == ["greet", "present", "confirm"]
    assert m.valid_edge_share == 1.0 and m.unmatched_share == 0.0
    assert m.terminal == "done" and m.outcome == "success" and m.outcome_match and m.success
    assert m.edit_distance == 0
    assert m.facts_given == ["budget", "destination", "month"]
    assert m.facts_dropped == [] and m.facts_wrong == []
    assert m.questions_per_turn == pytest.approx(2 / 3) and m.one_question_share == pytest.approx(2 / 3)
    assert m.repeated_questions == 0


def test_paraphrases_map_to_their_nodes(flow, mapper):
    said = [
        "Good morning, you've reached Wanderly travel. What destination are you dreaming of?",
        "For Lisbon in May I have a few packages under 2500 dollars: a central hotel or a flat. Which would you like?",
        "There's a less expensive guesthouse in Lisbon I could book instead. Interested?",
        "Done! Your Lisbon trip is booked and the confirmation email is on its way.",
        "No worries, thank you for thinking of Wanderly. Goodbye!",
    ]
    got = [x.node for x in mapper.map(said, SCENARIO)]
    assert got == ["greet", "present", "cheaper", "confirm", "farewell"]


def test_a_conversation_that_skips_a_node(flow, mapper):
    msgs = [
        a(say(flow, "greet", SCENARIO)),
        u("Lisbon in May, 2500 dollars."),
        a(say(flow, "confirm", SCENARIO)),  # booked without presenting any option
    ]
    m = conversation_metrics(flow, msgs, SCENARIO, "success", mapper)
    assert [x.node for x in m.mapping] == ["greet", "confirm"]
    assert m.valid_edge_share == 0.5  # greet is a valid start; confirm does not follow greet
    assert m.edit_distance == 1  # one insertion (present) makes it a valid walk
    assert m.terminal_reached and m.outcome_match  # it did end at the expected terminal


def test_a_conversation_that_breaks_the_flow(flow, mapper):
    msgs = [
        a(say(flow, "greet", SCENARIO)),
        u("I'd like to go to Lisbon in May, with a budget of about 2500 dollars."),
        a("The stock market closed higher today. Do you enjoy cooking pasta at home?"),
        u("What? I asked about a trip."),
        a("Hello again! Where would you like to go?"),  # the first question, asked again
        u("Lisbon!"),
        a("I found three packages for Kyoto in May within 2500 dollars. Which one appeals to you?"),
    ]
    m = conversation_metrics(flow, msgs, SCENARIO, "success", mapper)
    nodes = [x.node for x in m.mapping]
    assert nodes[0] == "greet" and nodes[1] is None and nodes[2] == "greet" and nodes[3] == "present"
    assert m.unmatched_share == 0.25
    assert m.valid_edge_share == pytest.approx(2 / 3)  # greet → greet is not an edge
    assert not m.terminal_reached and not m.success and m.outcome_match is None
    assert m.edit_distance == 3  # drop the off-topic line, drop the second greeting, insert an ending
    assert m.repeated_questions == 1
    assert m.facts_wrong == ["destination"]  # Kyoto, which the user never said
    assert "destination" in m.facts_dropped


def test_a_customer_who_speaks_first(flow, mapper):
    """The customer opens where the flow opens with the greeting: the first reply may greet and answer (greet)
    or go on to the next step (present), and is counted on step; a reply that jumps ahead is not."""
    opening = u("Hi, I want to go to Lisbon in May, budget 2500 dollars.")
    on_step = conversation_metrics(flow, [opening, a(say(flow, "present", SCENARIO))], SCENARIO, None, mapper)
    assert on_step.customer_opened and on_step.first_reply_on_step is True
    assert on_step.valid_edge_share == 1.0 and on_step.english_share == 1.0
    assert edit_distance_to_flow(flow, ["present"], customer_opened=True) == 1  # still needs an ending
    assert edit_distance_to_flow(flow, ["present"]) == 2  # the greeting is missing too
    ahead = conversation_metrics(flow, [opening, a(say(flow, "confirm", SCENARIO))], SCENARIO, None, mapper)
    assert ahead.first_reply_on_step is False and ahead.valid_edge_share == 0.0
    # the agent opening is not a customer opening: the first-reply figure does not apply, and a greeting-less
    # first move stays invalid
    agent_first = conversation_metrics(flow, [a(say(flow, "present", SCENARIO))], SCENARIO, None, mapper)
    assert not agent_first.customer_opened and agent_first.first_reply_on_step is None
    assert agent_first.valid_edge_share == 0.0


def test_a_first_reply_that_greets_then_takes_the_next_step(flow, mapper):
    """A reply to a customer who spoke first greets, acknowledges and then takes the step after the greeting in
    one message: it is mapped on that step, not on the greeting's words."""
    opening = u("Hi, I want to go to Lisbon in May, budget 2500 dollars.")
    reply = "Hello, welcome to Wanderly! Noted: Lisbon in May. " + say(flow, "present", SCENARIO)
    m = conversation_metrics(flow, [opening, a(reply)], SCENARIO, None, mapper)
    assert m.mapping[0].node == "present" and m.first_reply_on_step is True and m.valid_edge_share == 1.0
    step = say(flow, "present", SCENARIO)
    assert mapper.after_greeting(reply) == "Noted: Lisbon in May. " + step
    assert mapper.after_greeting(reply, acknowledgement=True) == step
    # a reply that is all greeting stays the greeting; an assistant who opened is mapped as before
    assert mapper.after_greeting("Hello, welcome to Wanderly!") is None
    assert mapper.map([say(flow, "greet", SCENARIO)], SCENARIO, greeted=True)[0].node == "greet"
    plain = mapper.map([reply], SCENARIO)[0]
    assert conversation_metrics(flow, [a(reply)], SCENARIO, None, mapper).mapping[0] == plain


@pytest.mark.parametrize("name", ["travel", "zoom", "insurance"])
def test_first_replies_to_a_customer_who_spoke_first_map_to_their_nodes(name, store):
    """Calibration guard for customer-first dialogues: the generator's first reply greets, acknowledges what the
    customer said and takes the next step; mapped with `greeted` it finds that step (measured on 100 dialogues:
    right 82% / 99% / 100%, wrong 3% / 0% / 0% on travel / zoom / insurance; plainly 62% / 99% / 0%, wrong
    13% / 0% / 100%: the greeting's words read as the greeting node)."""
    from engine.store import SAMPLE_FLOWS_DIR, load_flow

    if not (SAMPLE_FLOWS_DIR / f"{name}.yaml").is_file():
        pytest.skip(f"sample_flows/{name}.yaml is not in this checkout")
    from engine.generate import preview_dialogue

    flow = load_flow(name, store)
    mapper = NodeMapper(flow)
    firsts = []
    for seed in range(40):
        said = preview_dialogue(flow, seed=seed, customer_first=True)
        assert said[1]["role"] == "user"  # the customer opens (the system prompt is message 0)
        firsts.append(next(m for m in said if m["role"] == "assistant"))
    got = [mapper.map([m["content"]], greeted=True)[0].node for m in firsts]
    pairs = [(g, m["node"], m["content"]) for g, m in zip(got, firsts, strict=True) if g != m["node"]]
    assert sum(g == m["node"] for g, m in zip(got, firsts, strict=True)) >= 0.75 * len(firsts), pairs
    assert sum(g not in (None, m["node"]) for g, m in zip(got, firsts, strict=True)) <= 0.05 * len(firsts), pairs


@pytest.mark.parametrize("text,english", [
    ("Welcome! I'd love to help you plan your next trip. Where would you like to go?", True),
    ("Option A: Plaza Central, $223/night.", True),
    ("Lisbon, June 12", True),  # names and dates only: neutral
    ("Zinon de Juniors: 3000€ à Portugal, com a sua esposa em junho.", False),  # seen from an early compile
    ("Hola, ¿en qué puedo ayudarle con su viaje a Lisboa?", False),
    ("Ich kann Ihnen mit der Reise helfen.", False),
    ("Москва это хорошо", False),
])
def test_reads_english(text, english):
    assert reads_english(text) is english


def test_a_fact_asked_again_after_the_user_gave_it_is_counted():
    """The model-side twin of the data-quality re-ask check (seen from a compile: "Noted: 6 travellers.
    How many people are travelling?")."""
    from engine.formats import load_flow_file
    from engine.store import SAMPLE_FLOWS_DIR

    travel = load_flow_file(SAMPLE_FLOWS_DIR / "travel.yaml")
    scenario = {"destination": "Rome", "travelers": 6, "budget": 1500, "origin_city": "Toronto",
                "travel_dates": "the first week of October"}
    msgs = [a("Hi! Where would you like to go?"), u("Rome, 6 travellers, from Toronto."),
            a("Noted: a trip to Rome and 6 travellers. How many people are travelling?"),
            u("As I said, 6 of us."), a("And what total budget do you have in mind?")]
    m = conversation_metrics(travel, msgs, scenario, None, NodeMapper(travel))
    assert m.facts_reasked == ["travelers"]  # the budget had not been given: asking for it is fine


def test_english_share_counts_the_agent_messages(flow, mapper):
    msgs = [a(say(flow, "greet", SCENARIO)), u("Lisbon in May."), a("Claro, tengo dos opciones para usted en Lisboa.")]
    assert conversation_metrics(flow, msgs, SCENARIO, None, mapper).english_share == 0.5


def test_the_wrong_terminal_is_caught(flow, mapper):
    msgs = [
        a(say(flow, "greet", SCENARIO)), u("Lisbon in May, 2500 dollars."),
        a(say(flow, "present", SCENARIO)), u("Great, I'll take the apartment please."),
        a(say(flow, "farewell", SCENARIO)),
    ]
    m = conversation_metrics(flow, msgs, SCENARIO, "success", mapper)
    assert m.terminal == "left" and m.outcome == "abandoned"
    assert m.outcome_match is False and not m.success and m.valid_edge_share == 1.0


def test_edit_distance_to_flow(flow):
    assert edit_distance_to_flow(flow, ["greet", "present", "confirm"]) == 0
    assert edit_distance_to_flow(flow, ["greet", "present", "cheaper", "farewell"]) == 0
    assert edit_distance_to_flow(flow, []) == 3  # the shortest walk has three agent turns
    assert edit_distance_to_flow(flow, ["greet", "confirm"]) == 1
    assert edit_distance_to_flow(flow, [None, "greet", "present", "confirm"]) == 1
    assert edit_distance_to_flow(flow, ["confirm", "present", "greet"]) == 2
    assert edit_distance_to_flow(flow, ["greet", "present", "present", "present", "confirm"]) == 2


def test_agent_successors(flow):
    assert agent_successors(flow, "present") == ({"confirm", "farewell", "cheaper"}, set())
    assert agent_successors(flow, "confirm") == (set(), {"done"})


def test_threshold_leaves_unrelated_messages_unmatched(flow):
    strict = NodeMapper(flow, threshold=0.99)
    matches = strict.map(["Lovely weather for a picnic.", say(flow, "greet")])
    assert matches[0].node is None and matches[0].best  # the best guess is still reported
    assert matches[1].node == "greet" and matches[1].score > 0.99


@pytest.mark.parametrize("name", ["travel", "zoom", "insurance"])
def test_mapping_recovers_the_nodes_of_generated_dialogues(name, store):
    """Calibration guard: on the offline generator's dialogues (each message tagged with its node) the
    mapper finds the right node for nearly every agent message with the default threshold and margin."""
    from engine.store import SAMPLE_FLOWS_DIR, load_flow

    if not (SAMPLE_FLOWS_DIR / f"{name}.yaml").is_file():
        pytest.skip(f"sample_flows/{name}.yaml is not in this checkout")
    from engine.generate import preview_dialogue

    flow = load_flow(name, store)
    mapper = NodeMapper(flow)
    # 50 dialogues (100-400 agent messages): on 10 (30 messages) one unlucky message decided the test
    said = [m for seed in range(50) for m in preview_dialogue(flow, seed=seed)
            if m["role"] == "assistant" and m.get("node")]
    got = [x.node for x in mapper.map([m["content"] for m in said])]
    right = sum(g == m["node"] for g, m in zip(got, said, strict=True))
    wrong = sum(g not in (None, m["node"]) for g, m in zip(got, said, strict=True))
    # the listening generator also writes turns no node's examples hold (acknowledging a change of plan):
    # the mapper may be unsure of those, but it is almost never confidently wrong (measured on 50 dialogues:
    # right 91% / 100% / 94%, wrong 0.7% / 0% / 2.0% on travel / zoom / insurance)
    pairs = [(g, m["node"], m["content"]) for g, m in zip(got, said, strict=True) if g != m["node"]]
    assert right >= 0.85 * len(said), pairs
    assert wrong <= 0.03 * len(said), pairs


# right, most confidently wrong: measured on 60 dialogues per flow; before the sample flows had 5 examples per
# agent node and restatements were read past, the held-out mapper found 60% / 78% / 42% (insurance 24% wrong)
HELDOUT_CALIBRATION = {"travel": (0.63, 0.03), "zoom": (0.72, 0.03), "insurance": (0.55, 0.15)}


@pytest.mark.parametrize("name", ["travel", "zoom", "insurance"])
def test_the_heldout_mapper_finds_the_nodes_of_what_the_model_is_trained_to_say(name, store):
    """The fair evaluation's mapper knows only held-out examples (`engine.holdout`); the compiled model says what
    its training conversations say. The mapper must still find those turns' nodes, or the comparison measures
    the mapper (measured: right 67.6% / 79.1% / 62.7%, wrong 0.6% / 0% / 11.8% on travel / zoom / insurance)."""
    from engine.store import SAMPLE_FLOWS_DIR, load_flow

    if not (SAMPLE_FLOWS_DIR / f"{name}.yaml").is_file():
        pytest.skip(f"sample_flows/{name}.yaml is not in this checkout")
    from engine.generate import preview_dialogue
    from engine.holdout import heldout_view, training_view

    flow = load_flow(name, store)
    trained = training_view(flow)
    said = [m for seed in range(60) for m in preview_dialogue(trained, seed=seed)
            if m["role"] == "assistant" and m.get("node")]
    got = [x.node for x in NodeMapper(heldout_view(flow)).map([m["content"] for m in said])]
    right = sum(g == m["node"] for g, m in zip(got, said, strict=True))
    wrong = sum(g not in (None, m["node"]) for g, m in zip(got, said, strict=True))
    least_right, most_wrong = HELDOUT_CALIBRATION[name]
    pairs = [(g, m["node"], m["content"][:80]) for g, m in zip(got, said, strict=True) if g != m["node"]]
    assert right >= least_right * len(said), (right / len(said), pairs[:20])
    assert wrong <= most_wrong * len(said), (wrong / len(said), pairs[:20])
