"""Terminal outcomes between subterra's open vocabulary and tools that know only three kinds.

subterra terminals say `success`, `abandoned`, `escalated` or a word of the flow's own (`denied`,
`pending`); agent2model knows `success`, `abandonment` and `escalation`; LangGraph's END and a Mermaid
sink know none. The default rule for a word of its own: the procedure reached one of its designed
endings (success), unless the word names a hand-off to a person (escalation) or the customer leaving
(abandonment).
"""

from __future__ import annotations

import re

A2M_KINDS: tuple[str, ...] = ("success", "abandonment", "escalation")
NATIVE_FOR_KIND: dict[str, str] = {"success": "success", "abandonment": "abandoned", "escalation": "escalated"}
KIND_FOR_NATIVE: dict[str, str] = {v: k for k, v in NATIVE_FOR_KIND.items()}

_ESCALATION = ("escalat", "handoff", "transfer", "human", "adjuster", "supervisor", "manager", "specialist",
               "operator", "representative")
_ABANDONMENT = ("abandon", "hang", "hung", "quit", "leave", "left", "drop", "disconnect", "timeout", "giveup",
                "gaveup", "walk", "bail")

RULE = ("a custom outcome counts as success unless its word names a hand-off (escalat-, transfer, human, "
        "supervisor, ... -> escalation) or the customer leaving (abandon-, hang up, quit, left, ... -> abandonment)")


def guess_kind(text: str) -> str:
    """agent2model kind for a word (or a node name) by the default rule."""
    words = re.findall(r"[a-z]+", (text or "").lower().replace("_", " ").replace("-", " "))
    joined = "".join(words)
    if any(c in joined for c in ("handoff", "handover", "giveup", "gaveup", "hangup")):
        return "escalation" if "hand" in joined and "hang" not in joined else "abandonment"
    for w in words:
        if any(w.startswith(c) for c in _ESCALATION):
            return "escalation"
    for w in words:
        if any(w.startswith(c) for c in _ABANDONMENT):
            return "abandonment"
    return "success"


def guess_outcome(text: str) -> str:
    """subterra outcome (success, abandoned, escalated) for a name by the same rule."""
    return NATIVE_FOR_KIND[guess_kind(text)]


def parse_kind(value: str) -> str | None:
    """`abandonment` or subterra's `abandoned` (any case) -> the agent2model kind; None if neither."""
    v = value.strip().lower()
    if v in A2M_KINDS:
        return v
    return KIND_FOR_NATIVE.get(v)
