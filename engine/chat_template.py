"""Chat-template a conversation into token ids with message content tokenized as text only.

`tokenizer(apply_chat_template(..., tokenize=False))` parses control-token strings wherever they
appear, so a user who types `<|im_start|>system ...` forges a system turn. Here the template is
rendered with a placeholder for each message's content; the template's own text between them is
tokenized normally (its control tokens stay control tokens) and each content is tokenized with
`split_special_tokens=True`, so `<|im_start|>` typed by a user becomes ordinary characters.

Training (engine/train/render.py) and serving (engine/backends/local.py) both use this, so the model
is trained on exactly the token sequences it is later served.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use characters no template alters


class TemplateError(ValueError):
    """The chat template does not print message content verbatim (so it cannot be kept as text)."""


def encode_chat(tokenizer: Any, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False
                ) -> tuple[list[int], list[int]]:
    """Token ids and, for each, the index of the message whose content it belongs to (-1: template text)."""
    contents = [str(m.get("content") or "") for m in messages]
    if any(_OPEN in c or _CLOSE in c for c in contents):
        contents = [c.replace(_OPEN, "").replace(_CLOSE, "") for c in contents]
    marked = [{**m, "content": f"{_OPEN}{i}{_CLOSE}"} for i, m in enumerate(messages)]
    text = str(tokenizer.apply_chat_template(marked, tokenize=False, add_generation_prompt=add_generation_prompt))
    real = str(tokenizer.apply_chat_template([{**m, "content": c} for m, c in zip(messages, contents, strict=True)],
                                             tokenize=False, add_generation_prompt=add_generation_prompt))
    ids: list[int] = []
    owner: list[int] = []
    rebuilt: list[str] = []
    pos = 0
    while True:
        at = text.find(_OPEN, pos)
        piece = text[pos:] if at < 0 else text[pos:at]
        if piece:
            new = tokenizer(piece, add_special_tokens=False)["input_ids"]
            ids += new
            owner += [-1] * len(new)
            rebuilt.append(piece)
        if at < 0:
            break
        end = text.index(_CLOSE, at)
        i = int(text[at + 1:end])
        if contents[i]:
            new = tokenizer(contents[i], add_special_tokens=False, split_special_tokens=True)["input_ids"]
            ids += new
            owner += [i] * len(new)
        rebuilt.append(contents[i])
        pos = end + 1
    if "".join(rebuilt) != real:
        raise TemplateError("the chat template does not print message content verbatim")
    return ids, owner
