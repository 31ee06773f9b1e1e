"""The `compile` job kind and its targets: where a compile runs.

    start_compile(cfg, target="local")                         # this machine (CPU or one GPU)
    start_compile(cfg, target="deepspeed", options={"nprocs": 2})  # ZeRO-3 over the local GPUs / CPU ranks
    start_compile(cfg, target="bundle", options={"dest": DIR, "gpus": 8})  # a launch bundle for a GPU box

A target is a `CompileTarget` in `TARGETS`: a name, a label for the studio, and the
`"module:function"` the worker calls as `fn(ctx, cfg, options) -> result dict`. A cluster target
(Ray) adds a line to `TARGETS` or calls `register_target(...)` in a module imported before the job
starts; its entry is stored in the job's config, so the worker calls exactly what was chosen.
The function reports through `ctx.report(...)` (or lets `engine.train.loop` write the job's
progress, as the local target does) and watches `ctx.stop` to stop cleanly on cancel.

Two live compiles into one model folder are refused (the job's output is `model:<abs dir>`).
Resuming a job continues from `<out>/.train/last`.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from engine.errors import JobError, TrainingError
from engine.jobs import JobContext, JobRecord, start_job
from engine.store import Store
from engine.train.config import TrainConfig


class CompileTarget(BaseModel):
    """Where a compile runs."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Registry key (`local`, `deepspeed`, `bundle`, `ray`, ...).")
    label: str = Field(description="What the studio shows.")
    entry: str = Field(description="`module:function` called in the worker as fn(ctx, cfg, options).")
    help: str = Field("", description="One sentence on when to use it.")
    trains_here: bool = Field(True, description="False when the job only prepares a run elsewhere (a bundle).")
    available: str | None = Field(None, description="`module:function` returning None when usable here, "
                                                    "else why not (shown greyed out).")


TARGETS: dict[str, CompileTarget] = {
    "local": CompileTarget(name="local", label="This machine", entry="engine.jobs.compile:run_local",
                           help="Train in the worker process, on this machine's GPU or CPU."),
    "deepspeed": CompileTarget(name="deepspeed", label="DeepSpeed ZeRO-3 (local GPUs)",
                               entry="engine.jobs.compile:run_deepspeed", available="engine.jobs.compile:deepspeed_ok",
                               help="Shard the model over every local GPU (CPU ranks when there is none)."),
    "bundle": CompileTarget(name="bundle", label="Launch bundle (remote GPU box)",
                            entry="engine.jobs.compile:run_bundle",
                            trains_here=False,
                            help="Write data, config and the launch command into a folder to copy to a GPU machine."),
    "ray": CompileTarget(name="ray", label="Ray cluster", entry="engine.train.ray_target:run_job",
                         available="engine.train.ray_target:unavailable",
                         help="Submit to a Ray cluster (Ray Jobs + Ray Train, DeepSpeed ZeRO-3 over its workers); "
                              "options: address (default $RAY_ADDRESS), workers, gpus_per_worker, storage. "
                              "The model comes back into the registry. "
                              "engine.train.ray_target.submit_ray_compile checks them first."),
}


def register_target(target: CompileTarget) -> None:
    TARGETS[target.name] = target


def target_status() -> list[tuple[CompileTarget, str | None]]:
    """Every target with None when it can run here, else why it cannot."""
    out = []
    for t in TARGETS.values():
        reason = _call(t.available)() if t.available else None
        out.append((t, reason))
    return out


