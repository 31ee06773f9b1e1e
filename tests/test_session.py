"""The side-by-side chat session (engine/agents/session.py) and the model worker process
(engine/agents/worker.py): streaming per column, per-turn usage and cost, the node each reply maps to,
the simulated user, transcripts. Tiny random models keep it fast; the scripted backend is the API stand-in."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_llm import FakeLLMServer

from engine.agents.session import ColumnConfig, ColumnEvent, SideBySide, map_step
from engine.agents.worker import WorkerBackend, shutdown_workers
from engine.backends.base import ChatRequest, Message, Sampling
from engine.evaluate.conformance import NodeMapper, first_moves
from engine.registry import register_model
from engine.store import load_flow


@pytest.fixture(scope="module", autouse=True)
def _stop_workers():
    yield
    shutdown_workers()


@pytest.fixture
def travel(store):  # noqa: ANN001
    return load_flow("travel", store)


async def test_worker_streams_in_several_deltas_from_its_own_process(tiny_model_dir: Path) -> None:
    backend = WorkerBackend(str(tiny_model_dir))
    request = ChatRequest(system="be brief", messages=[Message(role="user", content="hello")],
                          sampling=Sampling(temperature=0.0, max_tokens=24))
    deltas, result = [], None
    async for event in backend.stream(request):
        if event.delta:
            deltas.append(event.delta)
        if event.result is not None:
            result = event.result
    assert result is not None and backend.loaded
    assert len(deltas) >= 3, deltas
    assert "".join(deltas).strip() == result.text
    assert result.usage.output_tokens > 0 and result.usage.input_tokens > 5
    assert backend.worker.proc is not None and backend.worker.proc.pid != __import__("os").getpid()


async def test_worker_names_a_model_it_cannot_load(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    backend = WorkerBackend(str(tmp_path))
    with pytest.raises(Exception) as e:
        await backend.complete(ChatRequest(messages=[Message(role="user", content="hi")]))
    assert "cannot load model" in str(e.value) or "exited" in str(e.value)


def test_map_step_names_the_node_and_checks_the_edge(travel) -> None:  # noqa: ANN001
    mapper = NodeMapper(travel)
    greet = travel.node("greet")
    step = map_step(travel, mapper, None, greet.examples[0] if greet.examples else greet.prompt)
    assert step.node == "greet" and step.on_edge is True and step.previous is None
    assert first_moves(travel, False) == {"greet"}
    terminal_ish = next(n for n in travel.nodes if n.role == "agent" and n.id != "greet"
                        and n.id not in first_moves(travel, True) and n.examples)
    jump = map_step(travel, mapper, None, terminal_ish.examples[0])
    assert jump.node == terminal_ish.id and jump.on_edge is False  # opening with it skips the procedure
    # the person typed first: the reply greets, then takes the step after the greeting, on an edge
    options = "Hi there, welcome to Wayfarer Travel! " + travel.node("present_options").examples[0]
    answered = map_step(travel, mapper, None, options, greeted=True)
    assert answered.node == "present_options" and answered.on_edge is True


async def test_side_by_side_greets_streams_prices_and_maps_each_column(travel, tiny_model_dir: Path,  # noqa: ANN001
                                                                       store, monkeypatch) -> None:  # noqa: ANN001
    register_model("tiny", tiny_model_dir, {"flow": "travel"}, store=store)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test")
    with FakeLLMServer(reply="Hello! Where would you like to travel?") as srv:
        chat = SideBySide.build(travel, [
            ColumnConfig(kind="compiled", model="tiny", max_tokens=16, temperature=0),
            ColumnConfig(kind="in-context", backend="local", model=str(tiny_model_dir), max_tokens=16, temperature=0),
            ColumnConfig(kind="in-context", backend="anthropic", model="claude-sonnet-4-5", base_url=srv.base_url),
        ])
        events: list[ColumnEvent] = []
        await chat.open(events.append)
        assert [len(c.messages) for c in chat.columns] == [1, 1, 1]
        await chat.send("I want to go to Lisbon", events.append)
    api = chat.column("in-context-2")
    assert api.hosting == "api" and api.messages[0].step is not None and api.messages[0].step.node == "greet"
    api_usage = api.messages[-1].usage
    assert api_usage is not None and api_usage.cost_usd > 0
    compiled = chat.column("compiled")
    assert compiled.agent.kind == "compiled" and compiled.agent.system_prompt == travel.system_prompt
    assert [m.role for m in compiled.messages] == ["assistant", "user", "assistant"]
    reply = compiled.messages[-1]
    assert reply.usage is not None and reply.usage.output_tokens > 0 and reply.usage.hosting == "self"
    assert reply.usage.ttft_s is not None and reply.usage.ttft_s <= reply.usage.latency_s
    assert reply.usage.cost_usd > 0 and reply.usage.api_equivalent_usd > reply.usage.cost_usd
    assert reply.step is not None
    deltas = [e for e in events if e.kind == "delta" and e.column == "compiled"]
    assert len(deltas) >= 4  # two replies streamed in pieces
    ctx = chat.column("in-context")
    assert ctx.tokens[0] > compiled.tokens[0]  # the whole procedure rides in its prompt
    ratio = chat.cost_ratio("in-context")
    assert ratio is not None and ratio > 60  # API prices vs self-hosted, with more tokens
    path = chat.save()
    assert path.is_file() and '"compiled"' in path.read_text()
    assert "customer: I want to go to Lisbon" in chat.transcript_text()
    chat.reset()
    assert all(not c.messages and not c.path for c in chat.columns)


async def test_simulated_user_plays_three_turns_in_every_column(travel, tiny_model_dir: Path) -> None:  # noqa: ANN001
    chat = SideBySide.build(travel, [
        ColumnConfig(kind="compiled", model=str(tiny_model_dir), max_tokens=8, temperature=0),
        ColumnConfig(kind="orchestrator", backend="local", model=str(tiny_model_dir), max_tokens=8, temperature=0),
    ])
    seed = next(s for s in range(50) if sum(travel.node(n).role == "user"
                                            for n in chat.sample_scenario(seed=s).path) >= 3)
    scenario = chat.sample_scenario(seed=seed)
    assert scenario.variables and scenario.path[0] == travel.start
    await chat.simulate(3)
    for c in chat.columns:
        by_sim = [m for m in c.messages if m.by == "simulator"]
        assert len(by_sim) == 3 or c.closed, (c.key, [m.content for m in c.messages])
        assert c.messages[0].role == "assistant"  # travel opens with the agent's greeting
    orch = chat.column("orchestrator")
    assert orch.messages[0].step is not None and orch.messages[0].step.reported == "greet"


async def test_a_first_reply_from_a_fresh_worker_says_it_is_loading(travel, tiny_model_dir: Path) -> None:  # noqa: ANN001
    shutdown_workers()
    chat = SideBySide.build(travel, [ColumnConfig(kind="compiled", model=str(tiny_model_dir), max_tokens=4)])
    events: list[ColumnEvent] = []
    await chat.open(events.append)
    statuses = [e for e in events if e.kind == "status"]
    assert statuses[0].status == "loading" and "first reply on CPU takes a while" in statuses[0].text
    assert [e.kind for e in events][-1] == "message"
