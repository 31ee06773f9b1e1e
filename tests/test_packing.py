"""engine.train.packing: padding-free packed batches are isolated per conversation and give the padded loss."""

from __future__ import annotations

import pytest
import torch
from compile_helpers import conversations
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.train.packing import IGNORE, Example, epoch_order, fit_to_length, pack, pad, shifted_labels
from engine.train.render import render_conversation


@pytest.fixture(scope="module")
def examples(tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    return [Example(*render_conversation(tok, r["messages"])) for r in conversations(6, max_extra_turns=3)]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def test_pack_has_no_padding_and_restarts_positions(examples):
    b = pack(examples[:3])
    lengths = [len(e) for e in examples[:3]]
    assert b.input_ids.shape == (1, sum(lengths))
    starts = [0, lengths[0], lengths[0] + lengths[1]]
    assert [int(b.position_ids[0, s]) for s in starts] == [0, 0, 0]
    # the last token of a conversation never predicts the first token of the next one
    assert all(int(b.labels[0, s - 1]) == IGNORE for s in starts[1:])
    assert b.n_targets == sum(sum(e.mask[1:]) for e in examples[:3])


def test_padded_baseline_never_labels_padding(examples):
    batch = pad(examples[:3], pad_id=0)
    assert bool((batch["labels"][batch["attention_mask"] == 0] == IGNORE).all())


def test_packed_loss_matches_unpacked_loss(examples, model):
    packed = pack(examples)
    with torch.no_grad():
        logits = model(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False).logits[0]
        packed_sum = torch.nn.functional.cross_entropy(logits, packed.labels[0], ignore_index=IGNORE, reduction="sum")
        one_by_one = 0.0
        for e in examples:
            lg = model(input_ids=torch.tensor([e.ids]), use_cache=False).logits[0]
            one_by_one += float(torch.nn.functional.cross_entropy(lg, torch.tensor(shifted_labels(e)),
                                                                  ignore_index=IGNORE, reduction="sum"))
        padded = pad(examples, pad_id=0)
        lg = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], use_cache=False).logits
        padded_sum = torch.nn.functional.cross_entropy(lg.flatten(0, 1), padded["labels"].flatten(),
                                                       ignore_index=IGNORE, reduction="sum")
    assert float(packed_sum) == pytest.approx(one_by_one, rel=1e-4)
    assert float(padded_sum) == pytest.approx(one_by_one, rel=1e-4)


def test_conversations_in_a_pack_cannot_see_each_other(examples, model):
    a, b = examples[0], examples[1]
    changed = Example([(i + 7) % 1000 for i in a.ids], a.mask)
    with torch.no_grad():
        run = lambda exs: model(input_ids=pack(exs).input_ids, position_ids=pack(exs).position_ids,  # noqa: E731
                                use_cache=False).logits[0, len(exs[0]):]
        assert torch.allclose(run([a, b]), run([changed, b]), atol=1e-5)


def test_overlong_conversations_are_dropped_or_split_with_a_count(examples):
    longest = max(len(e) for e in examples)
    kept, stats = fit_to_length(examples, longest - 1, "drop")
    assert stats.dropped >= 1 and len(kept) == len(examples) - stats.dropped
    assert "dropped" in stats.notes[0]
    kept, stats = fit_to_length(examples, 40, "split")
    assert stats.split >= 1 and all(len(e) <= 40 for e in kept)
    assert all(e.targets for e in kept)


def test_epoch_order_is_deterministic_and_covers_everything():
    a = epoch_order(10, 3, seed=1, epoch=0)
    assert a == epoch_order(10, 3, seed=1, epoch=0)
    assert a != epoch_order(10, 3, seed=1, epoch=1)
    assert sorted(i for mb in a for i in mb) == list(range(10))


def test_varlen_attention_matches_the_block_diagonal_mask(examples, model, tiny_model_dir):
    from engine.train.packing import register_varlen_attention

    varlen = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                                  attn_implementation=register_varlen_attention()).eval()
    b = pack(examples)
    with torch.no_grad():
        masked = model(input_ids=b.input_ids, position_ids=b.position_ids, use_cache=False).logits
        per_conversation = varlen(input_ids=b.input_ids, position_ids=b.position_ids, use_cache=False).logits
        # and decoding with a cache still works with it (one row, no packing)
        ids = torch.tensor([examples[0].ids[:12]])
        assert torch.equal(varlen.generate(ids, max_new_tokens=4, do_sample=False),
                           model.generate(ids, max_new_tokens=4, do_sample=False))
    assert torch.allclose(masked, per_conversation, atol=1e-4)


def _qkv(n: int, dtype: torch.dtype, heads: int = 6, kv_heads: int = 2, dim: int = 16):
    g = torch.Generator().manual_seed(n)
    return [(torch.randn(1, h, n, dim, generator=g) * 2).to(dtype).requires_grad_()
            for h in (heads, kv_heads, kv_heads)]


def test_short_causal_attention_is_sdpa_with_grouped_heads_values_and_gradients():
    from engine.train.packing import _short_causal

    q, k, v = _qkv(37, torch.float32)
    out = _short_causal(q, k, v, None)
    out.square().sum().backward()
    mine = [out.detach(), q.grad, k.grad, v.grad]
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(q2, k2, v2, is_causal=True, enable_gqa=True)
    ref.square().sum().backward()
    for a, b in zip(mine, [ref.detach(), q2.grad, k2.grad, v2.grad], strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), float((a - b).abs().max())


def test_varlen_attention_in_bf16_takes_the_short_path_and_the_kernel_for_long_spans(monkeypatch):
    from engine.train import packing

    q, k, v = _qkv(50, torch.bfloat16)
    pos = torch.tensor([list(range(20)) + list(range(30))])  # two conversations: 20 and 30 tokens
    calls = []
    real = packing._short_causal
    monkeypatch.setattr(packing, "_short_causal", lambda *a: calls.append(a[0].shape[2]) or real(*a))
    monkeypatch.setattr(packing, "SHORT_SPAN", 25)  # the 20-token one is short, the 30-token one is not
    out, _ = packing.varlen_sdpa(None, q, k, v, None, position_ids=pos)
    assert calls == [20] and out.shape == (1, 50, 6, 16)
    ref = torch.cat([torch.nn.functional.scaled_dot_product_attention(
        q[:, :, s:e].float(), k[:, :, s:e].float(), v[:, :, s:e].float(), is_causal=True, enable_gqa=True)
        for s, e in ((0, 20), (20, 50))], dim=2).transpose(1, 2)
    assert (out.float() - ref).norm() / ref.norm() < 0.02  # bf16 rounding, not a different attention
