"""Padding-free batches: several conversations concatenated into one row.

Each conversation keeps its own position ids (0, 1, 2, ... restarting at every conversation).
With no attention mask and position ids that restart, transformers builds a block-diagonal causal
mask (SDPA/eager) or uses variable-length kernels (flash attention), so a token never attends to
another conversation. Labels are shifted per conversation, so the last token of one conversation
never predicts the first of the next, and only assistant tokens (mask 1) are targets. There is no
padding, so nothing is computed for padding and nothing is trained on it.

Conversations longer than `max_len` tokens are dropped or split into `max_len` windows (each window
trains on its own assistant tokens); the count is reported either way.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

IGNORE = -100


@dataclass
class Example:
    """One rendered conversation: token ids and its 0/1 loss mask."""

    ids: list[int]
    mask: list[int]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def targets(self) -> int:
        """Tokens that carry loss: masked tokens that have a previous token to predict them from."""
        return sum(self.mask[1:])


@dataclass
class PackStats:
    kept: int = 0
    dropped: int = 0
    split: int = 0
    tokens: int = 0
    target_tokens: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass
class Batch:
    """A packed micro-batch; every tensor is (1, T)."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor

    @property
    def n_targets(self) -> int:
        return int((self.labels != IGNORE).sum())

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.numel())


def fit_to_length(examples: Sequence[Example], max_len: int,
                  overlong: Literal["drop", "split"] = "drop") -> tuple[list[Example], PackStats]:
    """Drop or split conversations longer than `max_len`; drop pieces with nothing to learn."""
    stats, out = PackStats(), []
    for ex in examples:
        if len(ex) <= max_len:
            pieces = [ex]
        elif overlong == "drop":
            stats.dropped += 1
            continue
        else:
            stats.split += 1
            pieces = [Example(ex.ids[i:i + max_len], ex.mask[i:i + max_len]) for i in range(0, len(ex), max_len)]
        for p in pieces:
            if p.targets:
                out.append(p)
                stats.tokens += len(p)
                stats.target_tokens += p.targets
    stats.kept = len(out)
    if stats.dropped:
        stats.notes.append(f"dropped {stats.dropped} conversation(s) longer than {max_len} tokens")
    if stats.split:
        stats.notes.append(f"split {stats.split} conversation(s) longer than {max_len} tokens into windows")
    return out, stats


def shifted_labels(ex: Example) -> list[int]:
    """labels[t] = ids[t+1] where mask[t+1] is 1, else IGNORE; the last position predicts nothing."""
    return [ex.ids[t + 1] if ex.mask[t + 1] else IGNORE for t in range(len(ex) - 1)] + [IGNORE]


def pack(examples: Sequence[Example]) -> Batch:
    """Concatenate conversations into one row with restarting position ids."""
    ids: list[int] = []
    pos: list[int] = []
    labels: list[int] = []
    for ex in examples:
        ids += ex.ids
        pos += range(len(ex))
        labels += shifted_labels(ex)
    as_row = lambda xs: torch.tensor(xs, dtype=torch.long).unsqueeze(0)  # noqa: E731  (1, T)
    return Batch(as_row(ids), as_row(pos), as_row(labels))


