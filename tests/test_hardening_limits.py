"""Numbers and sizes: non-finite numbers in a flow file, absurd conversation counts, max_tokens and
seeds out of range get one clear line before any work, and a refused generation leaves no dataset.
Runs that could fill the memory run in a subprocess with its address space capped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.store import Store

ROOT = Path(__file__).resolve().parent.parent
TRAVEL = ROOT / "sample_flows" / "travel.yaml"


def _flow_json(tmp_path: Path, text_patch: tuple[str, str]) -> Path:
    from engine.formats import load_flow_file

    data = json.dumps(load_flow_file(TRAVEL).model_dump(mode="json"))
    doc = json.loads(data)
    doc["nodes"][0]["position"] = {"x": 1.5, "y": 2.5}
    text = json.dumps(doc).replace('"x": 1.5', text_patch[1])
    f = tmp_path / "flow.json"
    f.write_text(text)
    return f


@pytest.mark.parametrize("literal", ['"x": NaN', '"x": Infinity', '"x": -Infinity', '"x": 1e999'])
def test_non_finite_numbers_in_a_flow_file_are_one_line(tmp_path: Path, capsys, literal: str) -> None:
    from engine.cli import main

    f = _flow_json(tmp_path, ("", literal))
    assert main(["validate", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{f}: nodes" in err and "finite number" in err


def _capped(args: list[str], mem_gb: float = 3.0, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    code = ("import resource, sys; "
            f"resource.setrlimit(resource.RLIMIT_AS, ({int(mem_gb * 2**30)}, {int(mem_gb * 2**30)})); "
            "from engine.cli import main; sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ))


@pytest.mark.parametrize("args, message", [
    (["-n", "2000000000"], "-n"),
    (["-n", "5", "--max-tokens", "4000000000"], "--max-tokens"),
    (["-n", "5", "--seed", str(2**64 + 5)], "seed"),
])
def test_absurd_generation_sizes_are_refused_before_any_work(subterra_home: Path, args: list[str],
                                                             message: str) -> None:
    r = _capped(["generate", str(TRAVEL), "-q", *args])
    assert r.returncode in (1, 2), r.stderr[-2000:]
    assert "Traceback" not in r.stderr and message in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 4  # click's usage line + one error
    assert Store(seed=False).dataset_names() == []


def test_a_refused_generation_leaves_no_dataset(subterra_home: Path, capsys, monkeypatch) -> None:
    from engine.cli import main

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-unused")

    code = main(["generate", str(TRAVEL), "-n", "3", "--backend", "anthropic", "--base-url", "http://127.0.0.1:9",
                 "--model", "claude-sonnet-4-5",
                 "--max-cost", "0", "-q"])
    err = capsys.readouterr().err
    assert code == 1 and "exceeds --max-cost" in err, err
    assert Store(seed=False).dataset_names() == []
