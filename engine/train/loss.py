"""The training loss: cross-entropy at the supervised positions only, with the LM head fused in, chunk by chunk.

A causal LM's head turns every hidden state into a full-vocabulary row of logits (SmolLM2: 49,152
columns). Computing it for every token of a packed row, keeping those logits for backward and
upcasting them to fp32 is most of a small model's activation memory and a good share of its time.
Here the decoder runs without its head; we keep the N hidden states that have a target, and
`fused_linear_cross_entropy` computes the head, the loss *and its gradient* `chunk` rows at a time
in the forward pass (as Liger's fused kernel does), so at most `chunk × V` logits exist at once and
nothing of them is kept for backward: backward only scales the stored gradients.

Models whose head is more than a plain linear layer (a bias, logit soft-capping or scaling) and
ZeRO-3 sharded heads fall back to transformers' `logits_to_keep` path (`logits_loss`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                               chunk: int = 1024, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Summed CE of `hidden @ weight.T` against `labels`. hidden (N, H), weight (V, H), labels (N,).

    `dtype`: the matmuls' dtype (bf16 under autocast); softmax and the accumulated gradients stay fp32.
    """
    return _FusedLinearCE.apply(hidden, weight, labels, chunk, dtype or weight.dtype)


class _FusedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, chunk: int,
                dtype: torch.dtype) -> torch.Tensor:
        need_grad = hidden.requires_grad or weight.requires_grad
        w = weight.to(dtype)  # (V, H)
        h_all = hidden.to(dtype)  # (N, H)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if hidden.requires_grad else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if weight.requires_grad else None
        for s in range(0, hidden.shape[0], chunk):
            h, y = h_all[s:s + chunk], labels[s:s + chunk]
            logits = (h @ w.T).float()  # (n, V): the only full-vocabulary tensor, one chunk at a time
            lse = torch.logsumexp(logits, dim=-1)  # (n,)
            loss += (lse - logits.gather(1, y[:, None]).squeeze(1)).sum()
            if not need_grad:
                continue
            probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place
            probs[torch.arange(len(y), device=y.device), y] -= 1.0  # d loss / d logits
            g = probs.to(dtype)
            if grad_h is not None:
                grad_h[s:s + chunk] = (g @ w).to(hidden.dtype)
            if grad_w is not None:
                if dtype == torch.float32:
                    grad_w.addmm_(g.T, h)
                else:
                    grad_w.add_(g.T @ h)  # (V, H) in bf16, accumulated in fp32
        ctx.save_for_backward(grad_h if grad_h is not None else torch.empty(0),
                              grad_w if grad_w is not None else torch.empty(0))
        ctx.has = (grad_h is not None, grad_w is not None)
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if ctx.has[0] else None
        # in place: backward runs once, and a second (V, H) fp32 copy would sit on the step's memory peak
        gw = grad_w.mul_(grad_out).to(ctx.weight_dtype) if ctx.has[1] else None
        return gh, gw, None, None, None


def head_weight(model: Any) -> torch.Tensor | None:
    """The LM head's weight when the head is a plain bias-free linear layer we may fuse, else None."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    cfg = getattr(model, "config", None)
    if not isinstance(head, torch.nn.Linear) or head.bias is not None:
        return None
    if any(getattr(cfg, k, None) not in (None, 1.0) for k in ("final_logit_softcapping", "logit_scale")):
        return None
    if head.weight.numel() == 0:  # a ZeRO-3 shard placeholder
        return None
    return head.weight


def chunked_loss(model: Any, ids: torch.Tensor, pos: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor,
                 chunk: int, autocast: torch.dtype | None, weight: torch.Tensor) -> torch.Tensor:
    """Decoder without the head, then the fused head + CE at the `keep` positions. ids/pos/labels (1, T)."""
    with torch.autocast(ids.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
        hidden = model.get_decoder()(input_ids=ids, position_ids=pos, use_cache=False).last_hidden_state  # (1, T, H)
    return fused_linear_cross_entropy(hidden[0, keep], weight, labels[0, keep], chunk, autocast or weight.dtype)


def logits_loss(model: Any, ids: torch.Tensor, pos: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor,
                autocast: torch.dtype | None) -> torch.Tensor:
    """transformers' own head with `logits_to_keep`: full-vocabulary logits for every target at once."""
    with torch.autocast(ids.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
        out = model(input_ids=ids, position_ids=pos, use_cache=False, logits_to_keep=keep)
    return F.cross_entropy(out.logits[0].float(), labels[0, keep], reduction="sum")  # logits (N, V)
