"""The compile run's settings: one pydantic model, the single source of every training option.

The CLI's `subterra compile` flags, the studio's compile form and launch bundles are all derived
from `TrainConfig`'s fields (description, default, bounds); it is written next to every checkpoint
and into the compiled model's `subterra.json`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class TrainConfig(BaseModel):
    """Everything a compile run needs; written next to the checkpoints and into `subterra.json`."""

    model_config = ConfigDict(extra="forbid")

    out: str = Field(description="Output model directory (Hugging Face format once finished).")
    base: str = Field("smollm2-135m", description="Base model: `smollm2-135m`, a local HF directory or a hub id.")
    data: list[str] = Field(default_factory=list, description="JSONL files of conversations (`messages` + `meta`).")
    dataset: str | None = Field(None, description="Name of a stored dataset, instead of or besides `data`.")
    flow: str | None = Field(None, description="Flow name, for provenance and the registry.")
    flow_version: int | None = Field(None, description="Flow version the data was generated from.")
    system_prompt: str | None = Field(
        None, description="Flow's minimal system prompt, added to conversations without one.")
    name: str | None = Field(None, description="Registry name of the compiled model (default: the out dir's name).")
    epochs: int = Field(3, ge=1, description="Passes over the training conversations.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    lr: float = Field(2e-5, gt=0, description="Peak learning rate (cosine decay to 0 after warm-up).")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of the steps spent warming the lr up linearly.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    batch_size: int = Field(4, ge=1, description="Conversations per micro-batch (packed into one row, no padding).")
    grad_accum: int = Field(
        4, ge=1, description="Micro-batches per optimizer step (effective batch = batch_size × grad_accum × ranks).")
    max_len: int = Field(2048, ge=16, description="Longest conversation in tokens; longer ones are dropped or split.")
    overlong: Literal["drop", "split"] = Field("drop", description="What to do with conversations over max_len.")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="auto: bf16 autocast where the hardware has it.")
    optimizer: Literal["auto", "adamw", "adamw-bf16", "adamw8bit"] = Field(
        "adamw", description="adamw: fp32 weights and states (bf16 autocast per `precision`); adamw-bf16: weights, "
        "gradients and AdamW states in bf16 with Kahan-compensated updates (optimi), ~1 GB less for 135M; "
        "auto: adamw-bf16 where bf16 runs fast, else adamw; adamw8bit needs a CUDA GPU and bitsandbytes.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    head_chunk: int = Field(
        0, ge=0, description="Rows of full-vocabulary logits computed at once by the fused head + loss at the "
        "assistant positions: less memory, slower on CPU (0: transformers' head with logits_to_keep).")
    micro_tokens: int | None = Field(
        None, ge=16, description="Run each micro-batch in forward/backward passes of at most this many tokens "
        "(whole conversations; same gradient, less activation memory).")
    threads: int | None = Field(
        None, ge=1, description="CPU threads for torch (default: every core this process may use).")
    preset: str | None = Field(
        None, description="Preset the values came from (`quick`, `standard`, `paper`), for provenance.")
    attention: Literal["varlen", "sdpa"] = Field(
        "varlen", description="varlen: attention per packed conversation (no T x T mask); sdpa: block-diagonal mask.")
    seed: int = Field(42, description="Seed for the data order, the eval split and torch.")
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="Held-out share when the data has no eval split.")
    eval_every: int | None = Field(None, ge=1, description="Also evaluate every N steps (always at each epoch end).")
    patience: int | None = Field(
        3, ge=0, description="Stop after this many evaluations without a better eval loss (0: never stop early).")
    save_every: int = Field(50, ge=1, description="Write the resumable checkpoint every N steps.")
    deepspeed: Literal["zero3"] | None = Field(
        None, description="Train under DeepSpeed ZeRO-3 (launched by engine.train.distributed).")
    gpus: int = Field(0, ge=0, description="GPUs per node for a distributed launch (0: CPU ranks).")
    device: str | None = Field(None, description="Force a torch device (default: cuda if available, else cpu).")
    job_id: int | None = Field(None, description="Store job that receives progress events (created when missing).")
    keep_state: bool = Field(False, description="Keep `<out>/.train` (optimizer state) after a successful run.")
    add_to_registry: bool = Field(True, description="Add the finished model to the store's registry.")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str | None) -> str | None:
        # the registry name becomes the default output folder: one rule for every name (engine.flow)
        from engine.flow import name_problem

        problem = name_problem(v) if v is not None else None
        if problem:
            raise ValueError(problem)
        return v
