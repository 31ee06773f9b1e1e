"""The four agents against real backends: the fake OpenAI-compatible server on 127.0.0.1 (driven by the
`openai` backend through the official SDK) and a tiny real transformers model for the compiled agent."""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import pytest
from fake_llm import FakeLLMServer, LoggedRequest

from engine.agents import load_agent, parse_spec
from engine.agents.compiled import CompiledAgent
from engine.agents.in_context import InContextAgent
from engine.agents.orchestrator import (
    ROUTER_SYSTEM,
    OrchestratorAgent,
    fallback_choice,
    option_text,
    parse_choice,
)
from engine.backends.base import Message, Sampling, get_backend
from engine.errors import ContextLengthError, ServingError
from engine.flow import Flow, render_template
from engine.formats import load_flow_file
from engine.paths import sample_paths
from engine.scenario import sample_scenario
from engine.serialize import serialize_flow
from engine.store import SAMPLE_FLOWS_DIR

FLOWS = ("travel", "zoom")


@pytest.fixture(scope="module", params=FLOWS)
def flow(request: pytest.FixtureRequest) -> Flow:
    return load_flow_file(SAMPLE_FLOWS_DIR / f"{request.param}.yaml")


# -- serialization ---------------------------------------------------------------------------------
def test_serialization_is_stable_and_complete(flow: Flow) -> None:
    text = serialize_flow(flow)
    assert serialize_flow(load_flow_file(SAMPLE_FLOWS_DIR / f"{flow.name}.yaml")) == text  # a fresh load
    assert serialize_flow(flow.copy_deep()) == text
    for node in flow.nodes:
        assert f"[{node.id}]" in text, node.id
        if node.prompt:
            assert " ".join(node.prompt.split()) in text, node.id
    for edge in flow.edges:
        if edge.when:
            assert f"-> [{edge.target}]" in text and " ".join(edge.when.split()) in text, edge.id
    for t in flow.terminals:
        assert f"[{t.id}] ends the conversation: {t.outcome}" in text
    assert text.startswith(flow.system_prompt)
    assert f"Start at step [{flow.start}]" in text


def test_serialization_changes_with_the_flow(flow: Flow) -> None:
    edited = flow.copy_deep()
    edited.edges[0].when = "the customer mentions a purple elephant"
    assert "purple elephant" in serialize_flow(edited)
    assert serialize_flow(edited) != serialize_flow(flow)


# -- spec parsing ------------------------------------------------------------------------------------
def test_parse_spec() -> None:
    assert parse_spec("compiled:/models/travel") == ("compiled", "/models/travel", None, None)
    assert parse_spec("in-context:travel") == ("in-context", "travel", "local", None)
    assert parse_spec("in-context:travel@anthropic:claude-sonnet-4-5") == (
        "in-context", "travel", "anthropic", "claude-sonnet-4-5")
    assert parse_spec("orchestrator:travel@3@openai:gpt-4o") == ("orchestrator", "travel@3", "openai", "gpt-4o")
    assert parse_spec("surface:flows/t.yaml@local:/m/base") == ("orchestrator", "flows/t.yaml", "local", "/m/base")


def test_bad_spec_says_what_to_write() -> None:
    with pytest.raises(ServingError, match=r"cannot read agent 'travel'; write compiled:DIR, in-context:FLOW"):
        load_agent("travel")
    with pytest.raises(ServingError, match="no model directory at"):
        load_agent("compiled:/nonexistent/model")


# -- classifier parsing ------------------------------------------------------------------------------
def test_parse_choice_is_lenient() -> None:
    opts = ["the customer accepts", "the customer wants alternatives", "the customer gives up"]
    assert parse_choice("2", opts) == 1
    assert parse_choice(" 3.\n", opts) == 2
    assert parse_choice("Option 1 because they said yes", opts) == 0
    assert parse_choice("The customer wants alternatives.", opts) == 1
    assert parse_choice("7", opts) is None
    assert parse_choice("no idea", opts) is None


