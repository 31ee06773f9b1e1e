"""engine.train.distributed: DeepSpeed ZeRO-3 config and a real two-rank run on CPU (gloo)."""

from __future__ import annotations

import json
import sys

import pytest
from compile_helpers import conversations, write_jsonl
from transformers import AutoModelForCausalLM

from engine.train.config import TrainConfig
from engine.train.distributed import deepspeed_config, launch, launch_command


def _cfg(tmp_path, model_dir, **kw) -> TrainConfig:
    data = write_jsonl(tmp_path / "data.jsonl", conversations(24))
    base = dict(out=str(tmp_path / "out"), base=str(model_dir), data=[str(data)], lr=2e-3, batch_size=2,
                grad_accum=2, epochs=1, patience=None, deepspeed="zero3", seed=5)
    return TrainConfig(**{**base, **kw})


def test_zero3_config_follows_the_training_settings(tmp_path):
    cfg = TrainConfig(out=str(tmp_path), grad_accum=8, max_grad_norm=0.5, precision="bf16", deepspeed="zero3")
    ds = deepspeed_config(cfg, world_size=4)
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["gradient_accumulation_steps"] == 8 and ds["train_batch_size"] == 32
    assert ds["gradient_clipping"] == 0.5 and ds["bf16"]["enabled"] is True
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_launch_commands(tmp_path):
    cpu = launch_command(tmp_path / "c.json", TrainConfig(out=str(tmp_path), deepspeed="zero3"), nprocs=2)
    assert cpu[:3] == [sys.executable, "-m", "torch.distributed.run"] and "--nproc_per_node=2" in cpu
    assert cpu[-3:] == ["-m", "engine.train", str(tmp_path / "c.json")]
    hosts = tmp_path / "hostfile"
    hosts.write_text("node1 slots=8\nnode2 slots=8\n")
    multi = launch_command(tmp_path / "c.json", TrainConfig(out=str(tmp_path), deepspeed="zero3", gpus=8), 0,
                           str(hosts))
    assert multi[0] == "deepspeed" and f"--hostfile={hosts}" in multi and "--module" in multi


@pytest.mark.slow
def test_two_rank_zero3_cpu_run_trains_and_writes_one_model(tmp_path, tiny_model_dir):
    cfg = _cfg(tmp_path, tiny_model_dir, max_steps=4, eval_every=2, save_every=2)
    out = launch(cfg, nprocs=2, master_port=29533)
    prov = json.loads((out / "subterra.json").read_text())
    assert prov["world_size"] == 2 and prov["steps"] == 4
    # both ranks' tokens are counted: each step sees 2 ranks × 2 micro-batches × 2 conversations
    assert prov["train_loss"][-1]["loss"] < prov["train_loss"][0]["loss"]
    assert prov["eval_loss"][-1]["eval_loss"] < prov["eval_loss"][0]["eval_loss"] + 1e-6
    model = AutoModelForCausalLM.from_pretrained(out)  # gathered from the ZeRO-3 shards
    assert sum(p.numel() for p in model.parameters()) > 1_000_000
