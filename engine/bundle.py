"""Launch bundles: everything a remote GPU machine needs to compile a model, in one folder.

    bundle/
      data.jsonl          the conversations (train and eval split kept in each record's meta)
      train_config.json   the resolved TrainConfig, paths relative to the bundle
      ds_config.json      the DeepSpeed ZeRO-3 config it implies (for reference; regenerated at launch)
      src/engine/         this checkout's engine package, so the remote needs only `pip install` of the deps
      base/               the base model, when it is a local directory (hub ids are downloaded remotely)
      hostfile            only for multi-node runs
      run.sh              the exact command; writes the model to bundle/output/
      README.txt          what to install and how to bring the model back

`subterra bundle import BUNDLE/output` copies the trained model into the data dir and registers it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from engine.errors import TrainingError
from engine.train import ROOT, TrainConfig, git_revision, load_records

REQUIREMENTS = "torch transformers>=4.51 accelerate safetensors deepspeed pydantic sqlite-utils platformdirs pyyaml networkx"


def export_bundle(cfg: TrainConfig, dest: str | Path, gpus: int = 8, hosts: list[str] | None = None,
                  include_base: bool = True) -> Path:
    """Write a bundle for `gpus` GPUs per node (and `hosts` for several nodes); returns its path."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise TrainingError(f"{dest} exists and is not empty; pick another bundle folder")
    dest.mkdir(parents=True, exist_ok=True)
    records = load_records(cfg)
    with (dest / "data.jsonl").open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    base = _bundle_base(cfg.base, dest) if include_base else cfg.base
    remote = cfg.model_copy(update={
        "out": "output", "data": ["data.jsonl"], "dataset": None, "base": base, "deepspeed": "zero3",
        "gpus": gpus, "job_id": None, "device": None, "precision": "auto" if cfg.precision == "fp32" else cfg.precision,
    })
    (dest / "train_config.json").write_text(remote.model_dump_json(indent=2))
    from engine.distributed import deepspeed_config

    ds = deepspeed_config(remote, gpus * max(1, len(hosts or [])))
    ds["bf16"] = {"enabled": True}  # GPUs that run ZeRO-3 have bf16; the launcher regenerates it anyway
    (dest / "ds_config.json").write_text(json.dumps(ds, indent=2))
    shutil.copytree(ROOT / "engine", dest / "src" / "engine", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if hosts:
        (dest / "hostfile").write_text("".join(f"{h} slots={gpus}\n" for h in hosts))
    command = launch_line(gpus, bool(hosts))
    (dest / "run.sh").write_text(_RUN_SH.format(command=command))
    (dest / "run.sh").chmod(0o755)
    (dest / "README.txt").write_text(_README.format(n=len(records), command=command, req=REQUIREMENTS,
                                                     rev=git_revision() or "unknown", flow=cfg.flow or "-"))
    (dest / "bundle.json").write_text(json.dumps({"kind": "subterra-launch-bundle", "flow": cfg.flow,
                                                  "flow_version": cfg.flow_version, "dataset": cfg.dataset,
                                                  "conversations": len(records), "git_revision": git_revision(),
                                                  "gpus_per_node": gpus, "hosts": hosts or []}, indent=2))
    return dest


def launch_line(gpus: int, multi_node: bool) -> str:
    where = "--hostfile=hostfile" if multi_node else f"--num_gpus={gpus}"
    return f"deepspeed {where} --module engine.train train_config.json"


def import_model(path: str | Path, name: str | None = None, store: Any = None) -> Any:
    """Copy a trained model dir (a bundle's `output/`, or the bundle itself) into the data dir and register it."""
    from engine.registry import register_model
    from engine.store import data_dir

    src = Path(path)
    if (src / "output" / "config.json").is_file():
        src = src / "output"
    if not (src / "config.json").is_file() or not any(src.glob("*.safetensors")):
        raise TrainingError(f"{path} holds no trained model (config.json + *.safetensors); "
                            "point at the bundle after run.sh finished, or at its output/ folder")
    prov = json.loads((src / "subterra.json").read_text()) if (src / "subterra.json").is_file() else {}
    name = name or prov.get("config", {}).get("name") or prov.get("flow") or src.parent.name
    target = data_dir() / "models" / name
    if target.exists():
        raise TrainingError(f"a model named '{name}' is already in {target}; pass --name to import under another name")
    shutil.copytree(src, target, ignore=shutil.ignore_patterns(".train"))
    return register_model(name, target, {**prov, "imported_from": str(Path(path).resolve())}, store=store)


def _bundle_base(base: str, dest: Path) -> str:
    """A local base model travels in the bundle; a hub id is left for the remote to download."""
    from engine.bundled import resolve_base_model

    resolved = Path(resolve_base_model(base))
    if not resolved.is_dir():
        return base
    shutil.copytree(resolved, dest / "base", ignore=shutil.ignore_patterns(".train", "subterra.json"))
    return "base"


_RUN_SH = """#!/usr/bin/env bash
# Compile on this machine's GPUs; the model lands in ./output. Re-run the same command to resume.
set -euo pipefail
cd "$(dirname "$0")"
export PYTHONPATH="$PWD/src${{PYTHONPATH:+:$PYTHONPATH}}"
export SUBTERRA_HOME="${{SUBTERRA_HOME:-$PWD/.subterra}}"
{command}
"""

_README = """subterra launch bundle: flow {flow}, {n} conversations, made at git revision {rev}.

1. On the GPU machine (CUDA, Python >= 3.11):  pip install {req}
   (optionally bitsandbytes, for optimizer "adamw8bit" in train_config.json)
2. ./run.sh          runs:  {command}
   For several nodes, list them in ./hostfile ("host slots=GPUS") and make them reachable by ssh.
   If it stops, run ./run.sh again: it resumes from output/.train/last.
3. Copy output/ back and run:  subterra bundle import output --name NAME
"""
