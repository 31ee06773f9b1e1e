"""The result that matters: compile the travel flow into the bundled 135M model on this CPU.

    python -m bench.travel_result [--n 300] [--steps 40] [--prefixes 30] [--out DIR]

1. Generate N scripted travel conversations (`engine.generate`, offline backend).
2. Compile SmolLM2-135M-Instruct on them (full parameters, `engine.train.loop`), for a fixed number of
   steps so it takes minutes; the eval loss of the base model is measured first.
3. Next-assistant-message check on held-out prefixes: for conversations of the eval split, cut
   before an agent turn, let the model reply greedily, and find the flowchart node whose example
   utterances (filled with the conversation's scenario) are nearest to the reply (MiniLM sentence
   embeddings, cosine). Right when that node is the node the turn was generated from. Compared:
   the compiled model with only the minimal system prompt, and the same base model given the whole
   flowchart in its system prompt (`engine.serialize`, the in-context set-up). The true next message
   goes through the same classifier, which tells how far the check itself can be trusted.
Prints a JSON summary and writes it to OUT/travel_result.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--prefixes", type=int, default=30)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--eval-conversations", type=int, default=0, help="Cap the held-out set (0: all).")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    out = Path(a.out or tempfile.mkdtemp(prefix="travel-result-"))
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("SUBTERRA_HOME", str(out / "home"))
    summary: dict[str, Any] = {"conversations": a.n, "steps": a.steps, "lr": a.lr, "batch_size": a.batch_size}
    flow, records = generate(a.n, summary)
    model_dir = compile_travel(flow, out, a, summary)
    summary["next_message"] = next_message_check(flow, records, model_dir, a.prefixes, a.max_new_tokens)
    (out / "travel_result.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


def generate(n: int, summary: dict[str, Any]) -> tuple[Any, list[dict[str, Any]]]:
    from engine.datasets import iter_conversations
    from engine.generate import GenerateConfig, generate_dataset
    from engine.store import Store

    store = Store()
    flow = store.get_flow("travel")
    t0 = time.perf_counter()
    generate_dataset(flow, GenerateConfig(n=n, dataset="travel-result"), store=store)
    summary["generate_s"] = round(time.perf_counter() - t0, 1)
    return flow, list(iter_conversations(store, "travel-result"))


def compile_travel(flow: Any, out: Path, a: argparse.Namespace, summary: dict[str, Any]) -> Path:
    from engine.train import loop as train
    from engine.train.config import TrainConfig

    cfg = TrainConfig(out=str(out / "compiled"), base="smollm2-135m", dataset="travel-result", flow="travel",
                            system_prompt=flow.system_prompt, max_steps=a.steps, lr=a.lr, batch_size=a.batch_size,
                            grad_accum=1, eval_every=max(1, a.steps // 2), patience=None, save_every=10**6,
                            warmup_ratio=0.05, add_to_registry=True, name="travel-result")
    t0 = time.perf_counter()
    run = train.setup(cfg)
    if a.eval_conversations:
        run.eval = run.eval[: a.eval_conversations]
    summary["setup_s"] = round(time.perf_counter() - t0, 1)
    t1 = time.perf_counter()
    summary["base_eval_loss"] = round(train.validate(run), 4)
    summary["base_eval_s"] = round(time.perf_counter() - t1, 1)
    train.fit(run)
    path = train.finish(run)
    prov = json.loads((path / "subterra.json").read_text())
    summary.update({
        "compile_wall_s": round(time.perf_counter() - t0, 1), "train_loop_s": prov["wall_time_s"],
        "precision": prov["precision"], "train_conversations": prov["data"]["train_conversations"],
        "eval_conversations": prov["data"]["eval_conversations"], "target_tokens_seen": prov["target_tokens_seen"],
        "tokens_seen": prov["tokens_seen"], "train_loss_curve": [(e["step"], e["loss"]) for e in prov["train_loss"]],
        "eval_loss_curve": [(0, summary["base_eval_loss"])] + [(e["step"], e["eval_loss"]) for e in prov["eval_loss"]],
        "best_eval_loss": prov["best_eval_loss"],
    })
    return path


def next_message_check(flow: Any, records: list[dict[str, Any]], model_dir: Path, n_prefixes: int,
                       max_new: int) -> dict[str, Any]:
    from engine.base_model import smollm2_dir
    from engine.serialize import serialize_flow

    prefixes = pick_prefixes(flow, [r for r in records if r["meta"].get("split") == "eval"], n_prefixes)
    from engine.evaluate.conformance import get_embedder

    embed = get_embedder()  # the evaluation's own MiniLM embedder
    in_context = serialize_flow(flow)
    results: dict[str, Any] = {"prefixes": len(prefixes)}
    truth = [nearest_node(flow, embed, p["reference"], p["scenario"]) for p in prefixes]
    results["reference_accuracy"] = _acc(truth, prefixes)
    for label, path, system in (("compiled", model_dir, flow.system_prompt),
                                ("base_in_context", smollm2_dir(), in_context)):
        t0 = time.perf_counter()
        replies = replies_for(path, prefixes, system, max_new)
        guesses = [nearest_node(flow, embed, r, p["scenario"]) for r, p in zip(replies, prefixes, strict=True)]
        results[label] = {"accuracy": _acc(guesses, prefixes), "seconds": round(time.perf_counter() - t0, 1),
                          "examples": [{"node": p["node"], "guess": g, "reply": r}
                                       for p, g, r in list(zip(prefixes, guesses, replies, strict=True))[:4]]}
    return results


def pick_prefixes(flow: Any, records: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Held-out cut points before agent turns, spread over conversations (seeded)."""
    agent = {nd.id for nd in flow.nodes if nd.role == "agent"}
    cuts = []
    for rec in records:
        nodes = rec["meta"].get("message_nodes") or []
        for i, m in enumerate(rec["messages"]):
            if m["role"] == "assistant" and i < len(nodes) and nodes[i] in agent:
                cuts.append({"messages": rec["messages"][:i], "node": nodes[i], "reference": m["content"],
                             "scenario": rec["meta"].get("scenario") or {}})
    random.Random(0).shuffle(cuts)
    return cuts[:n]


def replies_for(model_dir: Path, prefixes: list[dict[str, Any]], system: str, max_new: int) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for p in prefixes:
        msgs = [{"role": "system", "content": system}] + [m for m in p["messages"] if m["role"] != "system"]
        enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id)
        out.append(tok.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return out


def nearest_node(flow: Any, embed: Any, text: str, scenario: dict[str, Any]) -> str | None:
    from engine.flow import render_template

    candidates = [(nd.id, render_template(ex, scenario))
                  for nd in flow.nodes if nd.role == "agent" for ex in nd.examples]
    if not text.strip() or not candidates:
        return None
    sims = embed.embed([c for _, c in candidates]) @ embed.embed([text])[0]
    return candidates[int(sims.argmax())][0]


def _acc(guesses: list[str | None], prefixes: list[dict[str, Any]]) -> float:
    return round(sum(g == p["node"] for g, p in zip(guesses, prefixes, strict=True)) / max(len(prefixes), 1), 3)


if __name__ == "__main__":
    main()