def test_fallback_is_deterministic_and_uses_the_users_words(flow: Flow) -> None:
    """Without a usable classifier answer, the customer's words decide, matched against each branch's
    condition and its example utterances: every hub example routes to its own branch."""
    checked = 0
    for hub in (n for n in flow.nodes if n.role == "decision"):
        edges = flow.out_edges(hub.id)
        options = [option_text(e, flow) for e in edges]
        for i, e in enumerate(edges):
            for ex in e.examples:
                said = [Message(role="user", content=render_template(ex, {}))]
                assert fallback_choice(edges, options, said) == i, (hub.id, ex)
                checked += 1
        nothing = fallback_choice(edges, options, [])  # no words at all: weight, then declaration order
        weights = [e.weight if e.weight is not None else 1.0 for e in edges]
        assert nothing == weights.index(max(weights))
    assert checked > 10


# -- a scripted user and an oracle router --------------------------------------------------------------
def _user_line(flow: Flow, path: list[str], i: int, values: dict) -> str:
    """What the scripted user says at path[i]: the example of the branch taken after it, else the node's."""
    node = flow.node(path[i])
    if i + 2 < len(path) and flow.node(path[i + 1]).role == "decision":
        edge = flow.edge_between(path[i + 1], path[i + 2])
        if edge and edge.examples:
            return render_template(edge.examples[0], values)
    return render_template(node.examples[0] if node.examples else node.label, values)


def _oracle(flow: Flow, path: list[str]):
    """A router that answers with the option on `path`, and an agent that says which node it enacts."""
    on_path = set(zip(path, path[1:], strict=False))

    def reply(req: LoggedRequest) -> str:
        if req.system == ROUTER_SYSTEM:
            prompt = req.last_user
            step = re.search(r"^Step: (.+)$", prompt, re.M).group(1)
            at = [n.id for n in flow.nodes if (n.label or n.id) == step]
            options = re.findall(r"^(\d+)\. (.+)$", prompt, re.M)
            for num, text in options:
                for e in flow.edges:
                    if e.source in at and option_text(e, flow) == text and (e.source, e.target) in on_path:
                        return num
            return "?"
        return "agent says: " + req.system.split("Your task for this message: ")[-1][:40]

    return reply


async def _drive(agent, flow: Flow, path: list[str], values: dict) -> tuple[object, list]:
    session = agent.session()
    history: list[Message] = []
    replies = []
    if flow.node(flow.start).role == "agent":
        r = await session.reply(history)
        replies.append(r)
        history.append(Message(role="assistant", content=r.text))
    for _ in range(len(path)):
        if replies and replies[-1].done:
            break
        here = path.index(session.node_id) if session.node_id in path else -1
        nxt = next(i for i in range(here + 1, len(path)) if flow.node(path[i]).role == "user")
        history.append(Message(role="user", content=_user_line(flow, path, nxt, values)))
        r = await session.reply(history)
        replies.append(r)
        history.append(Message(role="assistant", content=r.text))
    return session, replies


@pytest.mark.parametrize("kind", ["orchestrator", "langgraph"])
async def test_orchestrators_follow_the_path_the_router_picks(flow: Flow, kind: str) -> None:
    if kind == "langgraph":
        pytest.importorskip("langgraph", reason="langgraph is an optional extra: pip install 'subterra[langgraph]'")
        from engine.agents.langgraph_agent import LangGraphAgent as Cls
    else:
        Cls = OrchestratorAgent
    rng = random.Random(3)
    for path in sample_paths(flow, 4, seed=7):
        with FakeLLMServer(reply=_oracle(flow, path)) as srv:
            backend = get_backend("openai", base_url=srv.openai_base_url, model="fake-model")
            agent = Cls(flow, backend, sampling=Sampling(temperature=0, max_tokens=30))
            session, replies = await _drive(agent, flow, path, sample_scenario(flow, rng))
            await agent.aclose()
        valid = {e.id for e in flow.edges}
        assert set(session.edges) <= valid
        assert session.path == path[: len(session.path)], (session.path, path)
        assert all(flow.node(n).role == "terminal" for n in path[len(session.path):])
        assert replies[-1].done
        assert all(d.method in ("only", "llm") for d in session.decisions)  # the oracle was understood
        for r in replies:  # each turn counts its calls and tokens; routing turns cost more than one call
            assert r.calls >= 1 and r.usage.input_tokens > 0 and r.usage.output_tokens > 0 and r.latency_s > 0
            assert r.text.startswith("agent says: ")
        enacted = [flow.node(r.node_id) for r in replies]
        assert all(n.role in ("agent", "terminal") for n in enacted)
        # the node's prompt (and no other procedure text) reached the model
        gen = [q for q in srv.requests if q.system != ROUTER_SYSTEM]
        assert len(gen) == len(replies)
        for q, n in zip(gen, enacted, strict=True):
            if n.role == "agent" and n.prompt:
                assert " ".join(n.prompt.split()) in q.system
            assert "PROCEDURE" not in q.system


