"""Crashes and resumes: a resume with other settings is refused naming them; a checkpoint cannot run
code when loaded; a crash between the checkpoint renames loses nothing; the finished model appears
whole (assembled aside, then renamed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from compile_helpers import conversations, write_jsonl

from engine.errors import TrainingError
from engine.train.checkpoint import TrainState, is_resumable, swap_in, write_state
from engine.train.config import TrainConfig
from engine.train.loop import compile_model


def _cfg(tmp_path: Path, model_dir: Path, **kw) -> TrainConfig:
    data = write_jsonl(tmp_path / "data.jsonl", conversations(12))
    base = dict(out=str(tmp_path / "out"), base=str(model_dir), data=[str(data)], flow="travel", flow_version=1,
                lr=2e-3, batch_size=4, grad_accum=1, max_steps=2, patience=None, precision="fp32", seed=3,
                keep_state=True, add_to_registry=False)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, TrainConfig]:
    tmp = tmp_path_factory.mktemp("resume")
    cfg = _cfg(tmp, tiny_model_dir)
    out = compile_model(cfg)
    return out, cfg


def test_the_finished_model_is_whole_and_nothing_is_left_aside(trained) -> None:
    out, _ = trained
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "subterra.json", "tokenizer.json", ".train"} <= names
    assert not out.with_name(out.name + ".final").exists() and not out.with_name(out.name + ".old").exists()
    assert is_resumable(out / ".train" / "last")


def test_resume_with_other_settings_is_refused_naming_them(trained) -> None:
    out, cfg = trained
    changed = cfg.model_copy(update={"batch_size": 2, "max_steps": 5, "threads": 1})  # threads may change
    with pytest.raises(TrainingError, match=r"other settings: batch_size \(checkpoint 4, now 2\), max_steps "
                                            r"\(checkpoint 2, now 5\); resume with the checkpoint's settings"):
        compile_model(changed)


class _Evil:
    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "pwned"))  # type: ignore[attr-defined]


def test_a_checkpoint_cannot_run_code_when_loaded(tmp_path: Path, tiny_model_dir: Path) -> None:
    cfg = _cfg(tmp_path, tiny_model_dir)
    last = Path(cfg.out) / ".train" / "last"
    last.mkdir(parents=True)
    marker = tmp_path / "marker"
    evil = _Evil()
    _Evil.marker = str(marker)  # type: ignore[attr-defined]
    torch.save({"model": evil}, last / "state.pt")
    write_state(last, TrainState())
    with pytest.raises(TrainingError, match="not a checkpoint this version can load safely"):
        compile_model(cfg)
    assert not marker.exists()


def test_a_crash_between_the_checkpoint_renames_keeps_the_last_good_one(tmp_path: Path) -> None:
    last = tmp_path / "last"
    last.mkdir()
    write_state(last, TrainState(step=7))
    last.rename(tmp_path / "last.old")  # killed after `last -> last.old`, before `last.tmp -> last`
    assert is_resumable(last)
    assert json.loads((last / "trainer_state.json").read_text())["step"] == 7
    new = tmp_path / "last.tmp"
    new.mkdir()
    write_state(new, TrainState(step=9))
    swap_in(new, last)
    assert json.loads((last / "trainer_state.json").read_text())["step"] == 9
    assert not (tmp_path / "last.old").exists() and not new.exists()


@pytest.mark.slow
def test_deepspeed_checkpoints_never_reuse_a_tag(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Each save writes a new tag and `latest` flips to it once complete; older tags go after."""
    from engine.train.distributed import launch

    cfg = _cfg(tmp_path, tiny_model_dir, max_steps=2, save_every=1, deepspeed="zero3", threads=1)
    out = launch(cfg, nprocs=1, master_port=29541)
    last = out / ".train" / "last"
    tags = sorted(p.name for p in last.iterdir() if p.is_dir())
    assert tags == ["step2"] and (last / "latest").read_text().strip() == "step2"
