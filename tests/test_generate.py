"""Dataset generation end to end: scripted on the sample flows, the anthropic and openai backends
through their SDKs against a local fake server with injected faults, resume after a real
SIGKILL, the cost cap, failure recording, alternation, branch consistency, splits and JSONL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from fake_llm import FakeLLMServer

from engine.backends import get_backend
from engine.backends.retry import RetryPolicy
from engine.datasets import export_jsonl, iter_conversations, list_datasets, load_jsonl
from engine.dialogue_state import SAME_REST
from engine.errors import FlowInvalidError, GenerationError
from engine.flow import Flow, render_template
from engine.formats import load_flow_file
from engine.generate import (
    GenerateConfig,
    clean_message,
    estimate_cost,
    generate_dataset,
    plan_turns,
    preview_dialogue,
    stratified_split,
)
from engine.store import Store

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_FLOWS = sorted((ROOT / "sample_flows").glob("*.yaml"))

MINI = {
    "name": "mini",
    "description": "Booking a seat on a trip.",
    "start": "greet",
    "system_prompt": "You are a helpful booking agent.",
    "variables": {"name": {"kind": "text", "pool": ["Ann", "Bob", "Cleo"]},
                  "city": {"kind": "choice", "values": ["Paris", "Rome", "Oslo"]}},
    "nodes": [
        {"id": "greet", "role": "agent", "prompt": "Greet the customer.", "examples": ["Hello! How can I help?"]},
        {"id": "ask", "role": "user", "prompt": "Ask to book a trip to {city}.",
         "examples": ["I want to go to {city}."]},
        {"id": "hub", "role": "decision"},
        {"id": "ok", "role": "agent", "prompt": "Confirm the booking.", "examples": ["Booked {city} for you, {name}."]},
        {"id": "no", "role": "agent", "prompt": "Say it is full.", "examples": ["Sorry, {city} is full."]},
        {"id": "anything", "role": "agent", "prompt": "Ask if there is anything else.", "examples": ["Anything else?"]},
        {"id": "done", "role": "terminal", "outcome": "success"},
        {"id": "gone", "role": "terminal", "outcome": "abandoned"},
    ],
    "edges": [
        {"source": "greet", "target": "ask"}, {"source": "ask", "target": "hub"},
        {"source": "hub", "target": "ok", "when": "the customer accepts any seat",
         "examples": ["Book me to {city} please, any seat is fine."]},
        {"source": "hub", "target": "no", "when": "the customer insists on travelling today",
         "examples": ["I need to be in {city} today, is that possible?"]},
        {"source": "ok", "target": "anything"}, {"source": "anything", "target": "done"},
        {"source": "no", "target": "gone"},
    ],
}


@pytest.fixture
def mini() -> Flow:
    return Flow.model_validate(MINI)


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-not-real")
    for k in ("ANTHROPIC_BASE_URL", "SUBTERRA_ANTHROPIC_MODEL", "OPENAI_API_KEY", "SUBTERRA_OPENAI_MODEL"):
        monkeypatch.delenv(k, raising=False)


def check_conversation(flow: Flow, rec: dict) -> None:
    """The invariants every stored conversation must satisfy."""
    msgs, meta = rec["messages"], rec["meta"]
    assert msgs[0] == {"role": "system", "content": flow.system_prompt}
    roles = [m["role"] for m in msgs[1:]]
    assert all(a != b for a, b in zip(roles, roles[1:], strict=False)), f"roles do not alternate: {roles}"
    assert all(set(m) == {"role", "content"} and m["content"].strip() for m in msgs)
    assert len(meta["message_nodes"]) == len(msgs)
    dropped = 1 if meta.get("customer_first") else 0  # the customer spoke first: no opening greeting
    assert len(msgs) == 1 + len(plan_turns(flow, meta["path"])) - dropped, "a stored conversation must be complete"
    spoken = [n for n in meta["message_nodes"] if n is not None]
    assert spoken == [n for n in meta["path"] if flow.node(n).speaks][dropped:], \
        "messages follow the path's speaking nodes"
    for m in msgs[1:]:  # no procedural annotation in the dialogue
        assert not any(f"[{n.id}]" in m["content"] or m["content"].startswith(f"{n.id}:") for n in flow.nodes)
        assert not m["content"].lower().startswith(("agent:", "customer:", "user:", "assistant:"))
    assert {"flow", "flow_version", "path", "message_nodes", "scenario", "seed", "split"} <= set(meta)


def branch_consistent(flow: Flow, rec: dict) -> None:
    """The user turn before each decision hub says one of that branch's own example lines."""
    msgs, meta = rec["messages"], rec["meta"]
    path, nodes = meta["path"], meta["message_nodes"]
    for k, nid in enumerate(path):
        if flow.node(nid).role != "decision":
            continue
        edge = flow.edge_between(nid, path[k + 1])
        if not edge or not edge.examples:
            continue
        j = k - 1
        while flow.node(path[j]).role == "decision":
            j -= 1
        if flow.node(path[j]).role != "user":
            continue
        # with loops a node recurs: take the message of this very visit (its occurrence number on the path)
        visit = path[: j + 1].count(path[j])
        said = msgs[[i for i, n in enumerate(nodes) if n == path[j]][visit - 1]]["content"]
        # a change of plan gives a variable new values: the branch line may use any of them
        options = [meta["scenario"]] + [{**meta["scenario"], name: v} for name, vs in meta.get("changes", {}).items()
                                        for v in vs]
        allowed = {render_template(e, values).strip() for e in edge.examples for values in options}
        # the turn also states the facts it was asked for (engine.dialogue_state), around the branch's line;
        # after "shall I keep everything else?" a plain yes carries the branch
        assert any(a in said for a in allowed) or said in SAME_REST, \
            f"at hub {nid} the path goes to {path[k + 1]} but the user said {said!r}"


