"""Render a conversation into token ids and a loss mask, explicitly.

The mask is 1 on the tokens of each assistant message's content and on the end-of-turn token
that closes it (so the model learns to stop), and 0 everywhere else: the system prompt, the user's
turns and the template's role headers. We find the assistant spans from the chat template itself,
without `{% generation %}` markers (few templates have them, and a template without them gives a
silent all-zero mask in the tools that rely on them): the template is rendered with a placeholder
per message (engine/chat_template.py), so each token is known to be template text or the content
of message i, and content is tokenized as text only (no forged control tokens). The ids are checked
against `tokenizer.apply_chat_template` itself whenever no content spells a control token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.errors import TrainingError

ROLES = ("system", "user", "assistant")


def render_conversation(tokenizer: Any, messages: Sequence[dict[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids and a 0/1 loss mask of the same length (1 on assistant content + end-of-turn token).

    Message content is tokenized as text only (engine/chat_template.py): a `<|im_start|>` typed into a
    message is trained as the characters it is, never as a control token.
    """
    from engine.chat_template import TemplateError, encode_chat

    _check_roles(messages)
    _check_append_only(tokenizer, messages, _template(tokenizer, messages))
    try:
        ids, owner = encode_chat(tokenizer, messages)
    except TemplateError:
        raise TrainingError(f"{template_name(tokenizer)} does not print message content verbatim; "
                            "pick a base model whose template keeps the content as is") from None
    assistant = {i for i, m in enumerate(messages) if m["role"] == "assistant"}
    specials = set(getattr(tokenizer, "all_special_ids", [])) | {tokenizer.eos_token_id}
    mask = [int(o in assistant) for o in owner]
    for k in range(1, len(ids)):  # the end-of-turn token the template puts right after an assistant message
        if owner[k] == -1 and owner[k - 1] in assistant and ids[k] in specials:
            mask[k] = 1
    if not _has_control_text(tokenizer, messages):
        _check_against_template(tokenizer, messages, ids)
    if not any(mask):
        raise TrainingError(
            f"the loss mask is all zeros for a conversation rendered with {template_name(tokenizer)}: no assistant "
            "token would be trained; check that the data has assistant messages and that the template prints them"
        )
    return ids, mask


def _check_append_only(tokenizer: Any, messages: Sequence[dict[str, str]], text: str) -> None:
    """Each assistant turn's prompt must be a prefix of the full text, or training differs from serving."""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = _template(tokenizer, messages[:i], generation_prompt=True) if i else ""
        full = _template(tokenizer, messages[: i + 1])
        if not (full.startswith(prefix) and text.startswith(full)):
            raise TrainingError(
                f"{template_name(tokenizer)} renders earlier turns differently once later turns follow (it "
                "rewrites history), so assistant tokens cannot be located; pick a base model with an append-only "
                "template"
            )


def _has_control_text(tokenizer: Any, messages: Sequence[dict[str, str]]) -> bool:
    """Whether some content spells a special token (the template's own tokenization would parse it)."""
    specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if t]
    return any(t in (m.get("content") or "") for m in messages for t in specials)


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
        return str(tokenizer.apply_chat_template(list(messages), tokenize=False,
                                                 add_generation_prompt=generation_prompt))
    except Exception as e:  # jinja raises for role orders a template refuses (e.g. assistant first)
        raise TrainingError(f"{template_name(tokenizer)} cannot render this conversation ({e}); "
                            "pick a base model whose template accepts these roles") from None


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
