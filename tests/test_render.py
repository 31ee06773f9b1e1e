"""engine.train.render: explicit (ids, mask) rendering on the real SmolLM2 chat template."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from engine.errors import TrainingError
from engine.train.render import render_conversation

CONV = [
    {"role": "system", "content": "You are a helpful travel booking assistant."},
    {"role": "assistant", "content": "Hello! Where would you like to go?"},
    {"role": "user", "content": "Lisbon, in May."},
    {"role": "assistant", "content": "Lisbon in May is lovely. What is your budget?"},
    {"role": "user", "content": "Around 900 euros."},
    {"role": "assistant", "content": "Thanks! I will look for options under 900 euros."},
]


@pytest.fixture(scope="module")
def tok(smollm2_tokenizer_dir):
    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


def test_mask_covers_exactly_assistant_content_and_end_of_turn(tok):
    ids, mask = render_conversation(tok, CONV)
    assert len(ids) == len(mask)
    assert ids == list(tok.apply_chat_template(CONV, tokenize=True, return_dict=True)["input_ids"])
    # the masked tokens, grouped into runs, are each assistant message followed by <|im_end|>
    runs, cur = [], []
    for i, m in zip(ids, mask, strict=True):
        if m:
            cur.append(i)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    assistant = [m["content"] for m in CONV if m["role"] == "assistant"]
    assert runs == [a + "<|im_end|>" for a in assistant]
    unmasked = tok.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    assert "Lisbon, in May." in unmasked and "travel booking assistant" in unmasked
    assert "<|im_start|>assistant\n" in unmasked  # role headers are never trained on
    for a in assistant:
        assert a not in unmasked


def test_conversation_without_assistant_turns_fails_naming_the_template(tok):
    with pytest.raises(TrainingError) as e:
        render_conversation(tok, [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}])
    assert "loss mask is all zeros" in str(e.value) and "chat template of" in str(e.value)


def test_bad_role_order_is_refused(tok):
    with pytest.raises(TrainingError, match="both user turns"):
        render_conversation(tok, [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                                  {"role": "assistant", "content": "c"}])
    with pytest.raises(TrainingError, match="role 'tool'"):
        render_conversation(tok, [{"role": "tool", "content": "a"}])


def test_template_that_rewrites_history_is_refused(tok, smollm2_tokenizer_dir):
    # like templates that strip earlier turns' reasoning: earlier assistant turns render differently
    odd = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    odd.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
        "{{ '<|im_start|>assistant\\n(earlier)<|im_end|>\\n' }}{% else %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    with pytest.raises(TrainingError, match="rewrites history"):
        render_conversation(odd, CONV)
