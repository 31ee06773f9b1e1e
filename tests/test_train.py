"""engine.train.loop: real training of a tiny 2-layer model for a few steps on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from compile_helpers import conversations, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.errors import TrainingError
from engine.train.config import TrainConfig
from engine.train.loop import compile_model

ROOT = Path(__file__).resolve().parent.parent


def _cfg(tmp_path, model_dir, **kw) -> TrainConfig:
    data = write_jsonl(tmp_path / "data.jsonl", conversations(30))
    base = dict(out=str(tmp_path / "out"), base=str(model_dir), data=[str(data)], flow="travel", flow_version=1,
                lr=2e-3, batch_size=4, grad_accum=2, epochs=2, patience=None, precision="fp32", seed=3)
    return TrainConfig(**{**base, **kw})


def test_training_reduces_loss_and_writes_a_loadable_model(tmp_path, tiny_model_dir, store):
    out = compile_model(_cfg(tmp_path, tiny_model_dir, epochs=3))
    prov = json.loads((out / "subterra.json").read_text())
    losses = [e["eval_loss"] for e in prov["eval_loss"]]
    assert losses[-1] < losses[0] - 0.05, losses
    assert prov["train_loss"][-1]["loss"] < prov["train_loss"][0]["loss"]
    assert prov["flow"] == "travel" and prov["flow_version"] == 1 and prov["seed"] == 3
    assert prov["steps"] == len(prov["train_loss"]) and prov["tokens_seen"] > prov["target_tokens_seen"] > 0
    assert prov["best_step"] == prov["eval_loss"][-1]["step"] and prov["config"]["lr"] == 2e-3
    assert prov["wall_time_s"] > 0 and "git_revision" in prov
    # a plain Hugging Face directory: weights, tokenizer with chat template, generation config
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.chat_template and (out / "generation_config.json").is_file()
    assert not (out / ".train").exists()
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] > ids.shape[1]
    # registry and progress events for the studio
    rows = list(store.db.query("select name, path, flow, flow_version from models"))
    assert rows == [{"name": "out", "path": str(out.resolve()), "flow": "travel", "flow_version": 1}]
    job = store.list_jobs("compile")[0]
    events = json.loads(job["events"])
    assert job["status"] == "done" and events["last"]["step"] == prov["steps"]
    assert {"loss", "tokens_per_s", "eta_s"} <= set(events["last"])


def test_best_checkpoint_is_kept_and_training_stops_early(tmp_path, tiny_model_dir):
    # a far too high lr: the eval loss soon stops improving, so the run must stop and keep the best weights
    cfg = _cfg(tmp_path, tiny_model_dir, lr=0.3, epochs=30, eval_every=1, patience=2, warmup_ratio=0.0)
    out = compile_model(cfg)
    prov = json.loads((out / "subterra.json").read_text())
    assert prov["stopped_early"] and prov["steps"] < prov["total_steps"]
    assert [e["best"] for e in prov["eval_loss"][-2:]] == [False, False]
    assert prov["best_eval_loss"] == min(e["eval_loss"] for e in prov["eval_loss"]) or \
        abs(prov["best_eval_loss"] - min(e["eval_loss"] for e in prov["eval_loss"])) < 1e-4
    # the written weights are the best ones, not the last ones: re-evaluate them
    from engine.train import loop as train

    run = train.setup(cfg.model_copy(update={"base": str(out), "out": str(tmp_path / "re"), "add_to_registry": False}))
    assert train.validate(run) == pytest.approx(prov["best_eval_loss"], abs=2e-3)


def test_too_little_data_is_refused(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "one.jsonl", conversations(1))
    with pytest.raises(TrainingError, match="at least 2 conversations"):
        compile_model(_cfg(tmp_path, tiny_model_dir, data=[str(data)]))


@pytest.mark.slow
def test_resume_after_sigkill_continues_from_the_checkpoint(tmp_path, tiny_model_dir):
    cfg = _cfg(tmp_path, tiny_model_dir, epochs=4, save_every=2, add_to_registry=False)
    ref = compile_model(cfg.model_copy(update={"out": str(tmp_path / "ref")}))
    config = tmp_path / "cfg.json"
    config.write_text(cfg.model_dump_json())
    env = {**os.environ, "SUBTERRA_TRAIN_LOG": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "engine.train", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env, text=True)
    killed_at = None
    for line in proc.stdout:  # type: ignore[union-attr]
        if line.startswith("{") and json.loads(line)["step"] >= 5:
            killed_at = json.loads(line)["step"]
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    assert killed_at and proc.returncode == -signal.SIGKILL
    assert (Path(cfg.out) / ".train" / "last" / "trainer_state.json").is_file()
    assert not (Path(cfg.out) / "subterra.json").exists()
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "engine.train", str(config)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert time.monotonic() - t0 > 0
    prov = json.loads((Path(cfg.out) / "subterra.json").read_text())
    ref_prov = json.loads((ref / "subterra.json").read_text())
    assert prov["resumed_at_steps"] and 2 <= prov["resumed_at_steps"][0] <= killed_at
    assert prov["steps"] == ref_prov["steps"]
    # same data order, weights, Adam moments and schedule: the resumed run retraces the uninterrupted one
    ours = [e["loss"] for e in prov["train_loss"]]
    theirs = [e["loss"] for e in ref_prov["train_loss"]]
    assert ours == pytest.approx(theirs, abs=2e-3)
    a = AutoModelForCausalLM.from_pretrained(cfg.out).state_dict()
    b = AutoModelForCausalLM.from_pretrained(ref).state_dict()
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) < 1e-2


def test_bf16_weights_with_kahan_adamw_learn_as_fp32_does_and_resume_exactly(tmp_path, tiny_model_dir):
    """adamw-bf16 (the quick preset on bf16 CPUs): bf16 weights, moments and Kahan buffer; same learning."""
    from engine.train import loop as train

    ref = compile_model(_cfg(tmp_path, tiny_model_dir, out=str(tmp_path / "fp32"), precision="bf16", epochs=3,
                             add_to_registry=False))
    cfg = _cfg(tmp_path, tiny_model_dir, precision="bf16", epochs=3, optimizer="auto", add_to_registry=False)
    run = train.setup(cfg)
    assert run.cfg.optimizer == "adamw-bf16"  # auto, with bf16 compute
    assert {p.dtype for p in run.model.parameters()} == {torch.bfloat16}
    groups = train._groups(run, 0)
    for g in groups[:2]:
        train.train_step(run, g)
    state = run.stepper.optimizer.state[next(iter(run.model.parameters()))]
    assert {"exp_avg", "exp_avg_sq", "kahan_comp"} <= set(state) and state["exp_avg"].dtype == torch.bfloat16
    ckpt = tmp_path / "ckpt"
    run.stepper.save(ckpt, run.state)
    again = train.setup(cfg.model_copy(update={"out": str(tmp_path / "again")}))
    again.stepper.load(ckpt)
    p0, q0 = next(iter(run.model.parameters())), next(iter(again.model.parameters()))
    assert torch.equal(p0, q0)
    assert torch.equal(run.stepper.optimizer.state[p0]["kahan_comp"], again.stepper.optimizer.state[q0]["kahan_comp"])
    out = compile_model(cfg)
    prov, ref_prov = (json.loads((d / "subterra.json").read_text()) for d in (out, ref))
    assert prov["config"]["optimizer"] == "adamw-bf16"
    first, last = prov["eval_loss"][0]["eval_loss"], prov["eval_loss"][-1]["eval_loss"]
    assert last < first - 0.05
    # as far down as fp32 weights and moments get (within 5% of the loss they remove)
    gain, ref_gain = first - last, ref_prov["eval_loss"][0]["eval_loss"] - ref_prov["eval_loss"][-1]["eval_loss"]
    assert gain > 0.95 * ref_gain, (prov["eval_loss"], ref_prov["eval_loss"])


def test_optimizer_auto_follows_the_compute_dtype_and_bf16_weights_refuse_deepspeed(tmp_path):
    from engine.train.loop import resolve_optimizer

    cfg = TrainConfig(out=str(tmp_path / "o"), optimizer="auto")
    assert resolve_optimizer(cfg, torch.bfloat16) == "adamw-bf16"
    assert resolve_optimizer(cfg, None) == "adamw"
    assert resolve_optimizer(cfg.model_copy(update={"deepspeed": "zero3"}), torch.bfloat16) == "adamw"
    with pytest.raises(TrainingError, match="DeepSpeed runs use adamw"):
        resolve_optimizer(cfg.model_copy(update={"optimizer": "adamw-bf16", "deepspeed": "zero3"}), None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="8-bit AdamW and bf16 on GPU need a CUDA device")
@pytest.mark.gpu
def test_gpu_bf16_adamw8bit_trains(tmp_path, tiny_model_dir):
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is installed with the gpu extra")
    out = compile_model(_cfg(tmp_path, tiny_model_dir, optimizer="adamw8bit", precision="bf16", epochs=2))
    prov = json.loads((out / "subterra.json").read_text())
    assert prov["eval_loss"][-1]["eval_loss"] < prov["eval_loss"][0]["eval_loss"]
