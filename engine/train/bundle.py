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
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from engine.errors import TrainingError
from engine.flow import name_problem
from engine.provenance import REPO_ROOT, git_revision
from engine.train.config import TrainConfig
from engine.train.loop import load_records

REQUIREMENTS = ("torch transformers>=4.51 accelerate safetensors deepspeed pydantic sqlite-utils platformdirs "
                "pyyaml networkx")


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
    from engine.train.distributed import deepspeed_config

    ds = deepspeed_config(remote, gpus * max(1, len(hosts or [])))
    ds["bf16"] = {"enabled": True}  # GPUs that run ZeRO-3 have bf16; the launcher regenerates it anyway
    (dest / "ds_config.json").write_text(json.dumps(ds, indent=2))
    shutil.copytree(REPO_ROOT / "engine", dest / "src" / "engine",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
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
    """Copy a trained model dir (a bundle's `output/`, or the bundle itself) into the data dir and register it.

    A bundle comes back from another machine, so nothing in it is trusted: links (which would copy
    whatever they point at) and special files are refused, `subterra.json` must be valid provenance,
    the name must follow the name rule (it becomes the folder under the data dir), and the copy is made
    in a temporary folder beside the target, fsynced, then renamed into place: an import that fails
    leaves nothing behind.
    """
    from engine.registry import register_model
    from engine.store import data_dir

    src = Path(path)
    if (src / "output" / "config.json").is_file():
        src = src / "output"
    if not (src / "config.json").is_file() or not any(src.glob("*.safetensors")):
        raise TrainingError(f"{path} holds no trained model (config.json + *.safetensors); "
                            "point at the bundle after run.sh finished, or at its output/ folder")
    files = _plain_files(src)
    prov = read_provenance(src)
    name = name or (prov.get("config") or {}).get("name") or prov.get("flow") or src.resolve().parent.name
    problem = name_problem(str(name))
    if problem:
        raise TrainingError(f"model {problem}; pass --name NAME")
    models = data_dir() / "models"
    target = models / name
    if target.exists():
        raise TrainingError(f"a model named '{name}' is already in {target}; pass --name to import under another name")
    models.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".import-{name}-", dir=models))
    try:
        for rel in files:
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rel, dest, follow_symlinks=False)
            _fsync(dest)
        _fsync(tmp)
        try:
            os.rename(tmp, target)  # atomic; fails if another import took the name meanwhile
        except OSError:
            raise TrainingError(f"a model named '{name}' appeared in {target} meanwhile; pass --name") from None
        _fsync(models)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return register_model(name, target, {**prov, "imported_from": str(Path(path).resolve())}, store=store)


_PROVENANCE_TYPES: dict[str, tuple[type, ...]] = {
    "flow": (str,), "flow_version": (int,), "base": (str,), "dataset": (str, list), "config": (dict,)}


def read_provenance(model_dir: Path) -> dict[str, Any]:
    """A model's `subterra.json` checked to be provenance (an object whose known fields have their types)."""
    f = model_dir / "subterra.json"
    if not f.is_file():
        return {}
    try:
        prov = json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise TrainingError(
            f"{f}: not valid JSON ({e}); it should be the subterra.json `subterra compile` wrote") from None
    bad = [] if isinstance(prov, dict) else ["the file must hold a JSON object"]
    if isinstance(prov, dict):
        for key, types in _PROVENANCE_TYPES.items():
            value = prov.get(key)
            if value is not None and (not isinstance(value, types) or isinstance(value, bool)):
                bad.append(f"'{key}' must be {' or '.join(t.__name__ for t in types)}")
        if isinstance(prov.get("dataset"), list) and not all(isinstance(d, str) for d in prov["dataset"]):
            bad.append("'dataset' must list names")
        cname = (prov.get("config") or {}).get("name") if isinstance(prov.get("config"), dict) else None
        if cname is not None and not isinstance(cname, str):
            bad.append("'config.name' must be a string")
    if bad:
        raise TrainingError(f"{f} is not valid provenance: {'; '.join(bad)}")
    return prov


def _plain_files(src: Path) -> list[Path]:
    """Every file under `src` (relative, `.train/` left out); a link or special file is refused."""
    out: list[Path] = []
    for root, dirs, names in os.walk(src, followlinks=False):
        here = Path(root)
        dirs[:] = [d for d in dirs if not (here == src and d == ".train")]
        for entry in [*dirs, *names]:
            p = here / entry
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                raise TrainingError(f"{p} is a link; a model folder to import must hold only plain files "
                                    "(copy the file itself there)")
            if entry in names and not stat.S_ISREG(st.st_mode):
                raise TrainingError(f"{p} is not a regular file; a model folder to import must hold only plain files")
        out += [(here / n).relative_to(src) for n in names]
    return out


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _bundle_base(base: str, dest: Path) -> str:
    """A local base model travels in the bundle; a hub id is left for the remote to download."""
    from engine.base_model import resolve_base_model

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
