"""Run every benchmark (or the ones named) and print each result as a ratio against its baseline.

Each `bench/bench_<area>.py` exposes `run() -> list[dict]`; a result dict has at least `name`, and
usually `value`, `unit`, `baseline`, `ratio` (value ÷ baseline, measured in the same process) and
`target`. Results are also written to `bench/results.json` (git-ignored) for comparison.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_"))
    wanted = [a if a.startswith("bench_") else f"bench_{a}" for a in argv]
    if wanted:
        names = [n for n in names if n in wanted]
    all_results: list[dict] = []
    failed = 0
    for name in names:
        t0 = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            results = importlib.import_module(f"bench.{name}").run()
        except Exception:  # a broken benchmark must not hide the others
            traceback.print_exc()
            failed += 1
            continue
        for r in results:
            r.setdefault("bench", name)
            all_results.append(r)
            print("   " + _fmt(r), flush=True)
        print(f"   ({time.perf_counter() - t0:.1f} s)", flush=True)
    (here / "results.json").write_text(json.dumps(all_results, indent=2, default=str))
    return 1 if failed else 0


def _fmt(r: dict) -> str:
    parts = [f"{r.get('name')}:"]
    if "value" in r:
        parts.append(f"{_num(r['value'])} {r.get('unit', '')}".rstrip())
    if r.get("baseline") is not None:
        parts.append(f"(baseline {_num(r['baseline'])})")
    if r.get("ratio") is not None:
        parts.append(f"ratio {r['ratio']:.2f}x")
    if r.get("target"):
        parts.append(f"[target {r['target']}]")
    if r.get("note"):
        parts.append(f"- {r['note']}")
    return " ".join(parts)


def _num(v: object) -> str:
    return f"{v:,.3g}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