def pad(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """The classic padded batch (B, T_max) with an attention mask: the baseline packing replaces."""
    width = max(len(e) for e in examples)
    rows = [e.ids + [pad_id] * (width - len(e)) for e in examples]
    labels = [shifted_labels(e) + [IGNORE] * (width - len(e)) for e in examples]
    attn = [[1] * len(e) + [0] * (width - len(e)) for e in examples]
    return {"input_ids": torch.tensor(rows), "labels": torch.tensor(labels), "attention_mask": torch.tensor(attn)}


def epoch_order(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffled micro-batches of example indices; the same (seed, epoch) always gives the same order,
    which is what lets a resumed run skip exactly the batches it had already trained on."""
    idx = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(idx)
    return [idx[i:i + batch_size] for i in range(0, n, batch_size)]


# ------------------------------------------------------------------------------------------------
# variable-length attention for packed rows

VARLEN_ATTENTION = "subterra_varlen"


def varlen_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                position_ids: torch.Tensor | None = None, **kwargs: object) -> tuple[torch.Tensor, None]:
    """Causal attention run conversation by conversation inside a packed row.

    A block-diagonal mask over the whole row (what SDPA gets otherwise) costs (sum n_i)^2 and a
    materialised T x T mask; this costs sum n_i^2 with the fused causal kernel and no mask, which
    is what flash-attention's varlen kernel does on GPUs. query (1, H, T, D), key/value (1, Hkv, T, D).
    """
    if query.shape[2] != key.shape[2]:  # decoding with a cache: one row, nothing packed
        return torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, scale=scaling, enable_gqa=key.shape[1] != query.shape[1],
            is_causal=False if query.shape[2] == 1 else attention_mask is None).transpose(1, 2).contiguous(), None
    if position_ids is None or query.shape[0] != 1 or attention_mask is not None:
        spans = [(0, query.shape[2])]
    else:
        starts = (position_ids[0] == 0).nonzero().flatten().tolist() or [0]
        if starts[0] != 0:
            starts = [0, *starts]
        spans = list(zip(starts, [*starts[1:], query.shape[2]], strict=True))
    gqa = key.shape[1] != query.shape[1]
    if attention_mask is None and query.device.type == "cpu" and query.dtype == torch.bfloat16:
        outs = [_short_causal(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], scaling) if e - s <= SHORT_SPAN
                else torch.nn.functional.scaled_dot_product_attention(
                    query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True, scale=scaling, enable_gqa=gqa)
                for s, e in spans]
        return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None
    outs = [torch.nn.functional.scaled_dot_product_attention(
        query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], attn_mask=None if attention_mask is None else
        attention_mask[..., s:e, s:e], is_causal=attention_mask is None, scale=scaling, enable_gqa=gqa)
        for s, e in spans]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous(), None  # (1, T, H, D)


SHORT_SPAN = 768
"""Up to this many tokens, a bf16 conversation on a CPU takes `_short_causal`: measured here (2 cores, AVX512-BF16,
SmolLM2's 9 query / 3 key-value heads, forward + backward) 4-6 vs 10 ms at 350 tokens and 16-21 vs 27 ms at 700
against SDPA's CPU flash kernel, whose backward was a fifth of a training step; from about 850 tokens the flash
kernel is faster. In fp32 the flash kernel is faster at every length, so fp32 keeps it."""


def _short_causal(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  scaling: float | None) -> torch.Tensor:
    """Causal attention of one short conversation as two batched matmuls and a softmax (the numerics of
    transformers' eager attention: bf16 scores, softmax accumulated in fp32), with grouped-query heads read
    in place instead of repeated. query (1, H, n, D), key/value (1, Hkv, n, D); returns (1, H, n, D)."""
    _, h, n, d = query.shape
    kv = key.shape[1]
    q = query.reshape(kv, (h // kv) * n, d)  # the h // kv query heads of each key-value head, one after another
    scores = (q @ key[0].transpose(-1, -2)).view(kv, h // kv, n, n)
    scores = scores * (d ** -0.5 if scaling is None else scaling) + _causal_bias(n, scores.dtype)
    probs = scores.softmax(-1).view(kv, (h // kv) * n, n)
    return (probs @ value[0]).view(1, h, n, d)


@functools.lru_cache(maxsize=64)
def _causal_bias(n: int, dtype: torch.dtype) -> torch.Tensor:
    """(n, n): 0 on and below the diagonal, -inf above it."""
    return torch.full((n, n), float("-inf"), dtype=dtype).triu(1)


def register_varlen_attention() -> str:
    """Make `attn_implementation="subterra_varlen"` available to transformers models; returns the name.

    It is registered without a mask function, so transformers builds no T x T mask for it."""
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN_ATTENTION, varlen_sdpa)
    return VARLEN_ATTENTION
