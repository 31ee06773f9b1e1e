"""Presets (`--preset quick|standard|paper`), the plan printed before a compile, and the fused head + loss."""

from __future__ import annotations

import json

import pytest
import torch
from compile_helpers import conversations, write_jsonl

from engine.cli import main
from engine.errors import TrainingError
from engine.train.config import TrainConfig
from engine.train.loss import fused_linear_cross_entropy
from engine.train.presets import PRESETS, apply_preset, get_preset


def test_every_preset_is_valid_trainconfig_values_and_explicit_values_win():
    for p in PRESETS.values():
        TrainConfig(out="x", **p.values)
    vals = apply_preset("quick", {"lr": 3e-4, "epochs": 7, "out": "x"}, explicit={"lr"})
    assert vals["lr"] == 3e-4 and vals["epochs"] == 1 and vals["preset"] == "quick"
    paper = get_preset("paper").values
    assert paper["lr"] == 2e-5 and paper["batch_size"] * paper["grad_accum"] == 16 and paper["epochs"] == 20
    with pytest.raises(TrainingError, match="unknown preset 'fast'; choose one of: quick, standard, paper"):
        get_preset("fast")


def test_compile_prints_the_plan_and_flags_override_the_preset(tmp_path, tiny_model_dir, capsys, store):
    data = write_jsonl(tmp_path / "d.jsonl", conversations(12))
    out = tmp_path / "m"
    assert main(["compile", "travel", "--data", str(data), "--base", str(tiny_model_dir), "--preset", "quick",
                 "--max-steps", "2", "--lr", "1e-3", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "plan (quick): 2 steps over 9 conversations (3 held out)" in captured.err
    assert "estimated training time on this machine:" in captured.err
    cfg = json.loads((out / "subterra.json").read_text())["config"]
    assert cfg["preset"] == "quick" and cfg["lr"] == 1e-3 and cfg["max_steps"] == 2  # the flags
    assert cfg["micro_tokens"] == PRESETS["quick"].values["micro_tokens"] and cfg["grad_accum"] == 1  # the preset


def test_default_preset_on_cpu_is_quick(tmp_path, tiny_model_dir, capsys, store):
    data = write_jsonl(tmp_path / "d.jsonl", conversations(8))
    out = tmp_path / "m"
    assert main(["compile", "travel", "--data", str(data), "--base", str(tiny_model_dir), "--max-steps", "1",
                 "--out", str(out)]) == 0
    cfg = json.loads((out / "subterra.json").read_text())["config"]
    assert cfg["preset"] == ("standard" if torch.cuda.is_available() else "quick")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_head_loss_matches_full_logits_cross_entropy(dtype):
    torch.manual_seed(0)
    h = torch.randn(37, 16, requires_grad=True)
    w = (torch.randn(101, 16) * 0.3).requires_grad_()
    y = torch.randint(0, 101, (37,))
    ref = torch.nn.functional.cross_entropy(h.to(dtype) @ w.to(dtype).T, y, reduction="sum")
    ref.float().backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    out = fused_linear_cross_entropy(h, w, y, chunk=8, dtype=dtype)  # 5 chunks, the last one short
    (0.5 * out).backward()
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert torch.allclose(out, ref.float(), rtol=tol)
    assert torch.allclose(h.grad, 0.5 * gh, atol=tol * 10) and torch.allclose(w.grad, 0.5 * gw, atol=tol * 10)


def test_fused_path_trains_like_the_logits_path(tmp_path, tiny_model_dir):
    """Same data, same seed: the fused chunked loss and transformers' logits_to_keep loss agree step by step,
    and cutting micro-batches into passes of micro_tokens gives the same gradient."""
    from engine.train.loop import fit, setup

    data = write_jsonl(tmp_path / "d.jsonl", conversations(10, max_extra_turns=3))
    losses = []
    for i, extra in enumerate([{"head_chunk": 0}, {"head_chunk": 16}, {"head_chunk": 16, "micro_tokens": 64}]):
        cfg = TrainConfig(out=str(tmp_path / f"o{i}"), base=str(tiny_model_dir), data=[str(data)], max_steps=3,
                          batch_size=4, grad_accum=1, lr=1e-3, precision="fp32", patience=None, add_to_registry=False,
                          **extra)
        run = setup(cfg)
        fit(run)
        losses.append([r["loss"] for r in run.state.losses])
    assert losses[0] == pytest.approx(losses[1], rel=1e-3) and losses[1] == pytest.approx(losses[2], rel=1e-3)