# -- turn planning ----------------------------------------------------------------------------------


def test_plan_turns_alternates_and_carries_the_branch(mini: Flow) -> None:
    turns = plan_turns(mini, ["greet", "ask", "hub", "ok", "anything", "done"])
    assert [(t.role, t.node_id) for t in turns] == [
        ("assistant", "greet"), ("user", "ask"), ("assistant", "ok"), ("user", None), ("assistant", "anything")]
    ask = turns[1]
    assert ask.conditions == ["the customer accepts any seat"]
    assert ask.examples == ["Book me to {city} please, any seat is fine."]  # the branch's lines, not the node's
    assert turns[3].examples and all(len(x.split()) <= 4 for x in turns[3].examples)


def test_preview_dialogue_is_instant_and_consistent(mini: Flow) -> None:
    t0 = time.perf_counter()
    msgs = preview_dialogue(mini, ["greet", "ask", "hub", "no", "gone"], seed=2)
    assert time.perf_counter() - t0 < 1.0
    assert [m["node"] for m in msgs] == [None, "greet", "ask", "no"]
    assert msgs[2]["content"].startswith("I need to be in ") and msgs[2]["content"].endswith("today, is that possible?")
    city = msgs[2]["content"].removeprefix("I need to be in ").split(" ")[0].rstrip(",")
    assert msgs[3]["content"] == f"Sorry, {city} is full."  # one scenario across the whole dialogue
    assert preview_dialogue(mini, seed=5) == preview_dialogue(mini, seed=5)


def test_clean_message_strips_labels_quotes_and_extra_turns() -> None:
    assert clean_message('  Agent: "Hello, how can I help?" ') == "Hello, how can I help?"
    assert clean_message("**Customer:** I need a flight.") == "I need a flight."
    assert clean_message("Sure, which dates?\nCustomer: June.\nAgent: Great.") == "Sure, which dates?"
    assert clean_message("Line one.\nLine two.") == "Line one.\nLine two."


def test_stratified_split_covers_paths() -> None:
    keys = ["a"] * 50 + ["b"] * 30 + ["c"] * 10 + ["d"] * 5 + ["e"] * 3 + ["f"] * 2
    split = stratified_split(keys, 0.1, seed=0)
    ev = [k for k, s in zip(keys, split, strict=True) if s == "eval"]
    assert len(ev) == 10
    assert set(ev) == set("abcdef"), "every path with a spare conversation is evaluated"
    assert {k for k, s in zip(keys, split, strict=True) if s == "train"} == set("abcdef")
    assert stratified_split(["x", "y", "z"], 0.1, 0).count("eval") == 1


