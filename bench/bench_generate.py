"""Generation throughput and cost.

1. Conversations per second through the anthropic backend (official SDK) against the fake API
   server (tests/fake_llm.py, in its own process) with a fixed latency per call, at several
   concurrency levels. Baseline: the limit, total LLM calls x latency / concurrency; the ratio
   is the fraction of it reached (target >= 0.9).
2. Input tokens billed at the full price per conversation, with and without prompt caching
   (baseline: without), and the resulting cost per conversation on claude-sonnet-4-5 prices.
3. Time for 1,000 scripted travel conversations into the store (baseline: rendering the same
   1,000 in memory, no store, no worker pool).
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LATENCY = 0.5  # real API calls take 0.5-5 s; the SDK's own ~10 ms per call is then small
LEVELS = (1, 4, 16, 32)


def run() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as home:
        os.environ["SUBTERRA_HOME"] = home
        os.environ.setdefault("ANTHROPIC_API_KEY", "bench-not-a-real-key")
        from engine.formats import load_flow_file

        flow = load_flow_file(ROOT / "sample_flows" / "travel.yaml")
        results = []
        with _server(LATENCY) as url:
            for c in LEVELS:
                results.append(_throughput(flow, url, c))
        with _server(0.0) as url:
            results += _caching(flow, url)
        results.append(_scripted(flow))
        return results


class _server:
    """tests/fake_llm.py in a subprocess, so its threads do not share our GIL."""

    def __init__(self, latency: float):
        self.latency = latency

    def __enter__(self) -> str:
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_llm.py"),
                                      "--latency", str(self.latency),
                                      "--reply", "Certainly, I can help with that."],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        return f"http://127.0.0.1:{int(line.split()[1])}"

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def _throughput(flow: Any, url: str, concurrency: int) -> dict[str, Any]:
    from engine.generate import GenerateConfig, generate_dataset

    n = 4 * concurrency
    cfg = GenerateConfig(n=n, backend="anthropic", model="claude-sonnet-4-5", base_url=url, concurrency=concurrency,
                         dataset=f"bench-c{concurrency}", max_tokens=64)
    report = generate_dataset(flow, cfg)
    elapsed = report.elapsed_s  # the run's own clock: planning and the SDK import are one-off costs
    calls = _calls(report.dataset)
    ideal = calls * LATENCY / concurrency
    return {"name": f"conversations/s at concurrency {concurrency} ({LATENCY * 1000:.0f} ms per call)",
            "value": round(report.done / elapsed, 2), "unit": "conv/s",
            "baseline": round(report.done / ideal, 2), "ratio": round(ideal / elapsed, 3), "target": ">= 0.9",
            "note": f"{report.done} conversations, {calls} calls in {elapsed:.2f}s"}


def _calls(dataset: str) -> int:
    import json

    from engine.store import Store

    rows = Store().db.query("select c.messages from conversations c join datasets d on d.id = c.dataset_id "
                            "where d.name = ?", [dataset])
    return sum(len(json.loads(r["messages"])) - 1 for r in rows)


def _caching(flow: Any, url: str) -> list[dict[str, Any]]:
    from engine.backends import Usage
    from engine.backends.pricing import cost_usd
    from engine.generate import GenerateConfig, generate_dataset

    out = {}
    for cache in (True, False):
        cfg = GenerateConfig(n=20, backend="anthropic", model="claude-sonnet-4-5", base_url=url, concurrency=4,
                             dataset=f"bench-cache-{cache}", cache_prompt=cache, max_tokens=64)
        r = generate_dataset(flow, cfg)
        u: Usage = r.usage
        out[cache] = {"full": (u.input_tokens + u.cache_write_tokens) / r.done,
                      "sent": (u.input_tokens + u.cache_write_tokens + u.cache_read_tokens) / r.done,
                      "usd": cost_usd(u, "claude-sonnet-4-5") / r.done}
    return [
        {"name": "input tokens sent per conversation (caching on; off is the baseline)",
         "value": round(out[True]["sent"]), "unit": "tokens", "baseline": round(out[False]["sent"]),
         "ratio": round(out[True]["sent"] / out[False]["sent"], 3), "note": "the same prompts either way"},
        {"name": "input tokens billed at full price per conversation, with prompt caching",
         "value": round(out[True]["full"]), "unit": "tokens", "baseline": round(out[False]["full"]),
         "ratio": round(out[True]["full"] / out[False]["full"], 3), "note": "baseline: caching off"},
        {"name": "cost per conversation on claude-sonnet-4-5 prices, with prompt caching",
         "value": round(out[True]["usd"], 5), "unit": "USD", "baseline": round(out[False]["usd"], 5),
         "ratio": round(out[True]["usd"] / out[False]["usd"], 3), "note": "baseline: caching off"},
    ]


def _scripted(flow: Any) -> dict[str, Any]:
    from engine.backends import Sampling, get_backend
    from engine.generate import GenerateConfig, generate_dataset, write_conversation
    from engine.paths import coverage_paths
    from engine.scenario import sample_scenario

    paths = coverage_paths(flow, 1000, seed=0)
    backend = get_backend("scripted")

    async def render_all() -> None:
        rng = random.Random(0)
        for i, p in enumerate(paths):
            await write_conversation(flow, p, sample_scenario(flow, rng), backend, i, Sampling())

    t0 = time.perf_counter()
    asyncio.run(render_all())
    baseline = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = generate_dataset(flow, GenerateConfig(n=1000, dataset="bench-scripted"))
    elapsed = time.perf_counter() - t0
    assert report.done == 1000
    return {"name": "1,000 scripted travel conversations into the store", "value": round(elapsed, 2), "unit": "s",
            "baseline": round(baseline, 2), "ratio": round(elapsed / baseline, 2),
            "note": f"{1000 / elapsed:.0f} conv/s; baseline renders them in memory without the store"}
