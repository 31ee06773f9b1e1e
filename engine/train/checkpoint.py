"""Checkpoints: what a resumed run needs, written so that a crash never loses the last good one.

- `TrainState`: where the run was (epoch, step, data position), what it saw, its loss history.
- RNG state of Python and torch (and CUDA), so a resumed run draws the same numbers.
- `swap_in(tmp, path)`: a fully written, fsynced folder replaces the old one by renames (the parent
  fsynced after), so a kill -9 or a power cut in the middle of a save leaves the previous checkpoint
  intact; `recover(path)` puts it back if the crash fell between the two renames.
- `plan_of(cfg)` / `check_plan`: the settings that shape the run are saved with the state, and a
  resume with different ones is refused, naming them (it would silently train another plan).
- `load_torch`: checkpoints are read with `weights_only=True`, so a file brought in (a bundle) cannot
  run code when it is loaded.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from engine.errors import TrainingError

STATE_FILE = "trainer_state.json"


@dataclass
class TrainState:
    """What a resumed run needs besides weights/optimizer: where it was and what it saw."""

    epoch: int = 0
    step_in_epoch: int = 0  # optimizer steps done inside `epoch`
    step: int = 0
    tokens: int = 0  # every token forwarded (there is no padding)
    target_tokens: int = 0  # assistant tokens trained on
    best_loss: float = math.inf
    best_step: int = -1
    best_epoch: float = -1.0
    bad_evals: int = 0
    wall: float = 0.0  # seconds of training over all sessions
    losses: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    resumed_from: list[int] = field(default_factory=list)
    plan: dict[str, Any] = field(default_factory=dict)  # plan_of(cfg) of the run that wrote it


PLAN_FIELDS = ("base", "data", "dataset", "epochs", "max_steps", "lr", "warmup_ratio", "weight_decay", "max_grad_norm",
               "batch_size", "grad_accum", "max_len", "overlong", "optimizer", "seed", "eval_fraction", "system_prompt",
               "deepspeed", "micro_tokens")
"""TrainConfig fields a resumed run must share with its checkpoint (the others may change: threads, eval_every...)."""


def plan_of(cfg: Any, **facts: Any) -> dict[str, Any]:
    """The plan a checkpoint belongs to: PLAN_FIELDS of the config plus facts of the run (data size, ranks)."""
    return {**{f: getattr(cfg, f) for f in PLAN_FIELDS}, **facts}


def check_plan(saved: dict[str, Any], now: dict[str, Any], where: Path) -> None:
    """Refuse a resume whose settings differ from the checkpoint's, naming every differing field."""
    if not saved:  # a checkpoint from before plans were recorded
        return
    differ = [k for k in sorted(set(saved) | set(now)) if k in saved and k in now and saved[k] != now[k]]
    if differ:
        detail = ", ".join(f"{k} (checkpoint {saved[k]!r}, now {now[k]!r})" for k in differ)
        raise TrainingError(f"{where} was written by a run with other settings: {detail}; resume with the "
                            "checkpoint's settings, or pick another --out to start afresh")


def load_torch(path: Path) -> Any:
    """torch.load of a checkpoint file without executing pickled code (tensors and plain containers only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TrainingError(f"{path} is not a checkpoint this version can load safely ({e.__class__.__name__}); "
                            "delete the folder to start the run afresh") from None


def rng_state() -> dict[str, Any]:
    s = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def write_state(path: Path, state: TrainState) -> None:
    (path / STATE_FILE).write_text(json.dumps(state.__dict__))
    fsync(path / STATE_FILE)


def read_state(path: Path) -> TrainState:
    return TrainState(**json.loads((path / STATE_FILE).read_text()))


def is_resumable(path: Path) -> bool:
    recover(path)
    return (path / STATE_FILE).is_file()


def recover(path: Path) -> None:
    """A crash between swap_in's two renames leaves only `<path>.old`: put it back."""
    old = path.with_name(path.name + ".old")
    if not path.exists() and old.is_dir():
        old.rename(path)


def fresh_dir(path: Path) -> Path:
    """An empty `<path>.tmp` to write a new checkpoint into before `swap_in`."""
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def swap_in(tmp: Path, path: Path) -> None:
    """Replace `path` by the fully written `tmp`: its files reach the disk before the renames do."""
    fsync_tree(tmp)
    old = path.with_name(path.name + ".old")
    recover(path)
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    fsync(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for f in files:
            fsync(Path(folder) / f)
        fsync(Path(folder))
