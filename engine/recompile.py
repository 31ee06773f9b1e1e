"""Incremental recompile: the CI/CD cycle of a flow whose compiled model went stale.

    recompile(RecompileConfig) → RecompileReport
      1. diff      the flow now against the version the model was compiled from (its `subterra.json`)
      2. generate  keep every conversation whose path still exists and touches no changed node or
                   edge; write new ones only along paths through what changed (scripted backend,
                   the training view of the flow: held-out examples stay out)
      3. train     fine-tune the previous compiled model (or the base, on request) on the new
                   conversations plus a replay sample of the kept ones, with a preset (quick)
      4. evaluate  replies of the previous and the new model at the changed nodes, on held-out
                   prefixes, scored against the new and the old version's examples; optionally the
                   full scripted evaluation of the new model
Each stage's wall time and what was reused is in the report (and printed by `subterra recompile`).

"Touched": a node added, removed or changed (prompt, examples, label, role, outcome); an edge added,
removed or changed (its source→target pair, and the source node of an added or removed branch,
since what the assistant offers there changes). A changed variable touches everything. A changed
system prompt is written into the kept conversations instead of regenerating them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engine.diff import FlowDiff, diff_flows
from engine.errors import TrainingError
from engine.flow import Flow


class RecompileConfig(BaseModel):
    """What `subterra recompile FLOW` does."""

    model_config = ConfigDict(extra="forbid")

    flow: str = Field(description="Flow: a stored flow name (its head), name@version, or a flow file.")
    model: str | None = Field(
        None, description="Previous compiled model: registry name or directory (default: the flow's name).")
    from_base: bool = Field(
        False, description="Fine-tune the original base model instead of the previous compiled one.")
    preset: str = Field("quick", description="Training preset (`quick`, `standard`, `paper`).")
    out: str | None = Field(None, description="Directory of the new model (default: <data dir>/models/NAME-vVERSION).")
    min_new: int = Field(12, ge=1, description="Fewest conversations to write along changed paths.")
    # 0.5: travel's handoff prompt changed (58 of 120 conversations new), on 2 bf16 cores: replay 1.0 trained
    # 25 steps in 148 s, 0.5 trained 19 steps in 108 s and the new model still followed every edge (valid-edge
    # share 1.00 on 12 scenarios) with 3 of 4 held-out handoff replies closer to the new version (4 of 4 at 1.0)
    replay: float = Field(
        0.5, ge=0, description="Kept conversations trained on again, per new one (against forgetting; "
        "1.0 for more of the old behaviour kept, at a longer fine-tune).")
    scenarios: int = Field(
        0, ge=0, description="Also run the scripted evaluation of the new model on this many scenarios.")
    probes: int = Field(4, ge=0, description="Held-out prefixes per changed node on which old and new model reply.")
    seed: int = Field(0, description="Seed for the paths, scenarios and replay sample.")


class NodeCheck(BaseModel):
    """Did the change reach the weights? Replies at one changed node, previous vs new model."""

    model_config = ConfigDict(extra="forbid")

    node: str = Field(description="The changed node.")
    probes: int = Field(description="Held-out prefixes the two models replied to.")
    previous_closer_to_new: float | None = Field(
        description="Share of the previous model's replies closer to the new version.")
    new_closer_to_new: float | None = Field(description="Share of the new model's replies closer to the new version.")
    previous_similarity: float = Field(
        description="Mean cosine similarity of the previous model's replies to the new examples.")
    new_similarity: float = Field(description="Mean cosine similarity of the new model's replies to the new examples.")
    example_reply: str = Field("", description="One reply of the new model, for the eye.")


class RecompileReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    flow: str = Field(description="Flow name.")
    previous_model: str = Field(description="Directory of the model recompiled from.")
    previous_version: int | None = Field(description="Flow version the previous model was compiled from.")
    version: int = Field(description="Flow version recompiled to.")
    changes: list[str] = Field(description="The diff, one line per change.")
    touched_nodes: list[str] = Field(description="Nodes whose conversations were regenerated.")
    touched_edges: list[str] = Field(description="source->target pairs whose conversations were regenerated.")
    kept: int = Field(description="Conversations reused unchanged.")
    dropped_touched: int = Field(description="Conversations dropped because they pass through a change.")
    dropped_invalid: int = Field(description="Conversations dropped because their path no longer exists.")
    generated: int = Field(description="Conversations written along changed paths.")
    trained_on: int = Field(description="Conversations in the fine-tune (new + replayed).")
    train_steps: int = Field(0, description="Optimizer steps of the fine-tune.")
    started_from: str = Field(description="The weights fine-tuned: the previous model or the base.")
    out: str | None = Field(description="The new model directory (None when nothing changed).")
    dataset_file: str | None = Field(description="JSONL of the whole new-version dataset (kept + new).")
    stage_seconds: dict[str, float] = Field(description="Wall time of diff, generate, train, evaluate.")
    checks: list[NodeCheck] = Field(default_factory=list, description="Per changed node: did the change take effect.")
    evaluation: dict[str, Any] | None = Field(None, description="Objective metrics of the new model (when asked).")

    def lines(self) -> list[str]:
        t = self.stage_seconds
        out = [f"diff: {len(self.changes)} change(s) from v{self.previous_version} to v{self.version} "
               f"({t.get('diff', 0):.1f}s)"] + [f"  {c}" for c in self.changes]
        if self.out is None:
            return out + ["nothing to recompile: the model is up to date"]
        out += [f"generate: kept {self.kept} conversation(s), dropped {self.dropped_touched} through changes and "
                f"{self.dropped_invalid} with vanished paths, wrote {self.generated} new ({t.get('generate', 0):.1f}s)",
                f"train: {self.train_steps} steps on {self.trained_on} conversations from {self.started_from} "
                f"({t.get('train', 0):.1f}s)"]
        for c in self.checks:
            prev = "-" if c.previous_closer_to_new is None else f"{c.previous_closer_to_new:.0%}"
            new = "-" if c.new_closer_to_new is None else f"{c.new_closer_to_new:.0%}"
            out.append(f"  check {c.node}: replies closer to the new version: previous model {prev}, new model {new} "
                       f"(similarity to new examples {c.previous_similarity:.2f} → {c.new_similarity:.2f}, "
                       f"{c.probes} held-out prefixes)")
            if c.example_reply:
                out.append(f"    new model says: {c.example_reply[:160]!r}")
        if self.evaluation:
            out.append("  evaluation: " + ", ".join(f"{k} {v}" for k, v in self.evaluation.items()))
        out.append(f"evaluate: {t.get('evaluate', 0):.1f}s")
        total = sum(t.values())
        before_eval = t.get("diff", 0) + t.get("generate", 0) + t.get("train", 0)
        out.append(f"recompiled {self.out} in {total:.0f}s (diff + generate + train {before_eval:.0f}s)")
        return out


# ------------------------------------------------------------------------------------------------


def recompile(cfg: RecompileConfig, on_stage: Callable[[str], None] | None = None) -> RecompileReport:
    from engine.store import Store, load_flow

    say = on_stage or (lambda _m: None)
    times: dict[str, float] = {}
    t0 = time.monotonic()
    store = Store()
    new_flow = load_flow(cfg.flow, store)
    prev_dir, prov = _previous_model(cfg.model or new_flow.name)
    if prov.get("flow") and prov["flow"] != new_flow.name:
        raise TrainingError(f"model {prev_dir} was compiled for flow '{prov['flow']}', not '{new_flow.name}'")
    old_version = prov.get("flow_version")
    if old_version is None:
        raise TrainingError(
            f"{prev_dir}/subterra.json records no flow version; compile it again with `subterra compile`")
    old_flow = store.get_flow(new_flow.name, version=old_version)
    version = _version_of(store, new_flow)
    d = diff_flows(old_flow, new_flow)
    nodes, pairs = touched(d, old_flow, new_flow)
    changes = d.summary()
    times["diff"] = time.monotonic() - t0
    report = RecompileReport(flow=new_flow.name, previous_model=str(prev_dir), previous_version=old_version,
                             version=version, changes=changes, touched_nodes=sorted(nodes),
                             touched_edges=sorted(f"{a}->{b}" for a, b in pairs), kept=0, dropped_touched=0,
                             dropped_invalid=0, generated=0, trained_on=0, started_from="", out=None,
                             dataset_file=None, stage_seconds=times)
    times = report.stage_seconds  # pydantic copied the dict: keep filling the report's own
    if _only_moves(d):
        return report
    say(f"diff: {len(changes)} change(s); touched nodes {', '.join(sorted(nodes)) or '-'}")

    t0 = time.monotonic()
    records = _previous_records(prov)
    everything = bool(d.variables_added or d.variables_removed or d.variables_changed)
    kept, n_touched, n_invalid = [], 0, 0
    for rec in records:
        verdict = "touched" if everything else classify(rec, new_flow, nodes, pairs)
        if verdict == "keep":
            kept.append(_refresh(rec, new_flow, version))
        elif verdict == "touched":
            n_touched += 1
        else:
            n_invalid += 1
    n_new = max(cfg.min_new, n_touched + n_invalid)
    new = generate_along(new_flow, version, nodes, pairs, n_new, cfg.seed) if (nodes or pairs or everything) else []
    data_dir_ = _data_root() / "recompile"
    data_dir_.mkdir(parents=True, exist_ok=True)
    full = data_dir_ / f"{new_flow.name}-v{version}.jsonl"
    _write_jsonl(full, kept + new)
    rng = random.Random(cfg.seed)
    replay = rng.sample(kept, min(len(kept), max(1, round(len(new) * cfg.replay)))) if kept else []
    train_file = data_dir_ / f"{new_flow.name}-v{version}-train.jsonl"
    _write_jsonl(train_file, new + replay)
    times["generate"] = time.monotonic() - t0
    report.kept, report.dropped_touched, report.dropped_invalid = len(kept), n_touched, n_invalid
    report.generated = len(new)
    report.dataset_file, report.trained_on = str(full), len(new) + len(replay)
    say(f"generate: kept {len(kept)}, wrote {len(new)} ({times['generate']:.1f}s)")

    t0 = time.monotonic()
    out = Path(cfg.out) if cfg.out else _data_root() / "models" / f"{_registry_name(prov, prev_dir)}-v{version}"
    start = prov.get("base") if cfg.from_base else str(prev_dir)
    report.started_from = "base " + str(start) if cfg.from_base else "previous model " + str(prev_dir)
    report.out = str(out)
    steps = _train(cfg, new_flow, version, start, train_file, out, prov, report)
    report.train_steps = steps
    times["train"] = time.monotonic() - t0
    say(f"train: {steps} steps ({times['train']:.1f}s)")

    t0 = time.monotonic()
    report.checks = change_checks(old_flow, new_flow, nodes, new, prev_dir, out, cfg.probes)
    if cfg.scenarios:
        report.evaluation = _evaluate(new_flow, out, cfg.scenarios, cfg.seed)
    times["evaluate"] = time.monotonic() - t0
    _record(out, report)
    return report


# ------------------------------------------------------------------------------------------------
# diff → what to regenerate


def touched(d: FlowDiff, old: Flow, new: Flow) -> tuple[set[str], set[tuple[str, str]]]:
    """Nodes and source→target pairs whose conversations no longer match the flow."""
    nodes = set(d.nodes_added) | set(d.nodes_removed) | {c.item for c in d.nodes_changed}
    edges = {e.id: e for e in old.edges} | {e.id: e for e in new.edges}
    pairs: set[tuple[str, str]] = set()
    for eid in [*d.edges_added, *d.edges_removed, *(c.item for c in d.edges_changed)]:
        for flow in (old, new):
            e = next((x for x in flow.edges if x.id == eid), None)
            if e is not None:
                pairs.add((e.source, e.target))
    for eid in [*d.edges_added, *d.edges_removed]:  # a new or vanished branch changes what is offered there
        nodes.add(edges[eid].source)
    return nodes, pairs


def classify(rec: dict[str, Any], flow: Flow, nodes: set[str], pairs: set[tuple[str, str]]) -> str:
    """'keep', 'touched' (passes through a change) or 'invalid' (its path no longer exists)."""
    from engine.paths import is_valid_path

    path = (rec.get("meta") or {}).get("path")
    if not path:
        return "invalid"  # no path recorded: we cannot tell, so it is rewritten
    visits = max(Counter(path).values())
    if not is_valid_path(flow, path, max_visits=visits):
        return "invalid"
    if nodes & set(path) or pairs & set(zip(path, path[1:], strict=False)):
        return "touched"
    return "keep"


def generate_along(flow: Flow, version: int, nodes: set[str], pairs: set[tuple[str, str]], n: int,
                   seed: int) -> list[dict[str, Any]]:
    """`n` scripted conversations along paths through the touched nodes/pairs (coverage-guided)."""
    from engine.backends.base import Sampling, get_backend
    from engine.generate import stratified_split, write_conversation
    from engine.holdout import training_view
    from engine.paths import coverage_paths
    from engine.scenario import sample_scenario

    pool = coverage_paths(flow, max(4 * n, 200), k=1, seed=seed, max_visits=2)
    through = [p for p in pool if nodes & set(p) or pairs & set(zip(p, p[1:], strict=False))]
    if not through:
        return []
    paths = [through[i % len(through)] for i in range(n)]
    splits = stratified_split([tuple(p) for p in paths], 0.2, seed)
    gen_flow = training_view(flow)
    backend = get_backend("scripted")

    async def write_all() -> list[Any]:
        out = []
        for i, p in enumerate(paths):
            rng = random.Random(hashlib.sha256(f"recompile:{seed}:{version}:{i}".encode()).digest())
            conv = await write_conversation(gen_flow, p, sample_scenario(gen_flow, rng), backend,
                                            rng.randrange(2**31), Sampling(temperature=0.9, max_tokens=300))
            out.append(conv)
        await backend.aclose()
        return out

    convs = asyncio.run(write_all())
    return [{"messages": c.messages, "meta": c.meta | {"flow_version": version, "split": splits[i],
                                                      "recompile": True}} for i, c in enumerate(convs)]


# ------------------------------------------------------------------------------------------------
# train


def _train(cfg: RecompileConfig, flow: Flow, version: int, start: str | None, data: Path, out: Path,
           prov: dict[str, Any], report: RecompileReport) -> int:
    from engine.train.config import TrainConfig
    from engine.train.loop import compile_model
    from engine.train.presets import apply_preset

    if (out / "config.json").is_file():
        raise TrainingError(f"{out} already holds a model; pick another --out or delete it")
    previous = prov.get("config") or {}
    values = apply_preset(cfg.preset, {"out": str(out), "base": start or "smollm2-135m", "data": [str(data)],
                                       "flow": flow.name, "flow_version": version,
                                       "system_prompt": flow.system_prompt or None,
                                       "name": previous.get("name") or Path(report.previous_model).name,
                                       "seed": cfg.seed}, explicit=set())
    tc = TrainConfig(**values)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(tc.model_dump_json(indent=2))
    compile_model(tc)
    return int(json.loads((out / "subterra.json").read_text()).get("steps", 0))


def _record(out: Path, report: RecompileReport) -> None:
    """Add the recompile record to the new model's provenance (the next recompile reads its dataset)."""
    from engine.registry import register_model

    f = out / "subterra.json"
    prov = json.loads(f.read_text())
    prov["recompile"] = report.model_dump(mode="json")
    f.write_text(json.dumps(prov, indent=2))
    name = (prov.get("config") or {}).get("name")
    if name and (prov.get("config") or {}).get("add_to_registry", True):
        register_model(name=name, path=out, provenance=prov)


