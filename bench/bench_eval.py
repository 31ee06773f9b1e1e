"""Conversations evaluated per minute, offline: the evaluator's own overhead, without a model.

The agent is a model-free flow walker (it says an example of the next agent node, picking hub branches
by MiniLM similarity to the user's words), so the figure measures the evaluator itself: the scripted
simulator's node recognition, conversation bookkeeping, objective metrics (MiniLM mapping, 0-1 BFS
edit distance), statistics with 10,000 bootstrap resamples and the report. Baseline, measured in the
same process: with an agent that waits like an API call per reply, concurrency 4 vs one
conversation at a time.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from engine.agents.base import AgentReply
from engine.backends.base import Message, Usage
from engine.evaluate.conformance import get_embedder
from engine.flow import Flow, render_template

SCENARIOS = 12
API_LATENCY_S = 0.25  # what one reply of an API-backed agent costs in waiting, roughly


def run() -> list[dict]:
    import os

    with tempfile.TemporaryDirectory() as home:
        os.environ["SUBTERRA_HOME"] = home
        from engine.store import Store, load_flow

        store = Store()
        if not store.has_flow("travel"):
            return [{"name": "eval conversations/min", "note": "no travel flow in sample_flows; skipped"}]
        flow = load_flow("travel", store)
        get_embedder().embed(["warm up"])  # model load is a one-time cost, not per conversation
        bare, n = _measure(flow, store, concurrency=1, latency=0.0, out=Path(home) / "bare")
        slow, _ = _measure(flow, store, concurrency=1, latency=API_LATENCY_S, out=Path(home) / "c1")
        fast, _ = _measure(flow, store, concurrency=4, latency=API_LATENCY_S, out=Path(home) / "c4")
    return [
        {"name": "evaluator overhead (travel, scripted user, model-free agent)", "value": 60_000 / bare,
         "unit": "ms/conv",
         "note": f"{bare:.0f} conversations/min incl. metrics, stats and report ({n} conversations)"},
        {"name": f"eval conversations/min, agent with {API_LATENCY_S:g} s/reply, concurrency 4", "value": fast,
         "unit": "conv/min", "baseline": slow, "ratio": fast / slow if slow else None,
         "note": "baseline: the same run one conversation at a time"},
    ]


def _measure(flow: Flow, store, concurrency: int, latency: float, out: Path) -> tuple[float, int]:
    from engine.evaluate.run import EvalConfig, run_evaluation

    get_embedder().clear_cache()  # every run starts cold: same scenarios, same sentences
    agents = {"walker": _WalkerAgent(flow, latency)}
    config = EvalConfig(flow="travel", agents=list(agents), scenarios=SCENARIOS, concurrency=concurrency, out=str(out))
    t0 = time.perf_counter()
    result = run_evaluation(config, agents=agents, store=store)
    elapsed = time.perf_counter() - t0
    n = result.report.agents["walker"].conversations
    return n / elapsed * 60, n


class _WalkerAgent:
    kind, model, spec = "compiled", "flow-walker", "walker"

    def __init__(self, flow: Flow, latency: float):
        self.flow, self.latency = flow, latency

    def session(self) -> _WalkerSession:
        return _WalkerSession(self.flow, self.latency)

    async def aclose(self) -> None:
        return None


class _WalkerSession:
    def __init__(self, flow: Flow, latency: float):
        self.flow, self.latency, self.node, self.turn = flow, latency, None, 0

    async def reply(self, history: list[Message]) -> AgentReply:
        if self.latency:
            await asyncio.sleep(self.latency)
        said = next((m.content for m in reversed(history) if m.role == "user"), "")
        cur = self.flow.start if self.node is None else self._step(self.node, said)
        while cur is not None and self.flow.node(cur).role not in ("agent", "terminal"):
            cur = self._step(cur, said)
        if cur is None or self.flow.node(cur).role == "terminal":
            return AgentReply(text="Thank you, goodbye.", done=True)
        self.node, self.turn = cur, self.turn + 1
        node = self.flow.node(cur)
        text = render_template(node.examples[self.turn % len(node.examples)] if node.examples else node.prompt, {})
        done = any(self.flow.node(e.target).role == "terminal" for e in self.flow.out_edges(cur))
        return AgentReply(text=text, usage=Usage(input_tokens=30 * len(history) + 20, output_tokens=len(text.split())),
                          node_id=cur, done=done)

    def _step(self, node: str, said: str) -> str | None:
        edges = self.flow.out_edges(node)
        if len(edges) <= 1:
            return edges[0].target if edges else None
        emb = get_embedder()
        scores = [float((emb.embed([said or "ok"])
                         @ emb.embed([t for t in [e.when or "", *e.examples] if t] or [e.target]).T).max())
                  for e in edges]
        return edges[scores.index(max(scores))].target
