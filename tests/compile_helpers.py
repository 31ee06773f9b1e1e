"""Small conversation datasets for the compile tests, in the generator's JSONL record format."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

SYSTEM = "You are a helpful travel booking assistant."
DESTINATIONS = ["Paris", "Rome", "Tokyo", "Lima", "Oslo", "Cairo", "Quito", "Hanoi"]


def conversations(n: int, seed: int = 0, eval_every: int = 5, max_extra_turns: int = 0) -> list[dict[str, Any]]:
    """`n` travel-booking dialogues; every `eval_every`-th is in the eval split.
    `max_extra_turns` adds up to that many extra question/answer pairs so lengths vary."""
    r = random.Random(seed)
    out = []
    for i in range(n):
        d, budget, people = r.choice(DESTINATIONS), r.choice([800, 1500, 3000]), r.randint(1, 5)
        msgs = [{"role": "system", "content": SYSTEM},
                {"role": "assistant", "content": "Hello! Where would you like to travel?"},
                {"role": "user", "content": f"I want to go to {d}."},
                {"role": "assistant", "content": f"Great choice, {d}! What is your budget?"},
                {"role": "user", "content": f"About {budget} dollars for {people} people."}]
        for k in range(r.randint(0, max_extra_turns)):
            msgs += [{"role": "assistant", "content": f"Noted. Any preference for day {k + 1} in {d}?"},
                     {"role": "user",
                      "content": r.choice(["A museum, please.", "Something by the sea.", "No, surprise me."])}]
        msgs.append({"role": "assistant",
                     "content": f"I found a trip to {d} for {people} within {budget} dollars. Shall I book it?"})
        out.append({"messages": msgs, "meta": {"flow": "travel", "flow_version": 1, "seed": i,
                                               "split": "eval" if i % eval_every == 0 else "train"}})
    return out


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