# ------------------------------------------------------------------------------------------------
# evaluate


def change_checks(old: Flow, new: Flow, nodes: set[str], convs: list[dict[str, Any]], prev_dir: Path,
                  new_dir: Path, probes: int) -> list[NodeCheck]:
    """At each changed agent node: reply with both models to held-out prefixes ending just before it;
    a reply is "closer to the new version" when its MiniLM similarity to the new examples beats the old ones."""
    from engine.evaluate.conformance import get_embedder
    from engine.holdout import heldout_view

    targets = [n for n in sorted(nodes) if _is_agent(new, n)]
    if not targets or not probes:
        return []
    held_new, held_old = heldout_view(new), heldout_view(old)
    prefixes: dict[str, list[list[dict[str, str]]]] = {n: [] for n in targets}
    for rec in sorted(convs, key=lambda r: r["meta"].get("split") != "eval"):  # held-out conversations first
        for i, node in enumerate(rec["meta"].get("message_nodes", [])):
            if node in prefixes and len(prefixes[node]) < probes and i > 0:
                prefixes[node].append(rec["messages"][:i])
    emb = get_embedder()
    replies = {d: _replies(d, [p for n in targets for p in prefixes[n]]) for d in (prev_dir, new_dir)}
    checks, k = [], 0
    for n in targets:
        m = len(prefixes[n])
        if not m:
            continue
        new_ex = _examples(held_new, n)
        old_ex = _examples(held_old, n) if any(x.id == n for x in old.nodes) else []
        row: dict[str, Any] = {}
        for label, d in (("previous", prev_dir), ("new", new_dir)):
            texts = replies[d][k:k + m]
            s_new = _best_sim(emb, texts, new_ex)
            row[f"{label}_similarity"] = round(sum(s_new) / len(s_new), 3)
            if old_ex and old_ex != new_ex:
                s_old = _best_sim(emb, texts, old_ex)
                row[f"{label}_closer_to_new"] = round(sum(a > b for a, b in zip(s_new, s_old, strict=True)) / m, 3)
            else:
                row[f"{label}_closer_to_new"] = None
        checks.append(NodeCheck(node=n, probes=m, example_reply=replies[new_dir][k], **row))
        k += m
    return checks


