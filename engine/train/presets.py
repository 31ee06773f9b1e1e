"""Named training recipes: values of `TrainConfig` fields, chosen with `--preset NAME`.

A preset only sets fields of `TrainConfig` (the single source of every option), so an explicit
flag always wins over it (`apply_preset`). `quick` is the default on a CPU, `standard` on a GPU.

- `quick`: a coffee-break compile on a laptop CPU (travel, data included, in about 3 minutes and
  under 3 GB on 2 cores). One epoch of ~120 conversations in micro-batches of 4 without
  accumulation, lr 1e-4: a 135M model needs a larger step than the paper's 3B/8B ones (a run with
  the paper's 2e-5 for 51 steps ended at eval loss 1.02; 1e-4 for 30 steps reached 0.28). Memory:
  where the CPU runs bf16 fast, weights, gradients and AdamW states are bf16 with Kahan-compensated
  updates (`adamw-bf16`, 8 instead of 16 bytes a parameter); activation checkpointing and the fused
  chunked head keep activations small (measured on travel here: peak 4.9 → 2.45 GB, eval loss the same).
  Travel from zero on 2 AVX512-BF16 cores: `generate -n 120` 2.9 s, `compile --preset quick` 165 s wall
  (27 steps, 150 s training, eval loss 0.55), 2.80 GB peak; an fp32-only machine takes about 1.5x as long.
- `standard`: more data and epochs with early stopping by held-out loss, for a model to keep.
- `paper`: the paper's recipe for 3B/8B on GPUs (PAPER.md, "Training setups"): full parameters,
  Qwen2.5-3B-Instruct, bf16, 8-bit AdamW, lr 2e-5 with cosine decay, effective batch 16 through
  gradient accumulation, 20 epochs, best checkpoint by held-out eval loss (patience 3 — the paper's
  runs peaked at epochs 2-4). The 8B runs add `--deepspeed zero3 --gpus 8` and effective batch 32.
"""

from __future__ import annotations

import math
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engine.errors import TrainingError
from engine.train.config import TrainConfig


class Preset(BaseModel):
    """A named set of TrainConfig values, plus how much data it is meant for."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="What `--preset` takes.")
    summary: str = Field(description="One line for `--help` and the studio.")
    values: dict[str, Any] = Field(description="TrainConfig field values (validated against TrainConfig).")
    conversations: int = Field(description="Conversations to generate for it (`subterra generate -n`).")


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(name="quick", conversations=120,
           summary="CPU coffee break: 1 epoch of ~120 conversations, lr 1e-4, batch 4, ~3 min / <3 GB for 135M",
           values={"epochs": 1, "max_steps": None, "lr": 1e-4, "warmup_ratio": 0.1, "batch_size": 4,
                   "grad_accum": 1, "max_len": 1536, "eval_fraction": 0.05, "eval_every": None, "patience": None,
                   "head_chunk": 512, "micro_tokens": None, "gradient_checkpointing": True, "precision": "auto",
                   "optimizer": "auto"}),
    Preset(name="standard", conversations=300,
           summary="a model to keep: 3 epochs of ~300 conversations, lr 5e-5, effective batch 8, early stop",
           values={"epochs": 3, "max_steps": None, "lr": 5e-5, "warmup_ratio": 0.05, "batch_size": 4,
                   "grad_accum": 2, "max_len": 2048, "eval_fraction": 0.1, "eval_every": None, "patience": 2,
                   "head_chunk": 0, "micro_tokens": None, "gradient_checkpointing": False, "precision": "auto",
                   "optimizer": "adamw"}),
    Preset(name="paper", conversations=2125,
           summary="the paper's GPU recipe: Qwen2.5-3B, bf16, 8-bit AdamW, lr 2e-5, effective batch 16, 20 epochs",
           values={"base": "Qwen/Qwen2.5-3B-Instruct", "epochs": 20, "max_steps": None, "lr": 2e-5,
                   "warmup_ratio": 0.05, "batch_size": 4, "grad_accum": 4, "max_len": 4096, "eval_fraction": 0.1,
                   "eval_every": None, "patience": 3, "head_chunk": 2048, "micro_tokens": None,
                   "gradient_checkpointing": True, "precision": "bf16", "optimizer": "adamw8bit"}),
)}

for _p in PRESETS.values():  # a preset naming a field TrainConfig lacks is a bug: fail at import
    TrainConfig(out="check", **_p.values)


def preset_names() -> list[str]:
    return list(PRESETS)


def default_preset() -> str:
    """`quick` on a CPU-only machine, `standard` where a CUDA GPU is visible."""
    import torch

    return "standard" if torch.cuda.is_available() else "quick"


def get_preset(name: str | None) -> Preset:
    name = name or default_preset()
    if name not in PRESETS:
        raise TrainingError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def apply_preset(name: str | None, values: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
    """`values` (TrainConfig fields) with the preset's values in place of every field not in `explicit`."""
    preset = get_preset(name)
    out = dict(values)
    for k, v in preset.values.items():
        if k not in explicit:
            out[k] = v
    out["preset"] = preset.name
    return out


