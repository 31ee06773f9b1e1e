"""Loading the model to train, one path for every stepper (plain PyTorch, DeepSpeed, a cluster's).

Also what the output needs from the base: the dtype to save in and its generation config.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from engine.errors import TrainingError
from engine.train.config import TrainConfig

T = TypeVar("T")


def load_tokenizer(base_dir: str, cfg: TrainConfig) -> Any:
    from transformers import AutoTokenizer

    return _loading(lambda: AutoTokenizer.from_pretrained(base_dir), cfg.base)


class _NoAcceleratorGuess(logging.Filter):
    """transformers imports DeepSpeed while loading a model; on a machine without a GPU DeepSpeed then warns
    "Setting accelerator to CPU. If you have GPU ..." to every user: drop that one line, nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Setting accelerator to CPU" not in record.getMessage()


logging.getLogger("DeepSpeed").addFilter(_NoAcceleratorGuess())  # DeepSpeed's logger keeps filters added early


def load_model(base_dir: str, cfg: TrainConfig, dtype: torch.dtype = torch.float32) -> Any:
    """The base model for full-parameter training: no KV cache, the configured attention and checkpointing.

    Under DeepSpeed ZeRO-3 the caller keeps an `HfDeepSpeedConfig` alive first, so this loads straight
    into shards.
    """
    from transformers import AutoModelForCausalLM

    model = _loading(lambda: AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, **attention_kwargs(cfg)),
                     cfg.base)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        # transformers 5 renamed it (the old name warns); older versions have only gradient_checkpointing_enable
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def attention_kwargs(cfg: TrainConfig) -> dict[str, str]:
    if cfg.attention == "varlen":
        from engine.train.packing import register_varlen_attention

        return {"attn_implementation": register_varlen_attention()}
    return {}


def save_dtype(base_dir: str) -> torch.dtype:
    """Save in the base checkpoint's dtype (bf16 for most), so the output is as small as the base."""
    try:
        cfg = json.loads((Path(base_dir) / "config.json").read_text())
        name = cfg.get("torch_dtype") or cfg.get("dtype") or "float32"
    except (OSError, ValueError):
        name = "bfloat16"
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(str(name), torch.float32)


def generation_config(base_dir: str, tokenizer: Any) -> Any:
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(base_dir)
    except OSError:
        return GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                bos_token_id=tokenizer.bos_token_id)


def _loading(fn: Callable[[], T], base: str) -> T:
    try:
        return fn()
    except OSError as e:
        raise TrainingError(f"cannot load base model '{base}' ({str(e).splitlines()[0]}); pass smollm2-135m, "
                            "a local model directory, or a hub id you can download") from None
