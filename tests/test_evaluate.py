"""End-to-end evaluations: in-process agents on a small flow, and `subterra eval` on the travel flow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from eval_helpers import MINI_TRAVEL, FlowWalkerAgent, RandomAgent, mini_flow
from fake_llm import FakeLLMServer
from scipy.stats import mannwhitneyu

from engine.cli import main
from engine.evaluate.judge import CRITERIA
from engine.evaluate.run import EvalConfig, compare_runs, run_evaluation
from engine.evaluate.schema import EvalReport
from engine.store import SAMPLE_FLOWS_DIR, Store

HAS_TRAVEL = (SAMPLE_FLOWS_DIR / "travel.yaml").is_file()


@pytest.fixture
def flow_file(tmp_path: Path) -> Path:
    p = tmp_path / "minitravel.json"
    p.write_text(json.dumps(MINI_TRAVEL))
    return p


def test_evaluation_separates_a_faithful_agent_from_a_random_one(flow_file, tmp_path, store):
    flow = mini_flow()
    agents = {"walker": FlowWalkerAgent(flow), "random": RandomAgent(flow)}
    config = EvalConfig(flow=str(flow_file), agents=list(agents), scenarios=8, repeats=2, concurrency=3,
                        out=str(tmp_path / "out"), name="mini-eval")
    result = run_evaluation(config, agents=agents, store=store)
    r = result.report
    walker, rnd = r.agents["walker"], r.agents["random"]
    assert walker.conversations == 16 and walker.errors == 0
    assert walker.conformance.valid_edge_share.mean == 1.0
    assert walker.conformance.edit_distance.mean == 0.0
    assert walker.conformance.success.mean == 1.0 and walker.pass_k["2"] == 1.0
    assert rnd.conformance.valid_edge_share.mean < 0.5
    ci = walker.turns
    assert ci.ci_low <= ci.mean <= ci.ci_high
    # paired by scenario index: 8 pairs; the walker is significantly more faithful than random
    comp = next(c for c in r.comparisons if (c.a, c.b) == ("walker", "random"))
    edge = comp.objective["valid_edge_share"]
    assert edge.n_a == 8 and edge.mean_diff > 0.5 and edge.p_holm < 0.05 and edge.significant
    # cost: the compiled walker self-hosted vs the in-context random agent's tokens at API prices
    pair = next(p for p in r.cost.pairs if p.compiled == "walker" and p.versus == "random")
    assert pair.ratio > 60 and pair.break_even_conversations > 0
    assert r.provenance.flow == "minitravel" and r.provenance.seed == 0
    # stored, and the files written
    row = store.db["evaluations"].get(result.id)
    assert row["name"] == "mini-eval" and json.loads(row["report"])["agents"]["walker"]["conversations"] == 16
    assert EvalReport.model_validate_json(row["report"]) == r  # the stored report reads back into the same model
    html = Path(result.html_path).read_text()
    assert "Plotly.newPlot" in html and "<script src=\"http" not in html  # plotly inline: works offline
    assert "Node mapping" in html and "valid-edge share" in html
    assert json.loads(Path(result.json_path).read_text())["agents"]["random"]["conversations"] == 16
    # across runs (here the same report twice) the comparison is unpaired: Mann-Whitney U on conversations
    across = compare_runs(r, r, "walker", "random")
    walker_edges = [c.metrics.valid_edge_share for c in r.conversations if c.agent == "walker"]
    random_edges = [c.metrics.valid_edge_share for c in r.conversations if c.agent == "random"]
    ref = mannwhitneyu(walker_edges, [x for x in random_edges if x is not None], alternative="two-sided")
    assert across.objective["valid_edge_share"].p_value == pytest.approx(ref.pvalue)
    assert across.objective["valid_edge_share"].n_a == 16 and across.criteria is None


def test_the_progress_line_shows_rate_and_eta_and_writes_a_log_sparingly(capsys):
    from engine.cli.progress import FractionLine

    assert "50%" in FractionLine("evaluate").text(0.5, "conversation 3/6", 60.0)
    assert "ETA   60s" in FractionLine("evaluate").text(0.5, "conversation 3/6", 60.0)
    assert "50.0%/min" in FractionLine("evaluate").text(0.5, "x", 60.0)
    line = FractionLine("evaluate", every_s=3600)  # stderr is not a tty under capsys: whole lines, throttled
    for i in range(1, 10):
        line(i / 10, f"conversation {i}/10")
    line(1.0, "done")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "conversation 1/10" in err[0] and "100%" in err[1]


def test_eval_rejects_a_duplicate_agent(flow_file, capsys):
    rc = main(["eval", str(flow_file), "--agent", "compiled:/x", "--agent", "compiled:/x"])
    assert rc == 1
    assert capsys.readouterr().err.strip() == "error: the same --agent is given twice; give each agent once"


def _compiled_dir(src: Path, dest: Path, flow_name: str, system_prompt: str) -> Path:
    shutil.copytree(src, dest)
    (dest / "subterra.json").write_text(json.dumps({"flow": flow_name, "flow_version": 1,
                                                    "system_prompt": system_prompt}))
    return dest


@pytest.mark.skipif(not HAS_TRAVEL, reason="sample_flows/travel.yaml is not in this checkout")
def test_subterra_eval_travel_offline_with_a_tiny_compiled_model(tiny_model_dir, tmp_path, capsys, monkeypatch):
    travel = Store().get_flow("travel")
    compiled = _compiled_dir(tiny_model_dir, tmp_path / "compiled", "travel", travel.system_prompt)
    out = tmp_path / "report"

    def verdict(req) -> str:  # two judges on the local fake server; the second is one point harsher
        harsh = req.api == "anthropic"
        return json.dumps({c: 4 - harsh for c in CRITERIA} | {"user_posed_challenge": True, "rationale": "ok"})

    with FakeLLMServer(reply=verdict) as srv:
        monkeypatch.setenv("OPENAI_BASE_URL", srv.openai_base_url)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
        rc = main(["eval", "travel", "--agent", f"compiled:{compiled}",
                   "--agent", f"in-context:travel@local:{tiny_model_dir}",
                   "--scenarios", "2", "--max-turns", "2", "--agent-max-tokens", "8", "--concurrency", "2",
                   "--judge", "openai", "--judge-model", "judge-a",
                   "--judge2", "anthropic", "--judge2-model", "judge-b",
                   "--out", str(out), "--json"])
        assert rc == 0, capsys.readouterr().err
        judged = [r for r in srv.requests if r.api in ("openai", "anthropic")]
    assert len(judged) == 8  # 2 agents × 2 scenarios × 2 judges
    assert all("travel booking assistant for" not in r.last_user.split("The conversation:")[0] for r in judged)
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert "evaluate [" in captured.err and "ETA" in captured.err  # the progress line, on stderr only
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.html").stat().st_size > 1_000_000  # plotly.js embedded
    specs = [f"compiled:{compiled}", f"in-context:travel@local:{tiny_model_dir}"]
    assert list(report["agents"]) == specs and list(printed["agents"]) == specs
    for spec in specs:
        a = report["agents"][spec]
        assert a["conversations"] == 2 and a["errors"] == 0, report["conversations"]
        assert a["input_tokens"]["mean"] > 0 and a["output_tokens"]["mean"] > 0
    # the in-context prompt carries the serialized flowchart: many more input tokens per conversation
    assert report["agents"][specs[1]]["input_tokens"]["mean"] > 2 * report["agents"][specs[0]]["input_tokens"]["mean"]
    assert report["agents"][specs[0]]["kind"] == "compiled" and report["agents"][specs[1]]["kind"] == "in-context"
    assert report["comparisons"][0]["paired_by"] == "scenario index"
    assert Store().db["evaluations"].count == 1
    crit = report["agents"][specs[0]]["criteria"]
    assert crit["task_success"]["mean"] == 4.0 and report["agents"][specs[0]]["failure_rate"] == 0.0
    agreement = {a["criterion"]: a for a in report["judges"]["agreement"]}
    assert report["judges"]["judges"] == ["openai:judge-a", "anthropic:judge-b"]
    assert agreement["naturalness"]["mean_diff"] == 1.0 and agreement["naturalness"]["within_one"] == 1.0
    assert agreement["naturalness"]["exact"] == 0.0
    assert set(report["comparisons"][0]["criteria"]) == set(CRITERIA)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRAVEL, reason="sample_flows/travel.yaml is not in this checkout")
def test_subterra_eval_travel_with_the_bundled_smollm2(smollm2_dir, tmp_path, capsys, monkeypatch):
    """The bundled 135M model as the compiled agent's stand-in vs the same model in-context; with no --out the
    report goes to the data dir, not the folder the command ran in."""
    from engine.store import data_dir

    travel = Store().get_flow("travel")
    compiled = _compiled_dir(smollm2_dir, tmp_path / "compiled", "travel", travel.system_prompt)
    monkeypatch.chdir(tmp_path)
    rc = main(["eval", "travel", "--agent", f"compiled:{compiled}", "--agent", "in-context:travel@local",
               "--scenarios", "3", "--max-turns", "4", "--agent-max-tokens", "48", "--concurrency", "2"])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["compiled", "subterra-home"]  # nothing else where it ran
    (out,) = (data_dir() / "reports").glob("travel-eval-*")
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    assert all(a["errors"] == 0 and a["conversations"] == 3 for a in report["agents"].values())


def test_eval_fails_fast_naming_the_judge_flag(flow_file, capsys, monkeypatch):
    monkeypatch.delenv("SUBTERRA_ANTHROPIC_MODEL", raising=False)
    rc = main(["eval", str(flow_file), "--agent", "compiled:/nonexistent", "--judge", "anthropic"])
    assert rc == 1
    assert capsys.readouterr().err.strip() == ("error: no Anthropic model chosen; pass --judge-model (for example "
                                               "claude-sonnet-4-5) or set SUBTERRA_ANTHROPIC_MODEL")
    job = Store().list_jobs("evaluate")[0]
    assert job["status"] == "failed"  # the studio sees why, too
