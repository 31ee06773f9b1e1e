"""Render a conversation into token ids and a loss mask, explicitly.

The mask is 1 on the tokens of each assistant message's content and on the end-of-turn token
that closes it (so the model learns to stop), and 0 everywhere else: the system prompt, the user's
turns and the template's role headers. We find the assistant spans from the chat template itself,
without `{% generation %}` markers (few templates have them, and a template without them gives a
silent all-zero mask in the tools that rely on them):

    prefix_i = template(messages[:i], add_generation_prompt=True)   # ends with the assistant header
    full_i   = template(messages[:i+1])                              # the same plus message i

so message i's content starts at len(prefix_i) in the final text. The whole conversation is then
tokenized once, with character offsets, and a token is an assistant token when its characters lie
in one of those spans. The ids are checked against `tokenizer.apply_chat_template` itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.errors import TrainingError

ROLES = ("system", "user", "assistant")


def render_conversation(tokenizer: Any, messages: Sequence[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids and a 0/1 loss mask of the same length (1 on assistant content + end-of-turn token)."""
    _check_roles(messages)
    text = _template(tokenizer, messages)
    spans = [_assistant_span(tokenizer, messages, i, text) for i, m in enumerate(messages) if m["role"] == "assistant"]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    mask = [int(any(s < end and e > start for start, end in spans)) for s, e in enc["offset_mapping"]]
    _check_against_template(tokenizer, messages, ids)
    if not any(mask):
        raise TrainingError(
            f"the loss mask is all zeros for a conversation rendered with {template_name(tokenizer)}: no assistant "
            "token would be trained; check that the data has assistant messages and that the template prints them"
        )
    return ids, mask


def template_name(tokenizer: Any) -> str:
    """A short way to name a tokenizer's chat template in error messages."""
    name = getattr(tokenizer, "name_or_path", "") or "this tokenizer"
    return f"the chat template of {name}"


def _check_roles(messages: Sequence[dict[str, str]]) -> None:
    """An optional system message first, then user/assistant turns, never two of one role in a row."""
    if not messages:
        raise TrainingError("a conversation has no messages; regenerate the dataset")
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ROLES:
            raise TrainingError(f"message {i} has role {role!r}; only system, user and assistant can be trained on")
        if role == "system" and i != 0:
            raise TrainingError(f"message {i} is a system message; only the first message may be one")
        if i and role == messages[i - 1]["role"]:
            raise TrainingError(f"messages {i - 1} and {i} are both {role} turns; roles must alternate")


def _template(tokenizer: Any, messages: Sequence[dict[str, str]], generation_prompt: bool = False) -> str:
    try:
        return str(tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt))
    except Exception as e:  # jinja raises for role orders a template refuses (e.g. assistant first)
        raise TrainingError(f"{template_name(tokenizer)} cannot render this conversation ({e}); "
                            "pick a base model whose template accepts these roles") from None


def _assistant_span(tokenizer: Any, messages: Sequence[dict[str, str]], i: int, text: str) -> tuple[int, int]:
    """Character span of message i's content plus its end-of-turn token in the full text."""
    prefix = _template(tokenizer, messages[:i], generation_prompt=True) if i else ""
    full = _template(tokenizer, messages[: i + 1])
    if not (full.startswith(prefix) and text.startswith(full)):
        raise TrainingError(
            f"{template_name(tokenizer)} renders earlier turns differently once later turns follow (it rewrites "
            "history), so assistant tokens cannot be located; pick a base model with an append-only template"
        )
    content = messages[i]["content"]
    at = full.find(content, len(prefix)) if content else len(prefix)
    if at < 0:
        raise TrainingError(f"{template_name(tokenizer)} does not print assistant message {i} verbatim; "
                            "pick a base model whose template keeps the content as is")
    end = at + len(content)
    return at, end + len(_end_of_turn(tokenizer, full[end:]))


def _end_of_turn(tokenizer: Any, rest: str) -> str:
    """The special token that closes the assistant turn, if the template puts one right after it."""
    specials = sorted(set(getattr(tokenizer, "all_special_tokens", [])) | {tokenizer.eos_token or ""}, key=len, reverse=True)
    return next((t for t in specials if t and rest.startswith(t)), "")


def _check_against_template(tokenizer: Any, messages: Sequence[dict[str, str]], ids: list[int]) -> None:
    """Our ids must be exactly what the template's own tokenization gives, or we train on a different text."""
    expected = tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=False)
    if isinstance(expected, dict) or hasattr(expected, "keys"):
        expected = expected["input_ids"]
    if list(expected) != ids:
        raise TrainingError(
            f"tokenizing the rendered text does not reproduce {template_name(tokenizer)}'s own token ids "
            "(the template adds tokens outside its text); this base model is not supported yet"
        )
