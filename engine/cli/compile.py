"""`subterra compile`, `subterra models` and `subterra bundle export|import`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from engine.errors import TrainingError


def register(cli: click.Group) -> None:
    cli.add_command(compile_cmd)
    cli.add_command(models_cmd)
    cli.add_command(bundle_group)


def _training_options(fn: Any) -> Any:
    """The options `compile` and `bundle export` share."""
    options = [
        click.argument("flow_ref", metavar="FLOW"),
        click.option("--dataset", default=None, help="Stored dataset to train on (from `subterra generate`)."),
        click.option("--data", "data", multiple=True, type=click.Path(dir_okay=False), help="JSONL file(s) of conversations."),
        click.option("--base", default="smollm2-135m", show_default=True, help="smollm2-135m, a model directory or a hub id."),
        click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True),
        click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after N optimizer steps."),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-5, show_default=True),
        click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True,
                     help="Conversations per micro-batch (packed, no padding)."),
        click.option("--grad-accum", type=click.IntRange(min=1), default=4, show_default=True),
        click.option("--max-len", type=click.IntRange(min=16), default=2048, show_default=True),
        click.option("--eval-every", type=click.IntRange(min=1), default=None, help="Also evaluate every N steps."),
        click.option("--patience", type=click.IntRange(min=0), default=3, show_default=True,
                     help="Early stop after N evals without improvement (0: never)."),
        click.option("--precision", type=click.Choice(("auto", "bf16", "fp32")), default="auto", show_default=True),
        click.option("--optimizer", type=click.Choice(("adamw", "adamw8bit")), default="adamw", show_default=True),
        click.option("--gradient-checkpointing", is_flag=True),
        click.option("--seed", type=int, default=42, show_default=True),
        click.option("--name", default=None, help="Registry name (default: the flow's name)."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def _config(flow_ref: str, out: Path | None, **o: Any) -> Any:
    from engine.store import Store, data_dir, load_flow
    from engine.train import TrainConfig

    if not o["dataset"] and not o["data"]:
        raise TrainingError("say what to train on: --dataset NAME (see `subterra datasets list`) or --data FILE.jsonl")
    store = Store()
    flow = load_flow(flow_ref, store)
    name, _, ver = flow_ref.partition("@")
    version = int(ver) if ver.isdigit() else (store.flow_version(flow.name) if store.has_flow(flow.name) else None)
    model_name = o["name"] or flow.name
    return TrainConfig(
        out=str(out or data_dir() / "models" / model_name), base=o["base"], data=[str(Path(p).resolve()) for p in o["data"]],
        dataset=o["dataset"], flow=flow.name, flow_version=version, system_prompt=flow.system_prompt or None,
        name=model_name, epochs=o["epochs"], max_steps=o["max_steps"], lr=o["lr"], batch_size=o["batch_size"],
        grad_accum=o["grad_accum"], max_len=o["max_len"], eval_every=o["eval_every"], patience=o["patience"] or None,
        precision=o["precision"], optimizer=o["optimizer"], gradient_checkpointing=o["gradient_checkpointing"],
        seed=o["seed"], deepspeed=o.get("deepspeed"), gpus=o.get("gpus") or 0,
    )


@click.command("compile")
@_training_options
@click.option("--deepspeed", type=click.Choice(("zero3",)), default=None, help="Train under DeepSpeed ZeRO-3.")
@click.option("--gpus", type=click.IntRange(min=0), default=0, show_default=True,
              help="GPUs per node for --deepspeed (0: CPU ranks on the gloo backend).")
@click.option("--nprocs", type=click.IntRange(min=1), default=2, show_default=True, help="CPU ranks when --gpus is 0.")
@click.option("--hostfile", type=click.Path(exists=True, dir_okay=False), default=None, help="Nodes for a multi-node run.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Model directory (default: <data dir>/models/NAME).")
@click.option("--resume", is_flag=True, help="Continue the run whose checkpoint is in --out.")
def compile_cmd(flow_ref: str, out: Path | None, resume: bool, nprocs: int, hostfile: str | None, **o: Any) -> None:
    """Fine-tune a base model (all parameters) on FLOW's conversations; writes a Hugging Face model dir."""
    cfg = _config(flow_ref, out, **o)
    out_dir = Path(cfg.out)
    pending = (out_dir / ".train" / "last" / "trainer_state.json").is_file()
    if pending and not resume:
        raise TrainingError(f"{out_dir} holds an unfinished run; add --resume to continue it, or pick another --out")
    if not pending and (out_dir / "config.json").is_file():
        raise TrainingError(f"{out_dir} already holds a compiled model; pick another --out (or --name) or delete it")
    if o["deepspeed"]:
        from engine.distributed import describe, launch

        click.echo(describe(cfg, nprocs), err=True)
        launch(cfg, nprocs=nprocs, hostfile=hostfile)
    else:
        from engine.train import compile_model

        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "train_config.json").write_text(cfg.model_dump_json(indent=2))
        compile_model(cfg)
    _print_summary(out_dir)


