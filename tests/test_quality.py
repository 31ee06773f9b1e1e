"""The data-quality report of a dataset (issue 17): re-asked facts, contradictions, distinct utterances,
edge coverage; in `subterra datasets show` and as `engine.quality.dataset_quality` for the studio."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import cli
from engine.errors import GenerationError
from engine.formats import load_flow_file
from engine.generate import GenerateConfig, generate_dataset
from engine.quality import QualityReport, conversation_quality, dataset_quality, records_quality
from engine.store import Store

ROOT = Path(__file__).resolve().parent.parent
TRAVEL = load_flow_file(ROOT / "sample_flows" / "travel.yaml")
SCENARIO = {"destination": "Lisbon", "origin_city": "Chicago", "travel_dates": "June 12 to June 19", "budget": 3000,
            "travelers": 3}


def _msgs(*turns: str) -> list[dict[str, str]]:
    roles = ["assistant", "user"]
    return [{"role": "system", "content": "x"}] + [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)]


def test_a_fact_asked_again_after_it_was_stated_is_counted() -> None:
    msgs = _msgs("Hi! Where would you like to go?",
                 "Looking for flights and a hotel to Lisbon from Chicago.",
                 "Great. Which city will you be flying from?",  # asked again: origin was given
                 "Chicago, as I said.",
                 "And what dates are you looking at?")  # not given yet: fine
    q = conversation_quality(TRAVEL, msgs, SCENARIO)
    assert [(r.fact, r.message) for r in q.reasked] == [("origin_city", 3)]
    assert set(q.stated) == {"destination", "origin_city"}


def test_asking_again_after_the_customer_brought_it_up_is_fair() -> None:
    msgs = _msgs("Hi! What dates are you looking at?",
                 "June 12 to June 19.",
                 "Here are two options for June 12 to June 19. Which one?",
                 "Hmm, could we change the dates?",  # the customer reopens the dates
                 "Of course. What dates would suit you better?")
    assert conversation_quality(TRAVEL, msgs, SCENARIO).reasked == []


def test_contradictions_with_the_scenario() -> None:
    msgs = _msgs("Hi! Where would you like to go?", "I'd like to go to Rome.",  # the scenario says Lisbon
                 "Lovely, Lisbon it is.")
    q = conversation_quality(TRAVEL, msgs, SCENARIO)
    assert "customer:destination" in q.contradictions
    msgs = _msgs("Hi! Where would you like to go?", "Lisbon, please.", "Here is a great hotel in Kyoto.")
    assert conversation_quality(TRAVEL, msgs, SCENARIO).contradictions == ["assistant:destination"]
    # a change of plan recorded by the generator is no contradiction
    meta = {"changes": {"destination": ["Lisbon", "Rome"]}}
    msgs = _msgs("Hi! Where would you like to go?", "Lisbon, please.", "Here are options.",
                 "Could we look at Rome instead?", "No problem, Rome instead.")
    assert conversation_quality(TRAVEL, msgs, SCENARIO, meta).contradictions == []


def test_a_stated_fact_the_assistant_never_uses_is_counted() -> None:
    msgs = _msgs("Hi! Where would you like to go?",
                 "Lisbon, June 12 to June 19, 3 of us from Chicago, about $3,000.",
                 "Here are two hotels in Lisbon for June 12 to June 19, flights from Chicago included.",  # no budget,
                 "The first one.",                                                                     # no count
                 "Booked: Lisbon, June 12 to June 19.")
    q = conversation_quality(TRAVEL, msgs, SCENARIO)
    assert q.unused == ["budget", "travelers"]
    # the 3 of "June 3 to June 10" is not "3 travellers": the other facts' values are masked first
    msgs = _msgs("Hi!", "3 of us, to Lisbon.", "Lisbon, June 3 to June 10.")
    assert conversation_quality(TRAVEL, msgs, {**SCENARIO, "travel_dates": "June 3 to June 10"}).unused == ["travelers"]


def test_report_over_records_distinct_ratio_and_edge_coverage() -> None:
    recs = [{"messages": _msgs("Hi! Where would you like to go?", "Lisbon.", "Which city will you be flying from?"),
             "meta": {"scenario": SCENARIO, "path": ["greet", "describe_trip", "triage", "ask_details"]}},
            {"messages": _msgs("Hi! Where would you like to go?", "Lisbon from Chicago.",
                               "Which city will you be flying from?"),
             "meta": {"scenario": SCENARIO, "path": ["greet", "describe_trip"]}}]
    r = records_quality(TRAVEL, recs, "t")
    assert r.conversations == 2 and r.facts_stated == 3 and r.facts_reasked == 1
    assert r.reasked_share == 1 / 3 and r.conversations_with_reask == 0.5
    assert r.distinct_ratio == 4 / 6  # the two greetings and the two questions are the same
    assert r.edge_coverage == 3 / len(TRAVEL.edges) and "ask_details->give_details" in r.edges_missing
    assert r.customer_first_share == 0.0
    assert any("facts re-asked       1/3 stated (33.3%)" in line for line in r.lines())


def test_dataset_quality_of_a_generated_dataset(store: Store) -> None:
    generate_dataset(TRAVEL, GenerateConfig(n=60), store)
    report = dataset_quality(store, "travel")
    assert isinstance(report, QualityReport)
    assert report.conversations == 60 and report.facts_stated > 100
    assert report.facts_reasked == 0 and report.contradictions == 0
    # confirming turns use what the customer said (before: the budget went unused in 69% of conversations)
    assert report.unused_share is not None and report.unused_share <= 0.1, report.unused_by_fact
    assert report.edge_coverage == 1.0 and 0.1 < report.customer_first_share < 0.4
    result = CliRunner().invoke(cli, ["datasets", "show", "travel"])
    assert result.exit_code == 0, result.output
    assert "data quality" in result.output and "facts re-asked       0/" in result.output
    assert "facts unused         " in result.output
    assert "edge coverage        100.0%" in result.output


def test_unknown_dataset_is_a_clear_error(store: Store) -> None:
    # the console script turns a SubterraError into this one line (engine.cli.run)
    with pytest.raises(GenerationError, match="no dataset named 'nope'; datasets: none"):
        dataset_quality(store, "nope")