# -- scripted, end to end ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", SAMPLE_FLOWS, ids=[p.stem for p in SAMPLE_FLOWS])
def test_scripted_end_to_end_on_sample_flows(path: Path, store: Store, tmp_path: Path) -> None:
    flow = load_flow_file(path)
    report = generate_dataset(flow, GenerateConfig(n=120, seeds=[0, 1]), store)
    assert report.complete and report.done == 240 and report.failed_attempts == 0
    out = tmp_path / "data.jsonl"
    assert export_jsonl(store, flow.name, out) == 240
    records = load_jsonl(out)
    for rec in records:
        check_conversation(flow, rec)
        branch_consistent(flow, rec)
    splits = Counter(r["meta"]["split"] for r in records)
    assert splits["eval"] == 24 and splits["train"] == 216
    # coverage-guided: every edge on some complete path appears in the data
    used = {(a, b) for r in records for a, b in zip(r["meta"]["path"], r["meta"]["path"][1:], strict=False)}
    from engine.paths import iter_paths

    # the default lets each loop run once more, so loop-back edges are in the data too
    visits = GenerateConfig(n=1).max_visits
    assert visits == 2
    reachable = {(a, b) for p in iter_paths(flow, max_visits=visits) for a, b in zip(p, p[1:], strict=False)}
    assert used == reachable
    assert {r["meta"]["seed"] for r in records} == {0, 1}
    # different scenarios make different dialogues
    assert len({json.dumps(r["messages"]) for r in records}) > 100


def test_sample_flows_present() -> None:
    assert any(p.stem == "travel" for p in SAMPLE_FLOWS)


def test_resume_extend_and_no_duplicates(mini: Flow, store: Store) -> None:
    r1 = generate_dataset(mini, GenerateConfig(n=20), store)
    r2 = generate_dataset(mini, GenerateConfig(n=20), store)
    assert (r1.new, r2.new, r2.done) == (20, 0, 20)
    r3 = generate_dataset(mini, GenerateConfig(n=30), store)
    assert (r3.new, r3.done) == (10, 30)
    r4 = generate_dataset(mini, GenerateConfig(n=10, seeds=[7]), store)  # another seed appends its own slots
    assert (r4.new, r4.done) == (10, 10)
    slots = [r["slot"] for r in store.db.query("select slot from conversations")]
    assert len(slots) == len(set(slots)) == 40
    assert list_datasets(store)[0]["conversations"] == 40
    job = store.list_jobs("generate")[0]
    assert job["status"] == "done" and job["progress"] == 1.0


def test_dataset_of_another_flow_version_is_refused(mini: Flow, store: Store) -> None:
    generate_dataset(mini, GenerateConfig(n=3), store)
    changed = mini.copy_deep()
    changed.system_prompt = "Something else."
    with pytest.raises(GenerationError, match=r"dataset 'mini' holds conversations of flow 'mini' version 1, "
                                              r"not 'mini' version 2; pick another --dataset"):
        generate_dataset(changed, GenerateConfig(n=3), store)
    assert generate_dataset(changed, GenerateConfig(n=3, dataset="mini-v2"), store).done == 3


def test_invalid_flow_is_refused(store: Store) -> None:
    broken = Flow.model_validate(MINI | {"edges": MINI["edges"][:1]})
    with pytest.raises(FlowInvalidError, match="flow 'mini' has errors, fix them before generating"):
        generate_dataset(broken, GenerateConfig(n=2), store)


def test_node_without_examples_names_the_node(mini: Flow, store: Store) -> None:
    data = json.loads(mini.model_dump_json())
    data["nodes"][5]["examples"] = []
    flow = Flow.model_validate(data)
    with pytest.raises(GenerationError) as e:
        generate_dataset(flow, GenerateConfig(n=20), store)
    assert str(e.value) == (
        "node(s) 'anything' have no example utterances, which the scripted backend needs; add some to their "
        "examples, or generate with a model (--backend local, or --fallback local for just those nodes)")
    with FakeLLMServer(reply="Is there anything else?") as srv:  # --fallback writes just those turns
        cfg = GenerateConfig(n=20, fallback="openai", model="fake-model", base_url=srv.openai_base_url)
        report = generate_dataset(flow, cfg, store)
    assert report.complete
    recs = list(iter_conversations(store, "mini"))
    said = [m["content"] for r in recs for m, n in zip(r["messages"], r["meta"]["message_nodes"], strict=True)
            if n == "anything"]
    assert said and set(said) == {"Is there anything else?"}
    assert len(srv.requests) == len(said)  # every other turn came from the examples, offline


