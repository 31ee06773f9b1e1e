"""Example utterances held out of training.

A share of each node's (and each branch's) example utterances is never used to write training
conversations, so the evaluation's scripted user simulator and node mapper can be given sentences
the compiled model has not been trained on. The split is deterministic: an example is held out by
the rank of a hash of its text within its node (or edge), so it does not depend on seeds, order of
generation or the machine, and adding an example to a node moves at most one other.

    training_view(flow)   the flow generation uses (held-out examples removed)
    heldout_view(flow)    the flow with only the held-out examples (nodes/edges without any keep all
                          of theirs, so a mapper or simulator always has something to go on)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from engine.flow import Flow

HELDOUT_SHARE = 0.34
"""Default share of each node's examples kept out of training (nodes with 3+ examples hold out >= 1)."""


def split_examples(examples: Sequence[str], share: float = HELDOUT_SHARE,
                   salt: str = "") -> tuple[list[str], list[str]]:
    """(train, heldout) for one node's or edge's examples; order within each part is kept."""
    n = len(examples)
    k = 0 if share <= 0 or n < 3 else min(n - 2, max(1, round(n * share)))
    if k == 0:
        return list(examples), []
    ranked = sorted(range(n),
                    key=lambda i: hashlib.blake2b(f"{salt}\x00{examples[i]}".encode(), digest_size=8).digest())
    held = set(ranked[:k])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def training_view(flow: Flow, share: float = HELDOUT_SHARE) -> Flow:
    """A copy of the flow whose nodes and edges keep only their training examples."""
    return _view(flow, share, held=False)


def heldout_view(flow: Flow, share: float = HELDOUT_SHARE) -> Flow:
    """A copy of the flow whose nodes and edges keep only their held-out examples (all, where none is)."""
    return _view(flow, share, held=True)


def _view(flow: Flow, share: float, held: bool) -> Flow:
    out = flow.copy_deep()
    for node in out.nodes:
        train, heldout = split_examples(node.examples, share, f"node:{node.id}")
        node.examples = (heldout or train) if held else train
    for edge in out.edges:
        train, heldout = split_examples(edge.examples, share, f"edge:{edge.id}")
        edge.examples = (heldout or train) if held else train
    return out
