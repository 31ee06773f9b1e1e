"""The studio's cost per canvas edit on the 55-node insurance flow, server side.

Measured: one edit as the editor page does it (engine.editing.add_node, validate, graph_of: the
payload the canvas redraws from). Baseline, same process: re-validating the flow's JSON with
pydantic alone, the least any change to a Flow costs. Target: well under 100 ms, so dragging and
typing stay responsive. (The in-browser figure, the 55-node flow drawn in ~1-2 s, is measured by
tests/test_ui_browser.py and written to test-artifacts/studio-insurance-load.txt.)
Run alone with `python -m bench studio`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from engine import editing
from engine.flow import Flow
from engine.store import SAMPLE_FLOWS_DIR
from engine.validate import validate

REPEATS = 30


def run() -> list[dict[str, Any]]:
    from engine.formats import load_flow_file
    from ui.components.flow_canvas import graph_of

    flow = load_flow_file(SAMPLE_FLOWS_DIR / "insurance.yaml")
    data = flow.model_dump(mode="json")

    def edit() -> dict[str, Any]:
        new, _ = editing.add_node(flow, "agent", 0, 0)
        return graph_of(new, validate(new))

    ms = _best_ms(edit)
    base_ms = _best_ms(lambda: Flow.model_validate(data))
    payload = len(json.dumps(edit()))
    return [{"name": "studio edit (insurance, 55 nodes)", "value": round(ms, 2), "unit": "ms",
             "baseline": round(base_ms, 2), "ratio": ms / base_ms, "target": "well under 100 ms",
             "note": f"add node + validate + canvas payload ({payload / 1024:.1f} KiB); "
                     "baseline = pydantic re-validation of the flow"}]


def _best_ms(fn: Any) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1000