def _replies(model_dir: Path, prefixes: list[list[dict[str, str]]]) -> list[str]:
    """Greedy replies of a local model to each conversation prefix (transformers, batch of one)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BatchEncoding

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out: list[str] = []
    with torch.no_grad():
        for msgs in prefixes:
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
            # transformers types the result as any of its return shapes; return_dict=True makes it a BatchEncoding
            assert isinstance(ids, BatchEncoding)
            gen = model.generate(**ids, max_new_tokens=60, do_sample=False, pad_token_id=tok.pad_token_id)
            out.append(str(tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)).strip())
    return out


def _best_sim(emb: Any, texts: list[str], examples: list[str]) -> list[float]:
    import numpy as np

    a, b = np.asarray(emb.embed(texts)), np.asarray(emb.embed(examples))
    return [float(x) for x in (a @ b.T).max(axis=1)]


def _evaluate(flow: Flow, model_dir: Path, scenarios: int, seed: int) -> dict[str, Any]:
    from engine.evaluate.run import run_evaluation
    from engine.evaluate.schema import EvalConfig

    res = run_evaluation(EvalConfig(flow=flow.name, agents=[f"compiled:{model_dir}"], scenarios=scenarios,
                                    seed=seed, agent_temperature=0.0, out=str(model_dir / "evaluation")))
    report = getattr(res, "report", res)
    data = report.model_dump(mode="json") if hasattr(report, "model_dump") else dict(report)
    agent: dict[str, Any] = (next(iter((data.get("agents") or {}).values()), {})
                             if isinstance(data.get("agents"), dict) else {})
    keep = ("valid_edge_share", "success", "edit_distance_norm")
    return {k: _mean_of(agent.get(k)) for k in keep if k in agent} or {"report": str(model_dir / "evaluation")}


# ------------------------------------------------------------------------------------------------
# helpers


def _previous_model(ref: str) -> tuple[Path, dict[str, Any]]:
    from engine.registry import get_model

    path = Path(ref)
    if not (path / "config.json").is_file():
        try:
            path = Path(get_model(ref).path)
        except TrainingError:
            raise TrainingError(f"no compiled model '{ref}' to recompile (neither a registry name nor a model "
                                "directory); compile it first with `subterra compile FLOW`, or pass --model") from None
    f = path / "subterra.json"
    if not f.is_file():
        raise TrainingError(f"{path} has no subterra.json, so its flow version is unknown; recompile needs a model "
                            "made by `subterra compile`")
    return path, json.loads(f.read_text())


def _previous_records(prov: dict[str, Any]) -> list[dict[str, Any]]:
    from engine.datasets import iter_conversations, load_jsonl
    from engine.store import Store

    if (prov.get("recompile") or {}).get("dataset_file"):
        return load_jsonl(prov["recompile"]["dataset_file"])
    ds = prov.get("dataset")
    if isinstance(ds, str):
        return list(iter_conversations(Store(), ds))
    return [r for p in ds or [] for r in load_jsonl(p)]


def _refresh(rec: dict[str, Any], flow: Flow, version: int) -> dict[str, Any]:
    msgs = [dict(m) for m in rec["messages"]]
    if msgs and msgs[0]["role"] == "system" and flow.system_prompt:
        msgs[0]["content"] = flow.system_prompt
    return {"messages": msgs, "meta": {**rec.get("meta", {}), "flow_version": version, "reused": True}}


def _version_of(store: Any, flow: Flow) -> int:
    digest = hashlib.sha256(json.dumps(flow.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
    v = store.flow_version_with_hash(flow.name, digest)
    return v if v is not None else store.save_flow(flow, message="used for recompile")


def _only_moves(d: FlowDiff) -> bool:
    return all(not getattr(d, f) for f in type(d).model_fields if f != "nodes_moved")


def _registry_name(prov: dict[str, Any], prev_dir: Path) -> str:
    name = (prov.get("config") or {}).get("name") or prev_dir.name
    return name.rsplit("-v", 1)[0] if name.rsplit("-v", 1)[-1].isdigit() else name


def _is_agent(flow: Flow, node_id: str) -> bool:
    n = next((x for x in flow.nodes if x.id == node_id), None)
    return n is not None and n.role in ("agent", "terminal") and bool(n.examples)


def _examples(flow: Flow, node_id: str) -> list[str]:
    n = next(x for x in flow.nodes if x.id == node_id)
    return [str(e) for e in n.examples]


def _mean_of(v: Any) -> Any:
    return v.get("mean") if isinstance(v, dict) else v


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    tmp.replace(path)


def _data_root() -> Path:
    from engine.store import data_dir

    return data_dir()
