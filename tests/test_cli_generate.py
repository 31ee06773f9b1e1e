"""`subterra generate` and `subterra datasets` as a user runs them (in process, real store)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_llm import FakeLLMServer

from engine.cli import main
from engine.datasets import load_jsonl

ROOT = Path(__file__).resolve().parent.parent
TRAVEL = ROOT / "sample_flows" / "travel.yaml"


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("ANTHROPIC_BASE_URL", "SUBTERRA_ANTHROPIC_MODEL", "OPENAI_API_KEY", "SUBTERRA_OPENAI_MODEL"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-not-real")


def test_generate_writes_jsonl_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "travel.jsonl"
    assert main(["generate", str(TRAVEL), "-n", "30", "--out", str(out), "-q"]) == 0
    err = capsys.readouterr().err
    assert "estimate: 30 conversations" in err and "dataset 'travel': 30/30 conversations (30 new" in err
    records = load_jsonl(out)
    assert len(records) == 30
    rec = records[0]
    assert set(rec) == {"messages", "meta"}
    assert rec["messages"][0]["role"] == "system"
    assert {"flow", "flow_version", "path", "message_nodes", "scenario", "seed", "split"} <= set(rec["meta"])
    assert rec["meta"]["flow"] == "travel" and rec["meta"]["split"] in ("train", "eval")
    # the same command again: nothing to do, and --out still holds the whole dataset
    out.unlink()
    assert main(["generate", str(TRAVEL), "-n", "30", "--out", str(out), "-q"]) == 0
    err = capsys.readouterr().err
    assert "nothing to do: the dataset already holds every conversation" in err
    assert len(load_jsonl(out)) == 30
    # a second seed concatenates into the same dataset
    assert main(["generate", "travel", "-n", "10", "--seed", "5", "--out", str(out), "-q"]) == 0
    assert len(load_jsonl(out)) == 40
    capsys.readouterr()
    assert main(["datasets", "list"]) == 0
    assert "travel@1" in capsys.readouterr().out
    assert main(["datasets", "export", "travel", str(tmp_path / "eval.jsonl"), "--split", "eval"]) == 0
    assert all(r["meta"]["split"] == "eval" for r in load_jsonl(tmp_path / "eval.jsonl"))


def test_anthropic_without_a_model_says_which_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", str(TRAVEL), "-n", "2", "--backend", "anthropic"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: no Anthropic model chosen; pass --model (for example claude-sonnet-4-5) or set SUBTERRA_ANTHROPIC_MODEL"
    )


def test_unreachable_backend_exits_nonzero(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generate", str(TRAVEL), "-n", "2", "--backend", "anthropic", "--model", "claude-haiku-4-5",
                 "--base-url", "http://127.0.0.1:9"])
    assert code == 1
    assert ("error: cannot reach the Anthropic API at http://127.0.0.1:9" in capsys.readouterr().err)


def test_invalid_flow_exits_nonzero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "bad", "start": "nowhere", "nodes": [{"id": "a", "role": "agent"}]}))
    assert main(["generate", str(bad), "-n", "2"]) == 1
    assert "error: flow 'bad' has errors, fix them before generating" in capsys.readouterr().err


def test_openai_backend_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o.jsonl"
    with FakeLLMServer(reply="Certainly.") as srv:
        srv.inject("429", retry_after=0.01)
        code = main(["generate", str(TRAVEL), "-n", "3", "--backend", "openai", "--model", "fake-model",
                     "--base-url", srv.openai_base_url, "--dataset", "travel-oai", "--out", str(out), "-q"])
    assert code == 0, capsys.readouterr().err
    recs = load_jsonl(out)
    assert len(recs) == 3 and all(r["meta"]["backend"] == "openai" for r in recs)
    assert "no price known for this model" in capsys.readouterr().err


def test_max_cost_refuses_to_start(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generate", str(TRAVEL), "-n", "50", "--backend", "anthropic", "--model", "claude-opus-4-1",
                 "--base-url", "http://127.0.0.1:9", "--max-cost", "0.01"])
    assert code == 1
    err = capsys.readouterr().err
    assert "error: the estimated cost $" in err and "exceeds --max-cost $0.01; lower -n or raise --max-cost" in err


def test_local_backend_through_the_cli(tiny_model_dir: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "local.jsonl"
    code = main(["generate", str(TRAVEL), "-n", "1", "--backend", "local", "--model", str(tiny_model_dir),
                 "--dataset", "travel-local", "--out", str(out), "--concurrency", "1", "--max-tokens", "12", "-q"])
    err = capsys.readouterr().err
    # a 2-layer random model writes gibberish, but whole conversations, stored and exported
    assert code == 0, err
    (rec,) = load_jsonl(out)
    assert rec["meta"]["backend"] == "local" and len(rec["messages"]) >= 3
