"""`subterra chat` opens with the agent's greeting before the person types (issue 17)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from engine.cli import cli


@pytest.fixture(scope="module")
def compiled_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("greet") / "compiled-travel"
    shutil.copytree(tiny_model_dir, d)
    (d / "subterra.json").write_text(json.dumps({"flow": "travel", "flow_version": 1,
                                                 "system_prompt": "You are a helpful travel booking assistant."}))
    return d


def test_chat_greets_first_and_again_after_reset(compiled_dir: Path) -> None:
    args = ["chat", f"compiled:{compiled_dir}", "--temperature", "0", "--max-tokens", "4"]
    result = CliRunner().invoke(cli, [*args, "--greet"], input="Hello\n/reset\n/quit\n")
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.index("agent> ") < out.index("you> Hello")  # the agent spoke before the person typed
    assert out.count("agent> ") == 3  # greeting, reply, greeting after /reset
    plain = CliRunner().invoke(cli, args, input="Hello\n/quit\n")  # piped input: no greeting unless asked
    assert plain.exit_code == 0 and plain.output.count("agent> ") == 1
