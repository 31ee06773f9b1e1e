"""`subterra chat`: piped standard input (one message per line), /reset, /quit, per-turn tokens and cost,
and --compare side by side."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from fake_llm import FakeLLMServer

from engine.backends.base import Usage
from engine.backends.pricing import cost
from engine.cli import cli
from engine.cli.agents import side_by_side
from engine.formats import load_flow_file
from engine.serialize import serialize_flow
from engine.store import SAMPLE_FLOWS_DIR

ROOT = Path(__file__).resolve().parent.parent
TRAVEL = SAMPLE_FLOWS_DIR / "travel.yaml"
STATS = re.compile(r"↳ (\d+) tokens in · (\d+) out · (\d+) calls? · ([\d.]+) s(?: \(first token ([\d.]+) s\))? · "
                   r"(\$[\d.]+|cost unknown for \S+)")


@pytest.fixture(scope="module")
def compiled_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("chat") / "compiled-travel"
    shutil.copytree(tiny_model_dir, d)
    (d / "subterra.json").write_text(json.dumps({"flow": "travel", "flow_version": 1,
                                                 "system_prompt": "You are a helpful travel booking assistant."}))
    return d


def test_piped_stdin_one_message_per_line(compiled_dir: Path) -> None:
    """A real process with a pipe for stdin (no terminal): each line is a user message; /quit ends."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "chat", f"compiled:{compiled_dir}", "--temperature", "0", "--max-tokens", "5"],
        input="Hi there\n\nI want to fly to Rome\n/quit\nthis line is never read\n", text=True,
        capture_output=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.count("you> ") == 2 and "you> Hi there" in out and "you> I want to fly to Rome" in out
    assert out.count("agent> ") == 2 and "never read" not in out
    stats = STATS.findall(out)
    assert len(stats) == 2
    (in1, out1, calls1, *_r1, cost1), (in2, out2, *_r2) = stats
    assert calls1 == "1" and cost1 == "$0.000000"  # a local model costs nothing
    assert int(in2) > int(in1) and 0 < int(out1) <= 5  # the second turn carries the first in its history


def test_reset_starts_a_new_conversation(compiled_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["chat", f"compiled:{compiled_dir}", "--temperature", "0", "--max-tokens", "4"],
                                input="Hello\nHello again\n/reset\nHello\n")
    assert result.exit_code == 0, result.output
    ins = [int(s[0]) for s in STATS.findall(result.output)]
    assert "(conversation reset)" in result.output
    assert len(ins) == 3 and ins[1] > ins[0] and ins[2] == ins[0]  # after /reset the history is empty again


def test_in_context_over_an_api_reports_cost() -> None:
    with FakeLLMServer(reply=["Welcome to Wayfarer Travel! Where to?", "Lisbon is lovely. When?"],
                       models=["claude-sonnet-4-5"]) as srv:
        result = CliRunner().invoke(cli, ["chat", f"in-context:{TRAVEL}@openai:claude-sonnet-4-5",
                                          "--base-url", srv.openai_base_url],
                                    input="hi\nLisbon please\n")
    assert result.exit_code == 0, result.output
    assert "agent> Welcome to Wayfarer Travel! Where to?" in result.output
    assert "agent> Lisbon is lovely. When?" in result.output
    assert [q.system for q in srv.requests] == [serialize_flow(load_flow_file(TRAVEL))] * 2
    stats = STATS.findall(result.output)
    assert len(stats) == 2
    tokens_in, tokens_out, usd = int(stats[0][0]), int(stats[0][1]), float(stats[0][5].lstrip("$"))
    assert tokens_in > 500  # the whole procedure rides along every turn
    # the printed cost is the price table's for these tokens (no cache hits on the first turn)
    assert usd == pytest.approx(cost(Usage(input_tokens=tokens_in, output_tokens=tokens_out), "claude-sonnet-4-5").usd,
                                abs=1e-6)


def test_orchestrator_chat_shows_the_node(compiled_dir: Path) -> None:
    with FakeLLMServer(reply="Glad to help.") as srv:
        result = CliRunner().invoke(cli, ["chat", f"orchestrator:{TRAVEL}@openai:fake-model",
                                          "--base-url", srv.openai_base_url], input="hi\n")
    assert result.exit_code == 0, result.output
    assert "agent> Glad to help." in result.output and "· at greet" in result.output
    assert "cost unknown for fake-model" in result.output


def test_compare_runs_both_agents_side_by_side(compiled_dir: Path) -> None:
    a, b = f"compiled:{compiled_dir}", f"in-context:{TRAVEL}@local:{compiled_dir}"
    result = CliRunner().invoke(cli, ["chat", "--compare", a, b, "--temperature", "0", "--max-tokens", "4"],
                                input="Hello\nI want to go to Kyoto\n")
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith(f"A: {a}\nB: {b}\n"), out
    assert out.count("[A]") == 4 and out.count("[B]") == 4, out  # a column header and a stats line per turn
    stats = STATS.findall(out)
    assert len(stats) == 4, out
    compiled_in, in_context_in = int(stats[0][0]), int(stats[1][0])
    assert in_context_in > 5 * compiled_in  # same model, same message: the procedure is the difference
    assert sum(1 for ln in out.splitlines() if ln.startswith("[A]") and " | [B]" in ln) == 2


def test_compare_needs_two_agents(compiled_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["chat", "--compare", f"compiled:{compiled_dir}"], input="")
    assert result.exit_code == 2 and "--compare takes exactly two agents" in result.output


def test_bad_agent_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from engine.cli import main

    assert main(["chat", "travel"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read agent 'travel'; write compiled:DIR") and "Traceback" not in err


def test_side_by_side_wraps_into_columns() -> None:
    text = side_by_side(["[a]", "[b]"], ["short", "a much longer reply " * 5], width=60)
    lines = text.splitlines()
    assert lines[0].startswith("[a]") and " | [b]" in lines[0]
    assert all(len(ln) <= 60 for ln in lines) and len(lines) > 3