async def test_orchestrator_stays_on_valid_edges_when_the_router_talks_nonsense(flow: Flow) -> None:
    path = sample_paths(flow, 1, seed=11)[0]
    with FakeLLMServer(reply="Hmm, hard to say; maybe the second-to-last one?") as srv:
        agent = OrchestratorAgent(flow, get_backend("openai", base_url=srv.openai_base_url, model="fake-model"))
        session, replies = await _drive(agent, flow, path, {})
    pairs = {(e.source, e.target) for e in flow.edges}
    assert all(pair in pairs for pair in zip(session.path, session.path[1:], strict=False))
    assert {e.id for e in flow.edges} >= set(session.edges)
    assert any(d.method == "fallback" for d in session.decisions)


async def test_orchestrator_router_failure_falls_back(flow: Flow) -> None:
    """A router that errors (HTTP 500 beyond retries) must not derail the walk."""
    path = sample_paths(flow, 1, seed=5)[0]
    with FakeLLMServer(reply="fine") as srv:
        srv.inject("500", count=200, api="openai")
        from engine.backends.retry import RetryPolicy

        broken = get_backend("openai", base_url=srv.openai_base_url, model="fake-model", sdk_retries=0,
                             retry=RetryPolicy(attempts=1))
        with FakeLLMServer(reply="ok") as ok:
            agent = OrchestratorAgent(flow, get_backend("openai", base_url=ok.openai_base_url, model="fake-model"),
                                      router_backend=broken)
            session, _ = await _drive(agent, flow, path, {})
    pairs = {(e.source, e.target) for e in flow.edges}
    assert all(pair in pairs for pair in zip(session.path, session.path[1:], strict=False))
    assert all(d.method in ("only", "fallback") for d in session.decisions)


# -- in-context ---------------------------------------------------------------------------------------
async def test_in_context_sends_the_serialized_flow_every_turn(flow: Flow) -> None:
    with FakeLLMServer(reply=["Hello, how can I help?", "Sure, tell me more."]) as srv:
        agent = load_agent(f"in-context:{SAMPLE_FLOWS_DIR / (flow.name + '.yaml')}@openai:fake-model",
                           backend_options={"base_url": srv.openai_base_url}, temperature=0)
        assert isinstance(agent, InContextAgent)
        s = agent.session()
        h = [Message(role="user", content="hi")]
        r1 = await s.reply(h)
        h += [Message(role="assistant", content=r1.text), Message(role="user", content="I need help")]
        deltas = [d async for d in s.stream(h)]
        await agent.aclose()
    assert r1.text == "Hello, how can I help?" and r1.calls == 1 and r1.usage.input_tokens > 500
    assert "".join(d.delta for d in deltas) == "Sure, tell me more." and deltas[-1].reply.ttft_s is not None
    assert [q.system for q in srv.requests] == [serialize_flow(flow)] * 2
    assert srv.requests[1].messages[-1] == {"role": "user", "content": "I need help"}


def _talk(turns: int) -> list[Message]:
    roles = ("assistant", "user")
    return [Message(role=roles[i % 2], content=f"message {i}: " + "words " * 20) for i in range(turns)]