# -- model backends over HTTP -----------------------------------------------------------------------


def _writer(req) -> str:  # a "model" that writes what it was told, so dialogues are checkable
    instruction = req.last_user
    speaker = "agent" if "spoken by the agent" in instruction else "customer"
    return f"Customer: ({speaker}) {instruction.splitlines()[-1][:60]}" if speaker == "customer" else f"({speaker}) ok"


def test_anthropic_generation_with_faults_and_caching(mini: Flow, store: Store) -> None:
    with FakeLLMServer(reply=_writer) as srv:
        for kind in ("429", "500", "529", "malformed", "slow", "empty"):
            srv.inject(kind, retry_after=0.01, delay=2.0)
        backend = get_backend("anthropic", model="claude-haiku-4-5", base_url=srv.base_url, timeout=0.5,
                              sdk_retries=1, retry=RetryPolicy(base_delay=0.01, jitter=0))
        report = generate_dataset(mini, GenerateConfig(n=12, backend="anthropic", concurrency=4), store,
                                  backend=backend)
        assert srv.pending_faults == 0
    assert report.complete and report.done == 12
    recs = list(iter_conversations(store, "mini"))
    for rec in recs:
        check_conversation(mini, rec)
        assert rec["meta"]["backend"] == "anthropic" and rec["meta"]["model"] == "claude-haiku-4-5"
    # the speaker label the "model" added was stripped
    assert all(not m["content"].startswith("Customer:") for r in recs for m in r["messages"])
    # the branch condition reached the turn before the hub
    asks = [q.last_user for q in srv.requests if q.fault is None and "It must make this clearly true" in q.last_user]
    assert asks and all("spoken by the customer" in a for a in asks)
    # prompt caching: one write, then reads; cost is priced from the table
    total_read = sum(r["meta"]["usage"]["cache_read_tokens"] for r in recs)
    assert total_read > 0 and report.usage.cache_read_tokens == total_read
    assert report.cost_usd > 0 and report.cost_known
    assert all(q.body["system"][0]["cache_control"] == {"type": "ephemeral"}
               for q in srv.requests if q.api == "anthropic")
    # the API key is never written to the store (database and its WAL)
    for f in store.path.parent.glob("subterra.db*"):
        assert b"sk-test-not-real" not in f.read_bytes()


def test_failed_attempt_is_recorded_and_replaced(mini: Flow, store: Store) -> None:
    with FakeLLMServer(reply="Fine.") as srv:
        srv.inject("empty", count=2)  # both tries of slot 0's first call fail -> the attempt fails
        backend = get_backend("openai", model="fake-model", base_url=srv.openai_base_url, sdk_retries=0,
                              retry=RetryPolicy(attempts=2, base_delay=0.01, jitter=0))
        report = generate_dataset(mini, GenerateConfig(n=3, backend="openai", concurrency=1), store, backend=backend)
    assert report.complete and report.failed_attempts == 1
    fail = list(store.db.query("select slot, attempt, reason from generation_failures"))
    assert len(fail) == 1 and fail[0]["attempt"] == 1 and "empty reply" in fail[0]["reason"]
    rows = list(store.db.query("select slot, meta from conversations order by slot"))
    attempts = {r["slot"]: json.loads(r["meta"])["attempt"] for r in rows}
    assert attempts == {s: (2 if s == fail[0]["slot"] else 1) for s in range(3)}  # the failed one was redone