@click.command("models")
def models_cmd() -> None:
    """List compiled and imported models."""
    from engine.registry import list_models

    rows = list_models()
    if not rows:
        click.echo("no models yet; `subterra compile FLOW --dataset NAME` makes one")
        return
    for m in rows:
        loss = m.best_eval_loss
        flow = f"{m.flow}@{m.flow_version}" if m.flow else "-"
        steps = m.meta.get("steps", "-")
        click.echo(f"{m.name}\t{flow}\tbase={m.base or '-'}\tsteps={steps}\t"
                   f"eval_loss={'-' if loss is None else f'{loss:.4f}'}\t{m.path}")


@click.group("bundle")
def bundle_group() -> None:
    """Launch bundles for a remote GPU machine, and importing their result."""


@bundle_group.command("export")
@_training_options
@click.option("--gpus", type=click.IntRange(min=1), default=8, show_default=True, help="GPUs per node on the remote.")
@click.option("--host", "hosts", multiple=True, help="Remote node (repeat for multi-node; writes a hostfile).")
@click.option("--no-base", is_flag=True, help="Do not copy a local base model into the bundle.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Bundle folder to write.")
def bundle_export(flow_ref: str, out: Path, gpus: int, hosts: tuple[str, ...], no_base: bool, **o: Any) -> None:
    """Write data, config and the exact launch command for FLOW into a folder."""
    from engine.bundle import export_bundle, launch_line

    cfg = _config(flow_ref, out / "output", gpus=gpus, deepspeed="zero3", **o)
    export_bundle(cfg, out, gpus=gpus, hosts=list(hosts), include_base=not no_base)
    click.echo(f"bundle written to {out}; on the GPU machine run: ./run.sh   ({launch_line(gpus, bool(hosts))})")


@bundle_group.command("import")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--name", default=None, help="Registry name (default: the one in its subterra.json).")
def bundle_import(path: str, name: str | None) -> None:
    """Register a model trained from a bundle (its output/ folder, or the bundle itself)."""
    from engine.bundle import import_model

    entry = import_model(path, name)
    click.echo(f"imported {entry.name} → {entry.path}")


def _print_summary(out: Path) -> None:
    import json

    prov_file = out / "subterra.json"
    if not prov_file.is_file():
        return
    p = json.loads(prov_file.read_text())
    first = p["train_loss"][0]["loss"] if p["train_loss"] else float("nan")
    click.echo(f"compiled {out}: {p['steps']} steps in {p['wall_time_s']:.0f}s, train loss {first:.3f} → "
               f"{p['train_loss'][-1]['loss']:.3f}, best eval loss {p['best_eval_loss']:.4f} at step {p['best_step']}"
               + (" (stopped early)" if p["stopped_early"] else ""))
    for note in p["data"].get("notes", []):
        click.echo(f"note: {note}")