async def test_in_context_keeps_the_latest_turns_that_fit_the_context() -> None:
    """A server that says the prompt is too long (vLLM's 400): the agent drops the oldest exchange and asks again,
    and keeps that window for the next turn, instead of failing the conversation."""
    flow = load_flow_file(SAMPLE_FLOWS_DIR / "insurance.yaml")
    with FakeLLMServer(reply="What is your policy number?") as srv:
        agent = InContextAgent(flow, get_backend("openai", base_url=srv.openai_base_url, model="m"))
        s = agent.session()
        history = _talk(7)
        srv.inject("context", count=2, api="openai")
        reply = await s.reply(history)
        assert reply.text == "What is your policy number?" and s.dropped == 4
        sent = [len(r.messages) for r in srv.requests]
        assert sent == [7, 5, 3]  # the whole history, then one exchange fewer each time
        assert srv.requests[-1].messages[0]["content"].startswith("message 4:")
        assert {r.system for r in srv.requests} == {serialize_flow(flow)}  # the flowchart is always sent
        history += [Message(role="assistant", content=reply.text), Message(role="user", content="HM-1")]
        deltas = [d async for d in s.stream(history)]  # the next turn starts from the window that fitted
        assert deltas[-1].reply.text == "What is your policy number?" and len(srv.requests[-1].messages) == 5
        srv.inject("context", count=20, api="openai")
        with pytest.raises(ContextLengthError, match="the flowchart and the last message alone do not fit"):
            await s.reply(history)
        await agent.aclose()


async def test_context_overflow_is_recognised_from_anthropic_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    with FakeLLMServer() as srv:
        backend = get_backend("anthropic", base_url=srv.base_url, model="claude-x")
        srv.inject("context", api="anthropic")
        with pytest.raises(ContextLengthError, match="does not fit claude-x's context window"):
            await backend.complete(InContextAgent(load_flow_file(SAMPLE_FLOWS_DIR / "travel.yaml"),
                                                  backend).request(_talk(1)))
        assert len(srv.requests) == 1  # not retried: the same prompt would not fit the next time either
        await backend.aclose()


