"""A generated flow of any size for the canvas tests and measurements: a chain of stages, each an agent
question, the user's answer and a decision hub with two branches; some branches escalate to a terminal."""

from __future__ import annotations

from typing import Any

from engine.flow import Flow


def generated_flow(n_nodes: int = 200, name: str = "generated-200") -> Flow:
    """A valid flow with exactly `n_nodes` nodes (at least 6), without positions (the canvas lays it out)."""
    stages = max(1, (n_nodes - 1) // 5)
    while stages > 1 and stages * 5 + 1 + _escalations(stages) > n_nodes:
        stages -= 1
    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    extra = n_nodes - (stages * 5 + 1 + _escalations(stages))  # filler agent turns before the end
    for s in range(stages):
        a, u, h, y, no = (f"ask_{s}", f"answer_{s}", f"hub_{s}", f"yes_{s}", f"no_{s}")
        nodes += [
            {"id": a, "role": "agent", "label": f"Ask question {s}", "prompt": f"Ask the customer question {s}.",
             "examples": [f"Question {s}: may I ask?"]},
            {"id": u, "role": "user", "label": f"Answer {s}", "prompt": f"Answer question {s}.",
             "examples": [f"Answer {s}."]},
            {"id": h, "role": "decision", "label": f"Answer {s} ok?"},
            {"id": y, "role": "agent", "label": f"Confirm {s}", "prompt": f"Confirm answer {s}.",
             "examples": [f"Noted, answer {s}."]},
            {"id": no, "role": "agent", "label": f"Clarify {s}", "prompt": f"Clarify question {s}.",
             "examples": [f"Let me clarify question {s}."]},
        ]
        edges += [{"source": a, "target": u}, {"source": u, "target": h},
                  {"source": h, "target": y, "when": f"answer {s} is complete", "examples": [f"Answer {s}."]},
                  {"source": h, "target": no, "when": f"answer {s} is unclear", "examples": [f"Hmm {s}?"]}]
        nxt = f"ask_{s + 1}" if s + 1 < stages else "filler_0" if extra else "done"
        edges.append({"source": y, "target": nxt})
        if s % 8 == 7:
            nodes.append({"id": f"escalated_{s}", "role": "terminal", "label": f"Escalated {s}",
                          "outcome": "escalated"})
            edges.append({"source": no, "target": f"escalated_{s}"})
        else:
            edges.append({"source": no, "target": nxt})
    for k in range(extra):
        nodes.append({"id": f"filler_{k}", "role": "agent", "label": f"Wrap up {k}", "prompt": f"Wrap up step {k}.",
                      "examples": [f"Step {k} done."]})
        edges.append({"source": f"filler_{k}", "target": f"filler_{k + 1}" if k + 1 < extra else "done"})
    nodes.append({"id": "done", "role": "terminal", "label": "Done", "outcome": "success"})
    return Flow.model_validate({"name": name, "start": "ask_0", "system_prompt": "You are a helpful assistant.",
                                "nodes": nodes, "edges": edges})


def _escalations(stages: int) -> int:
    return sum(1 for s in range(stages) if s % 8 == 7)
