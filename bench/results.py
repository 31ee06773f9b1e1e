"""The paper's comparison at laptop scale, offline: `make results` or `python -m bench.results`.

For each sample flow: generate scripted conversations (a share of every node's examples held out,
`engine.holdout`), compile the bundled SmolLM2-135M with the `quick` preset, then evaluate three
agents on the same scenarios with the scripted user simulator:

    compiled      the compiled model, minimal system prompt
    in-context    the same base model, the whole flowchart in its prompt
    orchestrator  the same base model under the surface orchestrator

Fairness: the simulator speaks, and the node mapper compares against, the *held-out* examples
(`heldout_view`), never the sentences the training conversations were written from; the two
baselines get the full flow as their method prescribes. The report has valid-edge share, terminal
success, node-sequence edit distance, pass^k, paired Wilcoxon tests with Holm-Bonferroni
correction, bootstrap CIs, tokens and cost per conversation (from `engine.evaluate`), and the wall
time of every stage. Local agents run batched on vLLM with prefix caching when `.venv-vllm` (or
SUBTERRA_VLLM) is there (`--engine vllm`), otherwise on transformers (`--engine transformers`).

Writes `results/summary.json`, `results/index.html`, `results/<flow>/report.{json,html}` and the
dated table between the README's `<!-- results:start -->` / `<!-- results:end -->` markers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FLOWS = ("travel", "zoom", "insurance")
KINDS = ("compiled", "in-context", "orchestrator")
METRICS = ("valid_edge_share", "success", "edit_distance_norm")
# a request to a local vLLM server sharing 2 cores with another can queue for minutes (the client's default: 120 s)
LOCAL_TIMEOUT_S = 900.0
# conversations in flight on vLLM: it batches them (measured on 2 cores, 12 scenarios x 3 agents: travel's
# evaluation took 1,437 s at the evaluator's default of 4 and 326 s at 18)
VLLM_CONCURRENCY = 18


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.results", description=__doc__.splitlines()[0])
    ap.add_argument("--flows", default=",".join(FLOWS), help="Comma-separated sample flows.")
    ap.add_argument("--scenarios", type=int, default=50, help="Scenarios per flow (each agent talks all of them).")
    ap.add_argument("--repeats", type=int, default=2, help="Runs per scenario and agent (k of pass^k).")
    ap.add_argument("--conversations", type=int, default=None, help="Training conversations (default: the preset's).")
    ap.add_argument("--max-tokens", type=int, default=96, help="Most tokens per agent message.")
    ap.add_argument("--engine", choices=("auto", "vllm", "transformers"), default="auto")
    ap.add_argument("--concurrency", type=int, default=None,
                    help=f"Conversations in flight (default: {VLLM_CONCURRENCY} on vLLM, else the evaluator's).")
    ap.add_argument("--out", default=str(ROOT / "results"), help="Output folder.")
    ap.add_argument("--no-readme", action="store_true", help="Do not write the README table.")
    ap.add_argument("--add", action="store_true",
                    help="Keep other flows' rows already in OUT/summary.json (each row says which run it came from).")
    a = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    engine = _engine(a.engine)
    if a.concurrency is None and engine == "vllm":
        a.concurrency = VLLM_CONCURRENCY  # recorded in summary.json with the rest of the run
    started = time.monotonic()
    kept = _kept_rows(out, a.flows.split(",")) if a.add else []
    rows: list[dict[str, Any]] = []
    from engine.errors import SubterraError

    for flow in a.flows.split(","):
        try:
            rows.append(run_flow(flow.strip(), out, a.scenarios, a.repeats, a.conversations, a.max_tokens, engine,
                                 a.concurrency))
        except SubterraError as e:  # a missing flow, a server that would not start: say it, no traceback
            print(f"error: {flow.strip()}: {e}", file=sys.stderr)
            return 1
        rows[-1]["run"] = _run_info(a, engine)
        _write(out, kept + rows, a, engine, time.monotonic() - started)  # partial results survive a later failure
    summary = _write(out, kept + rows, a, engine, time.monotonic() - started)
    if not a.no_readme:
        write_readme_table(ROOT / "README.md", summary)
    for line in table_lines(summary):
        print(line)
    return 0


def run_flow(flow_name: str, out: Path, scenarios: int, repeats: int, conversations: int | None, max_tokens: int,
             engine: str, concurrency: int | None = None) -> dict[str, Any]:
    from engine.formats import dump_flow
    from engine.generate import GenerateConfig, generate_dataset
    from engine.holdout import heldout_view
    from engine.store import Store, data_dir
    from engine.train.config import TrainConfig
    from engine.train.loop import compile_model
    from engine.train.presets import apply_preset, get_preset

    store = Store()
    flow = store.get_flow(flow_name)
    stages: dict[str, float] = {}
    here = out / flow_name
    here.mkdir(parents=True, exist_ok=True)
    print(f"== {flow_name}", flush=True)

    t0 = time.monotonic()
    n = conversations or get_preset("quick").conversations
    ds = f"results-{flow_name}-{n}"
    generate_dataset(flow, GenerateConfig(n=n, dataset=ds), store=store)
    stages["generate"] = time.monotonic() - t0

    t0 = time.monotonic()
    model_dir = data_dir() / "models" / ds
    if not (model_dir / "subterra.json").is_file():
        values = apply_preset("quick", {"out": str(model_dir), "dataset": ds, "flow": flow.name, "name": ds,
                                        "flow_version": store.flow_version(flow.name),
                                        "system_prompt": flow.system_prompt or None}, explicit=set())
        compile_model(TrainConfig(**values))
    prov = json.loads((model_dir / "subterra.json").read_text())
    stages["compile"] = time.monotonic() - t0
    print(f"   compiled in {stages['compile']:.0f}s, eval loss {prov['best_eval_loss']:.3f}", flush=True)

    heldout = here / f"{flow_name}-heldout.json"  # what the simulator and the node mapper see
    heldout.write_text(dump_flow(heldout_view(flow), "json"))
    t0 = time.monotonic()
    report = _evaluate(flow_name, heldout, model_dir, scenarios, repeats, max_tokens, engine, here, concurrency)
    stages["evaluate"] = time.monotonic() - t0
    print(f"   evaluated in {stages['evaluate']:.0f}s", flush=True)
    return {"flow": flow_name, "stages_s": {k: round(v, 1) for k, v in stages.items()}, "model": str(model_dir),
            "train": {"conversations": prov["data"]["train_conversations"], "steps": prov["steps"],
                      "wall_s": prov["wall_time_s"], "best_eval_loss": prov["best_eval_loss"],
                      "tokens": prov["tokens_seen"]},
            **_extract(report)}


def _evaluate(flow: str, heldout: Path, model_dir: Path, scenarios: int, repeats: int, max_tokens: int,
              engine: str, here: Path, concurrency: int | None = None) -> dict[str, Any]:
    from engine.agents import load_agent
    from engine.base_model import smollm2_dir
    from engine.evaluate.run import run_evaluation
    from engine.evaluate.schema import EvalConfig

    specs = {"compiled": f"compiled:{model_dir}", "in-context": f"in-context:{flow}",
             "orchestrator": f"orchestrator:{flow}"}
    cfg = EvalConfig(flow=str(heldout), agents=list(specs.values()), scenarios=scenarios, repeats=repeats,
                     agent_temperature=0.0, agent_max_tokens=max_tokens, out=str(here), name=f"results-{flow}",
                     **({"concurrency": concurrency} if concurrency else {}))
    sampling = {"temperature": 0.0, "max_tokens": max_tokens, "seed": 0}
    if engine != "vllm":
        agents = {s: load_agent(s, **sampling) for s in specs.values()}
        return _report_dict(_with_progress(run_evaluation, cfg, agents, flow))
    from engine.serve.vllm import VLLMServer

    os.environ.setdefault("OPENAI_API_KEY", "local")
    args = ["--enable-prefix-caching"]
    # the in-context agent's prompt holds the whole flowchart (travel: over 2,048 tokens): the base model is
    # served with its own context length (8,192 for SmolLM2), not the 2,048 a compiled model needs
    # two local servers share 2 cores, so with many conversations in flight a request can queue for
    # minutes: a busy local server is slow, not down, and must not turn conversations into errors
    patient = {"timeout": LOCAL_TIMEOUT_S}
    with VLLMServer(model_dir, extra_args=args) as comp, \
            VLLMServer(smollm2_dir(), extra_args=args, max_model_len=None) as base:
        agents = {specs["compiled"]: load_agent(specs["compiled"], base_url=comp.base_url,
                                                served_model=comp.served_name, backend_options=patient, **sampling)}
        for kind in ("in-context", "orchestrator"):
            spec = f"{kind}:{flow}@openai:{base.served_name}"
            agents[specs[kind]] = load_agent(spec, backend_options={"base_url": base.base_url} | patient, **sampling)
        return _report_dict(_with_progress(run_evaluation, cfg, agents, flow))


def _with_progress(run_evaluation: Any, cfg: Any, agents: dict[str, Any], flow: str) -> Any:
    """The evaluation with a progress line (conversations done, rate, ETA) on stderr."""
    from engine.cli.progress import FractionLine

    line = FractionLine(f"   {flow}: evaluate")
    try:
        return run_evaluation(cfg, agents=agents, progress=line)
    finally:
        line.close()


def _report_dict(res: Any) -> dict[str, Any]:
    rep = getattr(res, "report", res)
    return rep.model_dump(mode="json") if hasattr(rep, "model_dump") else dict(rep)


def _extract(rep: dict[str, Any]) -> dict[str, Any]:
    """Per agent kind: the objective metrics with CIs, pass^k, tokens and cost; compiled-vs-baseline tests."""
    by_kind: dict[str, Any] = {}
    spec_kind = {}
    for spec, s in (rep.get("agents") or {}).items():
        kind = spec.split(":", 1)[0]
        spec_kind[spec] = kind
        conf = s.get("conformance") or {}
        by_kind[kind] = {m: conf.get(m) for m in METRICS} | {
            "pass_k": s.get("pass_k"), "conversations": s.get("conversations"), "errors": s.get("errors"),
            "input_tokens": (s.get("input_tokens") or {}).get("mean"),
            "output_tokens": (s.get("output_tokens") or {}).get("mean"),
            "cost_usd": (s.get("cost_usd") or {}).get("mean"),
            "api_equivalent_usd": (s.get("api_equivalent_usd") or {}).get("mean"),
            "wall_s": (s.get("wall_s") or {}).get("mean")}
    tests = []
    for c in rep.get("comparisons") or []:
        ka, kb = spec_kind.get(c.get("a"), c.get("a")), spec_kind.get(c.get("b"), c.get("b"))
        for m in METRICS:
            t = (c.get("objective") or {}).get(m)
            if t:
                tests.append({"a": ka, "b": kb, "metric": m, "mean_diff": t.get("mean_diff"), "p": t.get("p_value"),
                              "p_holm": t.get("p_holm"), "n": t.get("n_a")})
    return {"agents": by_kind, "tests": tests}


# ------------------------------------------------------------------------------------------------
# output


def _run_info(a: argparse.Namespace, engine: str) -> dict[str, Any]:
    return {"date": dt.date.today().isoformat(), "machine": _machine(), "engine": engine,
            "command": "python -m bench.results " + " ".join(sys.argv[1:]), "scenarios": a.scenarios,
            "repeats": a.repeats, "concurrency": a.concurrency}


def _kept_rows(out: Path, flows: list[str]) -> list[dict[str, Any]]:
    """`--add`: the rows of other flows from the summary already in OUT, each stamped with the run it came from."""
    path = out / "summary.json"
    if not path.is_file():
        return []
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SystemExit(f"{path} is not valid JSON ({e.msg}, line {e.lineno}); "
                         "fix or delete it, or drop --add") from None
    run = {k: old.get(k) for k in ("date", "machine", "engine", "command", "scenarios", "repeats", "concurrency")}
    wanted = {f.strip() for f in flows}
    return [{"run": run} | r for r in old.get("flows", []) if r.get("flow") not in wanted]


def _runs(summary: dict[str, Any]) -> list[tuple[dict[str, Any], list[str]]]:
    """The runs the summary's rows came from, in order, each with its flows."""
    runs: list[tuple[dict[str, Any], list[str]]] = []
    for row in summary["flows"]:
        run = row.get("run") or {k: summary.get(k) for k in ("date", "machine", "engine", "command", "scenarios",
                                                              "repeats")}
        for known, flows in runs:
            if (known["command"], known["date"], known["machine"]) == (run["command"], run["date"], run["machine"]):
                flows.append(row["flow"])
                break
        else:
            runs.append((run, [row["flow"]]))
    return runs