async def test_local_backend_refuses_a_prompt_past_the_models_context(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The transformers path checks the prompt's length before generating, as vLLM does; the in-context agent
    then keeps the turns that fit."""
    flow = load_flow_file(SAMPLE_FLOWS_DIR / "travel.yaml")
    probe = InContextAgent(flow, get_backend("local", model=str(tiny_model_dir)))
    history = _talk(9)
    sizes = [len(probe.backend.render_prompt(probe.request(history[k:]))) for k in (0, 4)]
    short = tmp_path / "short-context"
    shutil.copytree(tiny_model_dir, short)
    config = json.loads((short / "config.json").read_text())
    config["max_position_embeddings"] = sizes[1] + 16  # room for the last five messages, not for all nine
    (short / "config.json").write_text(json.dumps(config))
    agent = InContextAgent(flow, get_backend("local", model=str(short)), Sampling(temperature=0, max_tokens=4))
    with pytest.raises(ContextLengthError, match=rf"it takes {sizes[0]} tokens of {sizes[1] + 16}"):
        await agent.backend.complete(agent.request(history))
    s = agent.session()
    reply = await s.reply(history)
    assert s.dropped == 4 and reply.usage.input_tokens == sizes[1] and reply.usage.output_tokens <= 4


# -- compiled ------------------------------------------------------------------------------------------
@pytest.fixture
def compiled_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    d = tmp_path / "compiled-travel"
    shutil.copytree(tiny_model_dir, d)
    (d / "subterra.json").write_text(json.dumps({"flow": "travel", "flow_version": 1,
                                                 "system_prompt": "You are a helpful travel booking assistant."}))
    return d


async def test_compiled_agent_uses_only_the_minimal_system_prompt(compiled_dir: Path) -> None:
    agent = load_agent(f"compiled:{compiled_dir}", temperature=0, max_tokens=12)
    assert isinstance(agent, CompiledAgent) and agent.system_prompt == "You are a helpful travel booking assistant."
    s = agent.session()
    history = [Message(role="user", content="I want to go to Lisbon")]
    full = await s.reply(history)
    deltas = [d async for d in s.stream(history)]
    streamed = deltas[-1].reply
    assert streamed is not None and streamed.text == full.text  # greedy: streaming changes nothing
    assert "".join(d.delta for d in deltas[:-1]).strip() == full.text
    ids = agent.backend.render_prompt(agent.request(history))
    assert full.usage.input_tokens == len(ids) and 0 < full.usage.output_tokens <= 12
    prompt = agent.backend.loaded().tokenizer.decode(ids)
    assert "You are a helpful travel booking assistant." in prompt and "Lisbon" in prompt
    assert streamed.ttft_s is not None and streamed.ttft_s <= streamed.latency_s


async def test_served_compiled_agent_passes_backend_options_to_its_client(compiled_dir: Path) -> None:
    """A compiled model on a busy local server: the timeout a caller gives reaches the HTTP client."""
    from engine.backends.retry import RetryPolicy

    once = {"sdk_retries": 0, "retry": RetryPolicy(attempts=1)}
    history = [Message(role="user", content="I want to go to Lisbon")]
    with FakeLLMServer(reply="Where would you like to fly from?") as srv:
        srv.inject("slow", delay=1.5, api="openai")
        hasty = CompiledAgent(compiled_dir, base_url=srv.openai_base_url, served_model="m",
                              backend_options={"timeout": 0.3, **once})
        with pytest.raises(Exception, match="(?i)time"):
            await hasty.session().reply(history)
        srv.inject("slow", delay=1.5, api="openai")
        patient = CompiledAgent(compiled_dir, base_url=srv.openai_base_url, served_model="m",
                                backend_options={"timeout": 10.0, **once})
        reply = await patient.session().reply(history)
    assert reply.text == "Where would you like to fly from?"
    assert patient.backend.client.timeout == 10.0 and hasty.backend.client.timeout == 0.3


def test_compiled_agent_reads_the_system_prompt_a_compile_recorded(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The manifest as `subterra compile` writes it: the prompt it trained with, in its config."""
    model = tmp_path / "compiled"
    shutil.copytree(tiny_model_dir, model)
    (model / "subterra.json").write_text(json.dumps({"kind": "subterra-compiled-model", "flow": "travel",
                                                     "config": {"system_prompt": "You book trips."}}))
    assert CompiledAgent(model).system_prompt == "You book trips."


def test_compiled_agent_falls_back_to_the_flows_system_prompt(tiny_model_dir: Path) -> None:
    flow = load_flow_file(SAMPLE_FLOWS_DIR / "travel.yaml")
    agent = CompiledAgent(tiny_model_dir, flow=flow)
    assert agent.system_prompt == flow.system_prompt


def test_compiled_agent_rejects_a_broken_manifest(compiled_dir: Path) -> None:
    (compiled_dir / "subterra.json").write_text("{not json")
    with pytest.raises(ServingError, match=r"subterra.json is not valid JSON .*; fix or delete it"):
        load_agent(f"compiled:{compiled_dir}")


def test_langgraph_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_langgraph(name, *a, **k):
        if name.startswith("langgraph"):
            raise ImportError("No module named 'langgraph'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_langgraph)
    with pytest.raises(ServingError, match=r"pip install 'subterra\[langgraph\]'"):
        load_agent(f"langgraph:{SAMPLE_FLOWS_DIR / 'travel.yaml'}@scripted")


async def test_orchestrator_needs_the_customers_first_message_when_the_flow_opens_with_it() -> None:
    zoom = load_flow_file(SAMPLE_FLOWS_DIR / "zoom.yaml")
    assert zoom.node(zoom.start).role == "user"
    agent = OrchestratorAgent(zoom, get_backend("scripted"))
    with pytest.raises(ServingError,
                       match=r"starts with the customer's turn \(.+\); pass the customer's first message"):
        await agent.session().reply([])
