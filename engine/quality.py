"""Data quality of a generated dataset: does the training data listen?

A compiled model learns whatever its training conversations do, mistakes included. This report
measures, from the text of the conversations (so it applies to LLM-written datasets as well):

- facts re-asked: the customer stated a scenario fact (one of the flow's gathered variables), and a
  later assistant question asks for it again, although the customer did not bring that fact up
  again in between (a change of plan or second thoughts make asking again legitimate);
- contradictions: a customer message names another value of a fact than the scenario's (or than the
  value the customer changed it to), or an assistant message names a value the customer never said;
- facts unused: the customer stated a fact and no later assistant message mentions its value (a
  confirmation that leaves out the budget teaches a model to drop it);
- the distinct-utterance ratio (distinct messages / messages, per speaker) and edge coverage (share of
  the flow's edges that some conversation's path takes).

`dataset_quality(store, name)` is what `subterra datasets show` prints and the studio's conversation
browser shows; `conversation_quality` checks one conversation (tests use it on generated dialogues).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engine.datasets import iter_conversations
from engine.dialogue_state import FactSpec, asked_facts, fact_specs, gathered, stated_facts, variable_values
from engine.errors import GenerationError
from engine.flow import Flow
from engine.store import Store


class Reask(BaseModel):
    model_config = ConfigDict(extra="forbid")
    conversation: int = Field(description="Index of the conversation in the dataset (slot order).")
    message: int = Field(description="Index of the assistant message that asks again (system message = 0).")
    fact: str = Field(description="The variable asked for again.")
    text: str = Field(description="The assistant message.")


class ConversationQuality(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stated: list[str] = Field(description="Facts the customer stated.")
    reasked: list[Reask] = Field(description="Facts asked for again after the customer stated them.")
    contradictions: list[str] = Field(description="'customer:fact' / 'assistant:fact' value conflicts.")
    unused: list[str] = Field(default_factory=list, description="Stated facts no later assistant message mentions.")


class QualityReport(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str = Field(description="Dataset name.")
    flow: str = Field(description="Flow the dataset was generated from.")
    conversations: int = Field(description="Conversations checked.")
    facts: list[str] = Field(description="The gathered facts checked (variables named in some node's `gathers`).")
    facts_stated: int = Field(description="(conversation, fact) pairs the customer stated.")
    facts_reasked: int = Field(description="Of those, asked for again by the assistant afterwards.")
    reasked_share: float | None = Field(description="facts_reasked / facts_stated.")
    conversations_with_reask: float | None = Field(description="Share of conversations with at least one re-ask.")
    reasked_by_fact: dict[str, int] = Field(description="Re-asks per fact.")
    facts_unused: int = Field(0, description="Stated (conversation, fact) pairs no later assistant message mentions.")
    unused_share: float | None = Field(None, description="facts_unused / facts_stated.")
    unused_by_fact: dict[str, int] = Field(default_factory=dict, description="Unused facts per fact.")
    contradictions: int = Field(description="Messages naming a value of a fact that conflicts with the scenario.")
    contradiction_share: float | None = Field(description="Share of conversations with a contradiction.")
    distinct_ratio: float | None = Field(description="Distinct messages / messages (user and assistant).")
    distinct_ratio_user: float | None = Field(description="The same for customer messages.")
    distinct_ratio_assistant: float | None = Field(description="The same for assistant messages.")
    edge_coverage: float | None = Field(description="Share of the flow's edges taken by some conversation's path.")
    edges_missing: list[str] = Field(description="Edges no conversation takes.")
    customer_first_share: float | None = Field(description="Share of conversations the customer opens.")
    examples: list[Reask] = Field(description="A few re-asks to look at.")

    def lines(self) -> list[str]:
        """The report as `key value` lines (what `subterra datasets show` prints)."""
        def pct(x: float | None) -> str:
            return "-" if x is None else f"{100 * x:.1f}%"
        out = [
            f"facts checked        {', '.join(self.facts) or '(none: no node `gathers` variables)'}",
            f"facts re-asked       {self.facts_reasked}/{self.facts_stated} stated ({pct(self.reasked_share)}); "
            f"{pct(self.conversations_with_reask)} of conversations",
            f"facts unused         {self.facts_unused}/{self.facts_stated} stated ({pct(self.unused_share)}) never "
            "used by the assistant afterwards",
            f"contradictions       {self.contradictions} ({pct(self.contradiction_share)} of conversations)",
            f"distinct utterances  {pct(self.distinct_ratio)} (customer {pct(self.distinct_ratio_user)}, "
            f"assistant {pct(self.distinct_ratio_assistant)})",
            f"edge coverage        {pct(self.edge_coverage)}"
            + (f" (not taken: {', '.join(self.edges_missing[:6])}{' ...' if len(self.edges_missing) > 6 else ''})"
               if self.edges_missing else ""),
            f"customer opens       {pct(self.customer_first_share)}",
        ]
        for r in self.examples[:3]:
            out.append(f"  re-asked {r.fact} (conversation {r.conversation}, message {r.message}): {r.text[:100]}")
        return out


def dataset_quality(store: Store, name: str, split: str | None = None) -> QualityReport:
    """The data-quality report of dataset `name` (all splits unless `split`)."""
    row = store.dataset_row(name)
    if row is None:
        raise GenerationError(f"no dataset named '{name}'; datasets: {', '.join(store.dataset_names()) or 'none'}")
    if not store.has_flow(row["flow"]):
        raise GenerationError(f"dataset '{name}' was generated from flow '{row['flow']}', which is no longer stored")
    try:
        flow = store.get_flow(row["flow"], row["flow_version"])
    except Exception:  # noqa: BLE001 - that version is gone: the head still names the same facts
        flow = store.get_flow(row["flow"])
    return records_quality(flow, list(iter_conversations(store, name, split)), name)


def records_quality(flow: Flow, records: Sequence[dict[str, Any]], name: str = "") -> QualityReport:
    """The report over conversation records ({"messages", "meta"}) of `flow`."""
    specs = fact_specs(flow)
    facts = gathered(flow)
    stated = reasked = contra_convs = contradictions = with_reask = opens = unused = 0
    by_fact: dict[str, int] = {f: 0 for f in facts}
    unused_by: dict[str, int] = {f: 0 for f in facts}
    examples: list[Reask] = []
    texts: dict[str, list[str]] = {"user": [], "assistant": []}
    taken: set[tuple[str, str]] = set()
    for ci, rec in enumerate(records):
        messages = rec.get("messages", [])
        meta = rec.get("meta", {}) or {}
        q = conversation_quality(flow, messages, meta.get("scenario", {}) or {}, meta, specs, facts, ci)
        stated += len(q.stated)
        reasked += len(q.reasked)
        with_reask += bool(q.reasked)
        contradictions += len(q.contradictions)
        contra_convs += bool(q.contradictions)
        for r in q.reasked:
            by_fact[r.fact] = by_fact.get(r.fact, 0) + 1
        unused += len(q.unused)
        for f in q.unused:
            unused_by[f] = unused_by.get(f, 0) + 1
        examples += q.reasked[: max(0, 5 - len(examples))]
        for m in messages:
            if m.get("role") in texts:
                texts[m["role"]].append(m.get("content", "").strip())
        first = next((m for m in messages if m.get("role") != "system"), None)
        opens += first is not None and first.get("role") == "user"
        path = meta.get("path") or []
        taken.update(zip(path, path[1:], strict=False))
    n = len(records)
    all_texts = texts["user"] + texts["assistant"]
    edges = [(e.source, e.target, e.id) for e in flow.edges]
    missing = [eid for s, t, eid in edges if (s, t) not in taken]
    has_paths = any((rec.get("meta") or {}).get("path") for rec in records)
    return QualityReport(
        dataset=name, flow=flow.name, conversations=n, facts=facts,
        facts_stated=stated, facts_reasked=reasked, reasked_share=_share(reasked, stated),
        conversations_with_reask=_share(with_reask, n), reasked_by_fact=by_fact,
        facts_unused=unused, unused_share=_share(unused, stated), unused_by_fact=unused_by,
        contradictions=contradictions, contradiction_share=_share(contra_convs, n),
        distinct_ratio=_distinct(all_texts), distinct_ratio_user=_distinct(texts["user"]),
        distinct_ratio_assistant=_distinct(texts["assistant"]),
        edge_coverage=_share(len(edges) - len(missing), len(edges)) if has_paths else None,
        edges_missing=missing if has_paths else [],
        customer_first_share=_share(opens, n), examples=examples,
    )


def conversation_quality(flow: Flow, messages: Sequence[dict[str, str]], scenario: dict[str, Any],
                         meta: dict[str, Any] | None = None, specs: dict[str, FactSpec] | None = None,
                         facts: Sequence[str] | None = None, index: int = 0) -> ConversationQuality:
    """Re-asks and contradictions of one conversation (`scenario`: the variables it was written for)."""
    specs = specs or fact_specs(flow)
    facts = list(facts if facts is not None else gathered(flow))
    meta = meta or {}
    history = {k: [str(x) for x in v] for k, v in (meta.get("changes") or {}).items() if isinstance(v, list) and v}
    changes = {k: v[-1] for k, v in history.items()}
    marked = meta.get("facts_stated") if isinstance(meta.get("facts_stated"), list) else None
    values = dict(scenario)
    stated_at: dict[str, int] = {}  # fact -> message that stated it, until it is asked again or brought up again
    first_said: dict[str, int] = {}  # fact -> message that stated it first
    reasks: list[Reask] = []
    contradictions: list[str] = []
    for i, m in enumerate(messages):
        role, text = m.get("role"), m.get("content", "")
        if role == "user":
            said = set(stated_facts(text, values, facts))
            said |= set(stated_facts(text, {**values, **changes}, facts)) & set(changes)
            if marked is not None and i < len(marked) and isinstance(marked[i], list):
                said |= {f for f in marked[i] if f in facts}
            for f in said:
                stated_at.setdefault(f, i)
                first_said.setdefault(f, i)
            # bringing a fact up again (changing it, second thoughts) makes asking again fair
            for f in facts:
                if f in stated_at and f not in said and _mentions_cue(text, specs[f]):
                    del stated_at[f]
            contradictions += [f"customer:{f}" for f in _conflicts(flow, text, values, history, facts)]
        elif role == "assistant":
            for f in asked_facts(text, specs, [f for f in facts if f in stated_at]):
                reasks.append(Reask(conversation=index, message=i, fact=f, text=text))
                del stated_at[f]  # count a fact once per time it was stated
            known = [f for f in facts if f in first_said]  # stated in an earlier message
            contradictions += [f"assistant:{f}" for f in _invented(flow, text, messages[:i], values, changes, known)]
    return ConversationQuality(stated=sorted(first_said), reasked=reasks, contradictions=contradictions,
                               unused=_unused(messages, first_said, values, changes, facts))


# ----------------------------------------------------------------------------------------------
# helpers


def _unused(messages: Sequence[dict[str, str]], first_said: dict[str, int], values: dict[str, Any],
            changes: dict[str, Any], facts: Sequence[str]) -> list[str]:
    """Facts the customer stated that no assistant message after the first statement mentions (its value,
    or the value it was changed to)."""
    current = {**values, **changes}
    out = []
    for f, first in first_said.items():
        wanted = {str(v) for v in (values.get(f), changes.get(f)) if v is not None} - {""}
        later = [m.get("content", "") for m in messages[first + 1:] if m.get("role") == "assistant"]
        if not any(f in stated_facts(text, {**current, f: w}, facts) for text in later for w in wanted):
            out.append(f)
    return sorted(out)


def _mentions_cue(text: str, spec: FactSpec) -> bool:
    low = text.lower()
    return any(_word(low, c) for c in spec.cues)


def _word(text: str, w: str) -> bool:
    import re

    return re.search(r"(?<![\w])" + re.escape(w.lower()) + r"(?![\w])", text) is not None


def _conflicts(flow: Flow, text: str, values: dict[str, Any], history: dict[str, list[str]],
               facts: Iterable[str]) -> list[str]:
    """Facts for which the customer names a value that is neither the scenario's nor one it changed to."""
    low = text.lower()
    out = []
    for f in facts:
        ok = {str(values.get(f, "")).lower(), *(v.lower() for v in history.get(f, []))}
        others = [v for v in variable_values(flow, f) if v.lower() not in ok and not any(v.lower() in o for o in ok)]
        if any(_word(low, v) for v in others):
            out.append(f)
    return out


def _invented(flow: Flow, text: str, before: Sequence[dict[str, str]], values: dict[str, Any],
              changes: dict[str, Any], facts: Iterable[str]) -> list[str]:
    """Facts the customer stated for which the assistant names another value, never the customer's
    (instructions for several values at once, "on macOS ...; on Windows ...", are not a conflict)."""
    said = " ".join(m.get("content", "") for m in before if m.get("role") == "user").lower()
    low = text.lower()
    out = []
    for f in facts:
        current = str(changes.get(f, values.get(f, ""))).lower()
        if current and _word(low, current):
            continue
        for v in variable_values(flow, f):
            if _word(low, v) and not _word(said, v):
                out.append(f)
                break
    return out


def _share(k: int, n: int) -> float | None:
    return k / n if n else None


def _distinct(texts: Sequence[str]) -> float | None:
    return len(set(texts)) / len(texts) if texts else None