def _write(out: Path, rows: list[dict[str, Any]], a: argparse.Namespace, engine: str, wall: float) -> dict[str, Any]:
    summary = {"date": dt.date.today().isoformat(), "machine": _machine(), "engine": engine,
               "command": "python -m bench.results " + " ".join(sys.argv[1:]), "scenarios": a.scenarios,
               "repeats": a.repeats, "concurrency": a.concurrency, "wall_s": round(wall, 1), "flows": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "index.html").write_text(_html(summary))
    return summary


def table_lines(summary: dict[str, Any]) -> list[str]:
    head = ("| flow | agent | valid-edge share [95% CI] | terminal success | edit distance (norm.) | pass^k | "
            "tokens in/out per conv. | p (Holm) vs compiled: edges / success |")
    lines = [head, "|" + "---|" * 8]
    for row in summary["flows"]:
        tests = {(t["b"] if t["a"] == "compiled" else t["a"], t["metric"]): t for t in row["tests"]
                 if "compiled" in (t["a"], t["b"])}
        for kind in KINDS:
            s = row["agents"].get(kind)
            if not s:
                continue
            pk = s.get("pass_k") or {}
            pk_s = " ".join(f"{k}:{_f(v)}" for k, v in pk.items()) or "-"
            ps = "-" if kind == "compiled" else " / ".join(
                _p(tests.get((kind, m))) for m in ("valid_edge_share", "success"))
            lines.append(f"| {row['flow']} | {kind} | {_ci(s.get('valid_edge_share'))} | {_ci(s.get('success'))} | "
                         f"{_ci(s.get('edit_distance_norm'))} | {pk_s} | {_f(s.get('input_tokens'), 0)}/"
                         f"{_f(s.get('output_tokens'), 0)} | {ps} |")
    stages = "; ".join(f"{r['flow']}: " + ", ".join(f"{k} {v:.0f}s" for k, v in r["stages_s"].items())
                       for r in summary["flows"])
    if len(_runs(summary)) == 1:
        total = f"Total {summary['wall_s'] / 60:.1f} min."
    else:  # rows from several runs: their stages, summed
        total = f"Stages total {sum(sum(r['stages_s'].values()) for r in summary['flows']) / 60:.1f} min."
    return lines + ["", f"Stage wall times: {stages}. {total}"]


