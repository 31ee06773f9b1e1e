"""Read-only views of what a flow produced, for the studio and scripts: the conversations of its
datasets (filtered by path, outcome, split and text), how many conversations traverse each edge, and
which registered models were compiled from an older version of the flow (with the diff since).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engine.diff import diff_flows
from engine.errors import GenerationError
from engine.flow import Flow
from engine.registry import ModelEntry, list_models
from engine.store import Store


class ConversationView(BaseModel):
    """One stored conversation with the node behind each message."""

    model_config = ConfigDict(extra="forbid")

    slot: int = Field(description="The conversation's slot in its dataset.")
    split: str = Field(description="train or eval.")
    path: list[str] = Field(description="Node ids the conversation walks, start to terminal.")
    outcome: str | None = Field(None, description="Outcome of the terminal it ends at.")
    messages: list[dict[str, Any]] = Field(description="{role, content, node}; node is None for the system "
                                                       "message and inserted short replies.")


class Staleness(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    flow_version: int | None = Field(description="Flow version the model was compiled from.")
    head_version: int = Field(description="The flow's version now.")
    stale: bool = Field(description="The flow's content changed since (moves on the canvas do not count).")
    changes: list[str] = Field(default_factory=list, description="The diff, one line per change.")


def flow_datasets(store: Store, flow: str) -> list[dict[str, Any]]:
    """Datasets generated from `flow` (newest first): name, flow_version, conversations, train, eval."""
    rows = [d for d in store.dataset_summaries() if d["flow"] == flow]
    return sorted(rows, key=lambda d: -(d.get("updated") or 0))


def find_conversations(store: Store, flow: Flow, dataset: str, node: str | None = None, outcome: str | None = None,
                       split: str | None = None, text: str | None = None,
                       limit: int = 50) -> tuple[int, list[ConversationView]]:
    """Conversations of `dataset` whose path passes `node`, ending in `outcome`, in `split`, containing
    `text` (case-insensitive); returns (how many match, the first `limit`)."""
    row = store.dataset_row(dataset)
    if row is None:
        raise GenerationError(f"no dataset named '{dataset}'; generate one first")
    needle = (text or "").strip().lower()
    outcomes = {n.id: (n.outcome or "success") for n in flow.nodes if n.role == "terminal"}
    matched = 0
    out: list[ConversationView] = []
    for r in store.iter_conversation_rows(int(row["id"]), split if split in ("train", "eval") else None):
        meta = json.loads(r["meta"])
        path = list(meta.get("path") or [])
        end = outcomes.get(path[-1]) if path else None
        if node and node not in path:
            continue
        if outcome and end != outcome:
            continue
        messages = json.loads(r["messages"])
        if needle and not any(needle in m["content"].lower() for m in messages):
            continue
        matched += 1
        if len(out) < limit:
            nodes = list(meta.get("message_nodes") or [])
            msgs = [{"role": m["role"], "content": m["content"], "node": nodes[i] if i < len(nodes) else None}
                    for i, m in enumerate(messages)]
            out.append(ConversationView(slot=r["slot"], split=r["split"], path=path, outcome=end, messages=msgs))
    return matched, out


def edge_coverage(store: Store, flow: Flow, dataset: str) -> dict[str, int]:
    """For every edge of `flow`: how many conversations of `dataset` traverse it (0 = uncovered)."""
    row = store.dataset_row(dataset)
    counts: Counter[tuple[str, str]] = Counter()
    if row is not None:
        for r in store.iter_conversation_rows(int(row["id"])):
            path = json.loads(r["meta"]).get("path") or []
            counts.update(set(zip(path, path[1:], strict=False)))
    return {e.id: counts.get((e.source, e.target), 0) for e in flow.edges}


def model_staleness(store: Store, flow: str, models: list[ModelEntry] | None = None) -> list[Staleness]:
    """Each registered model of `flow`, marked stale when the flow's content changed since its version."""
    if not store.has_flow(flow):
        return []
    head = store.flow_version(flow)
    now_flow = store.get_flow(flow)
    out = []
    for m in models if models is not None else list_models(store):
        if m.flow != flow:
            continue
        changes: list[str] = []
        if m.flow_version and m.flow_version != head:
            try:
                old = store.get_flow(flow, m.flow_version)
            except Exception:  # noqa: BLE001 - a version deleted with its flow: say so instead of failing
                changes = [f"version {m.flow_version} is no longer stored"]
            else:
                changes = [line for line in diff_flows(old, now_flow).summary() if not line.endswith(": moved")]
        out.append(Staleness(model=m.name, flow_version=m.flow_version, head_version=head, stale=bool(changes),
                             changes=changes))
    return out
