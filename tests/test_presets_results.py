"""`bench.results`: the metrics it pulls out of an evaluation report, its table and the README block."""

from __future__ import annotations

from bench.results import _extract, table_lines, write_readme_table


def _s(mean, lo=None, hi=None):
    return {"n": 8, "mean": mean, "sd": 0.1, "ci_low": lo, "ci_high": hi}


def _agent(edges, success):
    return {"conversations": 8, "errors": 0, "pass_k": {"1": success}, "input_tokens": _s(900.0),
            "output_tokens": _s(120.0), "cost_usd": _s(0.0001), "api_equivalent_usd": _s(0.01), "wall_s": _s(3.0),
            "conformance": {"valid_edge_share": _s(edges, edges - 0.1, edges + 0.05), "success": _s(success),
                            "edit_distance_norm": _s(0.2)}}


REPORT = {
    "agents": {"compiled:/m": _agent(0.95, 0.75), "in-context:travel": _agent(0.4, 0.125),
               "orchestrator:travel": _agent(0.6, 0.25)},
    "comparisons": [{"a": "compiled:/m", "b": "in-context:travel",
                     "objective": {"valid_edge_share": {"mean_diff": 0.55, "p_value": 0.004, "p_holm": 0.008, "n_a": 8},
                                   "success": {"mean_diff": 0.6, "p_value": 0.02, "p_holm": 0.04, "n_a": 8}}}],
}


def test_extract_and_table(tmp_path):
    row = {"flow": "travel", "stages_s": {"generate": 9.0, "compile": 150.0, "evaluate": 300.0}} | _extract(REPORT)
    assert set(row["agents"]) == {"compiled", "in-context", "orchestrator"}
    assert row["agents"]["compiled"]["input_tokens"] == 900.0
    summary = {"flows": [row], "wall_s": 459.0, "command": "python -m bench.results --scenarios 8",
               "date": "2026-12-01", "machine": "test cpu", "engine": "transformers", "scenarios": 8, "repeats": 1}
    lines = table_lines(summary)
    assert lines[2].startswith("| travel | compiled | 0.95 [0.85, 1.00] | 0.75 |")
    assert lines[3].endswith("| 0.008 / 0.040 |")  # Holm-adjusted p of compiled vs in-context
    assert "| travel | orchestrator |" in lines[4] and lines[4].endswith("| - / - |")
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- results:start -->\nold\n<!-- results:end -->\n\nafter\n")
    write_readme_table(readme, summary)
    text = readme.read_text()
    assert "old" not in text and "on 2026-12-01, test cpu" in text and text.endswith("\n\nafter\n")