def write_readme_table(readme: Path, summary: dict[str, Any]) -> None:
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    def said(run: dict[str, Any]) -> str:
        return (f"`{run['command'].strip()}` on {run['date']}, {run['machine']} (local agents on {run['engine']}, "
                f"{run['scenarios']} scenarios x {run['repeats']} repeats per agent")

    runs = _runs(summary)
    if len(runs) == 1:
        intro = [f"Results of {said(runs[0][0])}, scripted simulator on held-out examples):"]
    else:
        intro = ["Results, scripted simulator on held-out examples, from these runs:", "",
                 *(f"- {', '.join(flows)}: {said(run)})" for run, flows in runs)]
    block = [start, *intro, "", *table_lines(summary), end]
    text = readme.read_text()
    if start in text and end in text:
        text = text[:text.index(start)] + "\n".join(block) + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n## Results\n\n" + "\n".join(block) + "\n"
    readme.write_text(text)


def _html(summary: dict[str, Any]) -> str:
    rows = "".join(f"<tr>{''.join(f'<td>{html.escape(c.strip())}</td>' for c in line.strip('|').split('|'))}</tr>"
                   for line in table_lines(summary)[2:] if line.startswith("|"))
    links = "".join(f'<li><a href="{r["flow"]}/report.html">{r["flow"]}</a></li>' for r in summary["flows"])
    return (f"<!doctype html><meta charset=utf-8><title>subterra results</title><h1>subterra results "
            f"{summary['date']}</h1><p>{html.escape(summary['machine'])}; engine {summary['engine']}</p>"
            f"<table border=1 cellpadding=4>{rows}</table><ul>{links}</ul>")


def _ci(s: Any) -> str:
    if not isinstance(s, dict) or s.get("mean") is None:
        return "-"
    lo, hi = s.get("ci_low"), s.get("ci_high")
    return f"{s['mean']:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if lo is not None and hi is not None else "")


def _f(v: Any, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _p(t: dict[str, Any] | None) -> str:
    if not t:
        return "-"
    p = t.get("p_holm") if t.get("p_holm") is not None else t.get("p")
    return "-" if p is None else (f"{p:.1e}" if p < 0.001 else f"{p:.3f}")


def _machine() -> str:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {len(os.sched_getaffinity(0))} cores, {mem:.0f} GiB, {gpu}"


def _engine(choice: str) -> str:
    if choice != "auto":
        return choice
    try:
        from engine.serve.vllm import find_vllm_python

        find_vllm_python()
        return "vllm"
    except Exception:  # noqa: BLE001 - no vLLM here: the transformers path
        return "transformers"


if __name__ == "__main__":
    sys.exit(main())
