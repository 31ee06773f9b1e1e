"""The `Stepper`: how one optimizer step, a checkpoint and the best weights are done on some hardware.

The training loop (`engine.train.loop`) is the same everywhere; only the stepper differs:
`TorchStepper` here (CPU or one GPU), `engine.train.distributed.DeepSpeedStepper` (ZeRO-3 across
ranks), and any cluster stepper that keeps this contract.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

import torch

from engine.errors import TrainingError
from engine.train.checkpoint import (
    TrainState,
    fresh_dir,
    load_torch,
    read_state,
    rng_state,
    set_rng_state,
    swap_in,
    write_state,
)
from engine.train.config import TrainConfig


class Stepper(Protocol):
    """What the loop asks of the hardware side."""

    module: Any  # the model the loop calls forward on

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        """Accumulate gradients of `loss`; `last` marks the step's final micro-batch."""

    def step(self) -> float:
        """Clip, update, advance the schedule, zero the gradients; returns the lr that was used."""

    def save(self, path: Path, state: TrainState) -> None:
        """Write everything a resume needs to `path`, atomically."""

    def load(self, path: Path) -> TrainState:
        """Restore weights, optimizer, schedule and RNG from `path`; returns the trainer state."""

    def save_best(self, path: Path, dtype: torch.dtype) -> None:
        """Write the current weights as a Hugging Face model folder at `path`, atomically."""


class TorchStepper:
    """Optimizer, cosine schedule with warm-up, clipping; saves/loads everything a resume needs."""

    def __init__(self, model: Any, cfg: TrainConfig, total_steps: int):
        self.module, self.cfg = model, cfg
        self.optimizer = make_optimizer(model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, total_steps))

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        loss.backward()

    def step(self) -> float:
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(lr)

    def save(self, path: Path, state: TrainState) -> None:
        tmp = fresh_dir(path)
        torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "rng": rng_state()}, tmp / "state.pt")
        write_state(tmp, state)
        swap_in(tmp, path)  # a kill -9 mid-save leaves the previous checkpoint intact

    def load(self, path: Path) -> TrainState:
        blob = load_torch(path / "state.pt")  # weights_only: a checkpoint brought in cannot run code
        self.module.load_state_dict(blob["model"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        set_rng_state(blob["rng"])
        return read_state(path)

    def save_best(self, path: Path, dtype: torch.dtype) -> None:
        tmp = fresh_dir(path)
        sd = {k: v.detach().to("cpu", dtype) for k, v in self.module.state_dict().items()}
        self.module.save_pretrained(tmp, state_dict=sd, safe_serialization=True)
        swap_in(tmp, path)


def make_optimizer(model: Any, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw8bit":
        if not torch.cuda.is_available():
            raise TrainingError("--optimizer adamw8bit needs a CUDA GPU; use adamw on this machine")
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise TrainingError("8-bit AdamW needs bitsandbytes: pip install 'subterra[gpu]'") from None
        return bnb.optim.AdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw-bf16":
        return bf16_adamw(params, cfg)
    # fused on CPU too: measured on SmolLM2-135M here, 4.3 vs 10.7 CPU-s per step and 0.44 GB less peak than foreach
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.bfloat16) for p in params) or None
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95), fused=fused)


def bf16_adamw(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over bf16 weights: moments in bf16 and a bf16 Kahan-compensation buffer that carries the bits a
    bf16 update would round away (optimi's `kahan_sum`), instead of fp32 master weights and moments: 8 bytes
    per parameter instead of 16 (+ fp32 gradients). Same betas/eps as `adamw`; weight decay as torch's AdamW."""
    import optimi

    if any(p.dtype != torch.bfloat16 for p in params):
        raise TrainingError("--optimizer adamw-bf16 trains bf16 weights; the model was loaded in another dtype")
    opt: torch.optim.Optimizer = optimi.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8,
                                              weight_decay=cfg.weight_decay, kahan_sum=True, foreach=True)
    return opt


def lr_lambda(cfg: TrainConfig, total_steps: int) -> Any:
    """Linear warm-up then cosine decay to zero, as a multiplier of the peak lr."""
    warmup = max(1, round(cfg.warmup_ratio * total_steps)) if cfg.warmup_ratio else 0

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f
