"""Datasets in the store, and their JSONL form (one conversation per line):

    {"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...],
     "meta": {"flow", "flow_version", "path", "message_nodes", "scenario", "seed", "split", ...}}

The `messages` list is what transformers chat templates, TRL and OpenAI fine-tuning read. The
trainer reads stored datasets with `iter_conversations` and files with `load_jsonl`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.errors import GenerationError
from engine.store import Store

ROLES = ("system", "user", "assistant")


def list_datasets(store: Store) -> list[dict[str, Any]]:
    """Every dataset: name, flow, flow_version, target, conversations per split, created/updated."""
    return store.dataset_summaries()


def dataset_info(store: Store, name: str) -> dict[str, Any]:
    for d in list_datasets(store):
        if d["name"] == name:
            return d | {"failed_attempts": store.count_generation_failures(d["id"])}
    raise _unknown(store, name)


def iter_conversations(store: Store, dataset_name: str, split: str | None = None) -> Iterator[dict[str, Any]]:
    """The dataset's conversations in slot order as JSONL records; `split` = 'train' | 'eval' | None (all)."""
    row = store.dataset_row(dataset_name)
    if row is None:
        raise _unknown(store, dataset_name)
    if split is not None and split not in ("train", "eval"):
        raise GenerationError(f"unknown split '{split}'; use train or eval")
    for r in store.iter_conversation_rows(row["id"], split):
        meta = json.loads(r["meta"])
        meta["split"] = r["split"]
        yield {"messages": json.loads(r["messages"]), "meta": meta}


def export_jsonl(store: Store, name: str, path: str | Path, split: str | None = None) -> int:
    """Write the dataset to `path` (atomically: a temp file renamed into place). Returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    n = 0
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for rec in iter_conversations(store, name, split):
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException as e:  # a full disk, a kill: no half-written file is left, the old export stays
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise GenerationError(f"cannot write {path} ({e.strerror or e}); free some space or pick another "
                                  "--out, then export again") from None
        raise
    return n


def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL dataset, checking each line's shape; errors name the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise GenerationError(f"cannot read {path} ({e.strerror}); check the path") from None
    out = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise GenerationError(f"{path}:{i}: not valid JSON ({e.msg}); each line must be one conversation") from None
        problem = check_record(rec)
        if problem:
            raise GenerationError(f"{path}:{i}: {problem}")
        rec.setdefault("meta", {})
        out.append(rec)
    return out


def check_record(rec: Any) -> str | None:
    """Why `rec` is not a valid conversation record, or None when it is."""
    if not isinstance(rec, dict) or not isinstance(rec.get("messages"), list) or not rec["messages"]:
        return 'expected {"messages": [{"role": ..., "content": ...}, ...], "meta": {...}}'
    if "meta" in rec and not isinstance(rec["meta"], dict):
        return '"meta" must be an object'
    for j, m in enumerate(rec["messages"]):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            return f"message {j} must be {{\"role\": system|user|assistant, \"content\": text}}"
    return None


def delete_dataset(store: Store, name: str) -> int:
    """Remove a dataset and its conversations; returns how many conversations went."""
    row = store.dataset_row(name)
    if row is None:
        raise GenerationError(f"no dataset named '{name}'")
    return store.delete_dataset(row["id"])


def _unknown(store: Store, name: str) -> GenerationError:
    names = ", ".join(store.dataset_names()) or "none (run subterra generate)"
    return GenerationError(f"no dataset named '{name}'; datasets: {names}")
