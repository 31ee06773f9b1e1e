"""`subterra compile`, `subterra models`, `subterra bundle export|import` end to end (tiny model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from compile_helpers import conversations, write_jsonl

from engine.cli import main
from engine.train.config import TrainConfig


@pytest.fixture
def data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "travel.jsonl", conversations(20))


def test_compile_then_list_then_refuse_to_overwrite(tmp_path, data, tiny_model_dir, capsys, store):
    out = tmp_path / "model"
    args = ["compile", "travel", "--data", str(data), "--base", str(tiny_model_dir), "--max-steps", "3",
            "--lr", "1e-3", "--batch-size", "2", "--grad-accum", "2", "--out", str(out), "--name", "travel-tiny"]
    assert main(args) == 0
    assert "compiled" in capsys.readouterr().out
    prov = json.loads((out / "subterra.json").read_text())
    assert prov["steps"] == 3 and prov["flow"] == "travel" and prov["flow_version"] == store.flow_version("travel")
    # the flow's minimal system prompt is what the data carries; the config records it
    assert prov["config"]["system_prompt"] == store.get_flow("travel").system_prompt
    assert main(["models"]) == 0
    listing = capsys.readouterr().out
    assert listing.startswith("travel-tiny\ttravel@") and str(out.resolve()) in listing
    assert main(args) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {out} already holds a compiled model; pick another --out (or --name) or delete it")


def test_compile_needs_data_and_a_loadable_base(tmp_path, data, capsys):
    assert main(["compile", "travel", "--out", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: say what to train on: --dataset NAME (see `subterra datasets list`) or --data FILE.jsonl")
    assert main(["compile", "travel", "--data", str(data), "--base", str(tmp_path / "nope"),
                 "--out", str(tmp_path / "o")]) == 1
    assert "cannot load base model" in capsys.readouterr().err
    assert main(["compile", "no-such-flow", "--data", str(data)]) == 2


def test_bundle_export_and_import(tmp_path, data, tiny_model_dir, capsys, store):
    bundle = tmp_path / "bundle"
    assert main(["bundle", "export", "travel", "--data", str(data), "--base", str(tiny_model_dir), "--gpus", "4",
                 "--host", "gpu1", "--host", "gpu2", "--epochs", "5", "--out", str(bundle)]) == 0
    assert "./run.sh" in capsys.readouterr().out
    cfg = TrainConfig.model_validate_json((bundle / "train_config.json").read_text())
    assert cfg.out == "output" and cfg.data == ["data.jsonl"] and cfg.base == "base" and cfg.epochs == 5
    assert cfg.deepspeed == "zero3" and cfg.gpus == 4
    assert len((bundle / "data.jsonl").read_text().splitlines()) == 20
    assert (bundle / "hostfile").read_text() == "gpu1 slots=4\ngpu2 slots=4\n"
    assert "deepspeed --hostfile=hostfile --module engine.train train_config.json" in (bundle / "run.sh").read_text()
    assert (bundle / "src" / "engine" / "train" / "loop.py").is_file() and (bundle / "base" / "config.json").is_file()
    assert json.loads((bundle / "ds_config.json").read_text())["zero_optimization"]["stage"] == 3
    # importing refuses a bundle that has not run yet, then takes a trained model dir
    assert main(["bundle", "import", str(bundle)]) == 1
    assert "holds no trained model" in capsys.readouterr().err
    trained = tmp_path / "trained"
    assert main(["compile", "travel", "--data", str(data), "--base", str(tiny_model_dir), "--max-steps", "1",
                 "--out", str(trained)]) == 0
    capsys.readouterr()
    assert main(["bundle", "import", str(trained), "--name", "from-gpu-box"]) == 0
    rows = {r["name"]: r for r in store.db.query("select name, path, flow from models")}
    assert rows["from-gpu-box"]["flow"] == "travel" and Path(rows["from-gpu-box"]["path"]).is_dir()