class Plan(BaseModel):
    """What a compile run will do, printed before it starts."""

    model_config = ConfigDict(extra="forbid")

    preset: str | None = Field(description="The preset in use.")
    train_conversations: int = Field(description="Conversations trained on.")
    eval_conversations: int = Field(description="Conversations held out for the eval loss.")
    steps: int = Field(description="Optimizer steps.")
    tokens: int = Field(description="Tokens processed in training (all epochs).")
    target_tokens: int = Field(description="Assistant tokens that carry loss (all epochs).")
    estimated_s: float = Field(description="Estimated training wall time on this machine, in seconds.")
    tokens_per_s: float = Field(description="The throughput the estimate assumes.")
    precision: str = Field(description="Training precision on this machine.")
    basis: str = Field("", description="What the throughput estimate rests on.")

    def lines(self) -> list[str]:
        mins = self.estimated_s / 60
        return [f"plan ({self.preset or 'no preset'}): {self.steps} steps over {self.train_conversations} "
                f"conversations ({self.eval_conversations} held out), {self.tokens:,} tokens "
                f"({self.target_tokens:,} assistant), {self.precision}",
                f"estimated training time on this machine: {mins:.1f} min (at ~{self.tokens_per_s:.0f} tokens/s from "
                f"{self.basis}; plus model load and evaluation)"]


# Measured training throughput of SmolLM2-135M here per unit of the machine's matmul speed: training
# costs ~6 flops per parameter per token, and our loop reaches about this share of a plain matmul's rate.
_TRAIN_EFFICIENCY = 0.35


def make_plan(cfg: TrainConfig) -> Plan:
    """Render the data as the run will, count steps and tokens, and estimate the time from a short
    matmul measurement on this machine (the parameter count read from the base's config)."""
    import torch

    from engine.base_model import resolve_base_model
    from engine.train.loop import _autocast_dtype, load_records, prepare_examples
    from engine.train.model import load_tokenizer

    base_dir = resolve_base_model(cfg.base)
    train, held, _ = prepare_examples(load_tokenizer(base_dir, cfg), load_records(cfg), cfg)
    micro = math.ceil(len(train) / cfg.batch_size)
    per_epoch = math.ceil(micro / cfg.grad_accum)
    steps = cfg.max_steps or per_epoch * cfg.epochs
    epochs = steps / max(per_epoch, 1)
    tokens = round(sum(map(len, train)) * epochs)
    targets = round(sum(e.targets for e in train) * epochs)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = _autocast_dtype(cfg, device) or torch.float32
    tps, basis = _measured_speed(cfg)
    if tps is None:
        tps = _TRAIN_EFFICIENCY * _matmul_flops(device, dtype) / (6 * _param_count(base_dir))
        basis = "a matmul measured just now"
    return Plan(preset=cfg.preset, train_conversations=len(train), eval_conversations=len(held), steps=steps,
                tokens=tokens, target_tokens=targets, estimated_s=round(tokens / tps, 1), tokens_per_s=round(tps, 1),
                precision=str(dtype).replace("torch.", ""), basis=basis)


def _measured_speed(cfg: TrainConfig) -> tuple[float | None, str]:
    """Tokens/s of the latest finished compile of the same base with the same precision on this machine."""
    try:
        from engine.registry import list_models

        models = list_models()
    except Exception:  # noqa: BLE001 - no store yet: fall back to the matmul estimate
        return None, ""
    for m in sorted(models, key=lambda m: m.created or 0, reverse=True):
        p = m.meta or {}
        same = p.get("base") == cfg.base and (p.get("config") or {}).get("precision") == cfg.precision
        if same and p.get("wall_time_s") and p.get("tokens_seen") and p.get("git_revision"):
            return p["tokens_seen"] / p["wall_time_s"], f"the last compile of {cfg.base} here ({m.name})"
    return None, ""


def _matmul_flops(device: Any, dtype: Any) -> float:
    import torch

    a = torch.randn(2048, 576, device=device, dtype=dtype)  # the shape of a 135M model's MLP on a packed row
    b = torch.randn(576, 1536, device=device, dtype=dtype)
    for _ in range(3):  # warm-up (oneDNN picks its kernel on the first calls)
        a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.3:
        a @ b
        n += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * 2048 * 576 * 1536 * n / (time.perf_counter() - t0)


def _param_count(base_dir: str) -> int:
    """Parameters of a decoder from its config.json (no weights loaded)."""
    import json
    from pathlib import Path

    c = json.loads((Path(base_dir) / "config.json").read_text())
    h, layers, inter, vocab = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["vocab_size"]
    heads, kv = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"])
    head_dim = c.get("head_dim") or h // heads
    attn = h * head_dim * (heads + 2 * kv) + heads * head_dim * h
    embed = vocab * h * (1 if c.get("tie_word_embeddings", True) else 2)
    return layers * (attn + 3 * h * inter) + embed