def test_cost_cap_before_and_during_the_run(mini: Flow, store: Store, subterra_home: Path) -> None:
    (subterra_home / "prices.json").write_text(json.dumps({"pricey": {"input": 100.0, "output": 1000.0}}))
    est = estimate_cost(mini, GenerateConfig(n=10, backend="openai", model="pricey"))
    assert est.price_known and est.usd > 0
    with FakeLLMServer(reply="word " * 400) as srv:  # far longer replies than the estimate assumes
        cfg = GenerateConfig(n=10, backend="openai", model="pricey", base_url=srv.openai_base_url,
                             max_cost=est.usd / 100)
        with pytest.raises(GenerationError, match=r"the estimated cost \$.* of 10 conversations exceeds --max-cost"):
            generate_dataset(mini, cfg, store)
        assert not srv.requests
        cap = est.usd * 1.05
        report = generate_dataset(mini, cfg.model_copy(update={"max_cost": cap, "concurrency": 2}), store)
    assert report.stopped and "--max-cost" in report.stopped and not report.complete
    one_call = (500 * 1000.0 + 1000 * 100.0) / 1e6
    assert cap <= report.cost_usd <= cap + 2 * one_call  # at most the calls in flight overshoot


def test_unreachable_backend_stops_the_run(mini: Flow, store: Store) -> None:
    from engine.errors import BackendUnavailableError

    cfg = GenerateConfig(n=3, backend="openai", model="m", base_url="http://127.0.0.1:9/v1")
    with pytest.raises(BackendUnavailableError, match="cannot reach the OpenAI-compatible server at http://127.0.0.1:9/v1"):
        generate_dataset(mini, cfg, store)
    assert store.list_jobs("generate")[0]["status"] == "failed"


@pytest.mark.slow  # two CLI subprocesses (~20 s on 2 shared cores)
def test_kill_9_then_resume_gives_exactly_n(mini: Flow, tmp_path: Path, subterra_home: Path) -> None:
    flow_file = tmp_path / "mini.json"
    flow_file.write_text(mini.model_dump_json())
    n = 40
    with FakeLLMServer(reply="Sounds good.", latency=0.05) as srv:
        cmd = [sys.executable, "-m", "engine", "generate", str(flow_file), "-n", str(n), "--backend", "openai",
               "--model", "fake-model", "--base-url", srv.openai_base_url, "--concurrency", "3", "-q"]
        env = os.environ | {"SUBTERRA_HOME": str(subterra_home)}
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        store = Store()
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            count = store.db.execute("select count(*) from conversations").fetchone()[0]
            if count >= 8:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run finished before we could kill it: " + proc.stderr.read().decode()[-500:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at = store.db.execute("select count(*) from conversations").fetchone()[0]
        assert 8 <= killed_at < n
        requests_before = len(srv.requests)
        rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{n}/{n} conversations ({n - killed_at} new" in rerun.stderr
    rows = list(store.db.query("select slot, messages, meta from conversations"))
    assert len(rows) == n and sorted(r["slot"] for r in rows) == list(range(n))
    for r in rows:
        check_conversation(mini, {"messages": json.loads(r["messages"]),
                                  "meta": json.loads(r["meta"]) | {"split": "x"}})
    # the rerun only wrote what was missing (plus at most the conversations that were in flight)
    turns_per = max(len(plan_turns(mini, json.loads(r["meta"])["path"])) for r in rows)
    assert len(srv.requests) - requests_before <= (n - killed_at) * turns_per


def test_local_backend_on_a_tiny_model(mini: Flow, store: Store, tiny_model_dir: Path) -> None:
    backend = get_backend("local", model=str(tiny_model_dir))
    report = generate_dataset(mini, GenerateConfig(n=2, backend="local", max_tokens=12, attempts=3), store,
                              backend=backend)
    recs = list(iter_conversations(store, "mini"))
    assert report.done == len(recs) >= 1
    for rec in recs:
        check_conversation(mini, rec)
        assert rec["meta"]["backend"] == "local"


def test_an_older_version_is_recorded_without_moving_the_head(mini: Flow, store: Store) -> None:
    store.save_flow(mini)
    newer = mini.copy_deep()
    newer.description = "Changed."
    assert store.save_flow(newer) == 2
    generate_dataset(mini, GenerateConfig(n=2, dataset="old"), store)  # content of version 1
    assert store.flow_version("mini") == 2
    assert {r["meta"]["flow_version"] for r in iter_conversations(store, "old")} == {1}
