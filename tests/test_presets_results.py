"""`bench.results`: the metrics it pulls out of an evaluation report, its table and the README block."""

from __future__ import annotations

import json

import pytest

from bench.results import _extract, _kept_rows, table_lines, write_readme_table


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


def test_add_keeps_the_other_flows_rows_and_says_which_run_each_came_from(tmp_path):
    """`--add`: a later run of one flow joins an earlier run's rows; the README names both runs."""
    def row(flow):
        return {"flow": flow, "stages_s": {"generate": 1.0, "compile": 400.0, "evaluate": 1200.0}} | _extract(REPORT)

    earlier = {"flows": [row("travel"), row("insurance")], "wall_s": 3202.0, "date": "2026-12-03",
               "command": "python -m bench.results --scenarios 12", "machine": "cpu A", "engine": "vllm",
               "scenarios": 12, "repeats": 1, "concurrency": None}
    (tmp_path / "summary.json").write_text(json.dumps(earlier))
    kept = _kept_rows(tmp_path, ["insurance"])
    assert [r["flow"] for r in kept] == ["travel"] and kept[0]["run"]["date"] == "2026-12-03"
    later = row("insurance") | {"run": {"date": "2026-12-04", "machine": "cpu A", "engine": "vllm", "scenarios": 12,
                                        "command": "python -m bench.results --flows insurance --add", "repeats": 1}}
    summary = {"flows": [*kept, later], "wall_s": 1601.0, "date": "2026-12-04", "machine": "cpu A",
               "engine": "vllm", "command": later["run"]["command"], "scenarios": 12, "repeats": 1}
    lines = table_lines(summary)
    assert [ln.split("|")[1].strip() for ln in lines[2:8]] == ["travel"] * 3 + ["insurance"] * 3
    assert lines[-1].endswith("Stages total 53.4 min.")  # 2 x 1601 s of stages
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:start -->\n<!-- results:end -->\n")
    write_readme_table(readme, summary)
    text = readme.read_text()
    assert "- travel: `python -m bench.results --scenarios 12` on 2026-12-03, cpu A" in text
    assert "- insurance: `python -m bench.results --flows insurance --add` on 2026-12-04, cpu A" in text
    (tmp_path / "summary.json").write_text("{broken")
    with pytest.raises(SystemExit, match=r"summary.json is not valid JSON .*drop --add"):
        _kept_rows(tmp_path, ["zoom"])


def test_a_flow_that_is_not_there_is_one_line_not_a_traceback(tmp_path, capsys):
    from bench.results import main

    rc = main(["--flows", "nope", "--engine", "transformers", "--no-readme", "--out", str(tmp_path / "out")])
    assert rc == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: nope: no stored flow named 'nope'") and "Traceback" not in err