def start_compile(cfg: TrainConfig, target: str = "local", options: dict[str, Any] | None = None,
                  env: dict[str, str] | None = None, store: Store | None = None) -> JobRecord:
    """Start compiling `cfg` on `target`; refuses an output folder that already holds a model."""
    if target not in TARGETS:
        raise JobError(f"unknown compile target '{target}'; choose one of {', '.join(TARGETS)}")
    t = TARGETS[target]
    options = dict(options or {})
    out = Path(cfg.out).resolve()
    cfg = cfg.model_copy(update={"out": str(out), "job_id": None})
    if t.trains_here:
        pending = (out / ".train" / "last" / "trainer_state.json").is_file()
        if not pending and (out / "config.json").is_file():
            raise TrainingError(
                f"{out} already holds a compiled model; pick another name or output folder, or delete it")
        output = f"model:{out}"
    else:
        if not options.get("dest"):
            raise JobError(f"the {t.label} target needs a folder to write to (options['dest'])")
        options["dest"] = str(Path(options["dest"]).resolve())
        output = f"bundle:{options['dest']}"
    config = {"train": cfg.model_dump(mode="json"), "target": target, "target_entry": t.entry, "options": options}
    return start_job("compile", config, env, flow=cfg.flow, flow_version=cfg.flow_version,
                     name=cfg.name or out.name, output=output, store=store)


def run(ctx: JobContext) -> dict[str, Any]:
    cfg = TrainConfig(**ctx.config["train"]).model_copy(update={"job_id": ctx.job_id})
    entry = ctx.config.get("target_entry") or TARGETS[ctx.config.get("target", "local")].entry
    result: dict[str, Any] = _call(entry)(ctx, cfg, dict(ctx.config.get("options") or {}))
    return result


# ------------------------------------------------------------------------------------------------
# the built-in targets


def run_local(ctx: JobContext, cfg: TrainConfig, options: dict[str, Any]) -> dict[str, Any]:
    """Train in this process; a cancel ends the run after the current step with a checkpoint."""
    from engine.train import loop

    ctx.graceful_stop = True
    loop.STOP = ctx.stop
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(cfg.model_dump_json(indent=2))
    loop.compile_model(cfg)
    return _model_result(cfg)


def run_deepspeed(ctx: JobContext, cfg: TrainConfig, options: dict[str, Any]) -> dict[str, Any]:
    """Launch ZeRO-3 ranks over the local GPUs (CPU ranks when there is none) and wait."""
    import torch

    from engine.train.distributed import launch

    gpus = torch.cuda.device_count()
    cfg = cfg.model_copy(update={"deepspeed": "zero3", "gpus": gpus})
    launch(cfg, nprocs=int(options.get("nprocs") or 2))
    return _model_result(cfg)


def run_bundle(ctx: JobContext, cfg: TrainConfig, options: dict[str, Any]) -> dict[str, Any]:
    """Write a launch bundle; the model comes back with `subterra bundle import DEST/output`."""
    from engine.train.bundle import export_bundle, launch_line

    dest = Path(options["dest"])
    gpus, hosts = int(options.get("gpus") or 8), list(options.get("hosts") or [])
    cfg = cfg.model_copy(update={"out": str(dest / "output"), "deepspeed": "zero3", "gpus": gpus})
    export_bundle(cfg, dest, gpus=gpus, hosts=hosts)
    line = launch_line(gpus, bool(hosts))
    return {"bundle": str(dest), "command": line,
            "_message": f"bundle written to {dest}; on the GPU machine run ./run.sh ({line}), then "
                        f"`subterra bundle import {dest}/output`"}


def deepspeed_ok() -> str | None:
    if importlib.util.find_spec("deepspeed") is None:
        return "DeepSpeed is not installed (`pip install deepspeed`)"
    return None


def _model_result(cfg: TrainConfig) -> dict[str, Any]:
    out = Path(cfg.out)
    prov = json.loads((out / "subterra.json").read_text()) if (out / "subterra.json").is_file() else {}
    name = cfg.name or out.name
    return {"out": str(out), "model": name, "steps": prov.get("steps"), "best_eval_loss": prov.get("best_eval_loss"),
            "wall_time_s": prov.get("wall_time_s"),
            "_message": f"model '{name}' written to {out}" + (f" ({prov['steps']} steps, best eval loss "
                                                            f"{prov['best_eval_loss']:.4f})" if prov else "")}


def _call(entry: str) -> Callable[..., Any]:
    module, _, name = entry.partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
