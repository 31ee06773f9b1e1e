"""`subterra compile`, `subterra models` and `subterra bundle export|import`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from engine.cli.options import config_values, options_from
from engine.cli.ray_compile import compile_on_ray, ray_options
from engine.errors import TrainingError
from engine.flow import name_problem
from engine.train.config import TrainConfig


def register(cli: click.Group) -> None:
    cli.add_command(compile_cmd)
    cli.add_command(models_cmd)
    cli.add_command(bundle_group)


TRAINING_FIELDS = ("epochs", "max_steps", "lr", "batch_size", "grad_accum", "max_len", "eval_every", "patience",
                   "precision", "optimizer", "gradient_checkpointing", "seed")


def _training_options(fn: Any) -> Any:
    """The options `compile` and `bundle export` share: the data, the base, and TrainConfig's own fields."""
    fn = options_from(TrainConfig, *TRAINING_FIELDS, "name",
                      helps={"name": "Registry name of the compiled model (default: the flow's name).",
                             "max_steps": "Stop after N optimizer steps (overrides --epochs)."})(fn)
    fn = options_from(TrainConfig, "base")(fn)
    fn = _preset_option(fn)
    fn = click.option("--data", "data", multiple=True, type=click.Path(dir_okay=False),
                      help="JSONL file(s) of conversations.")(fn)
    fn = click.option("--dataset", default=None, help="Stored dataset to train on (from `subterra generate`).")(fn)
    return click.argument("flow_ref", metavar="FLOW")(fn)


def _config(flow_ref: str, out: Path | None, **o: Any) -> Any:
    from engine.store import Store, data_dir, load_flow

    if not o["dataset"] and not o["data"]:
        raise TrainingError("say what to train on: --dataset NAME (see `subterra datasets list`) or --data FILE.jsonl")
    store = Store()
    flow = load_flow(flow_ref, store)
    name, _, ver = flow_ref.partition("@")
    version = int(ver) if ver.isdigit() else (store.flow_version(flow.name) if store.has_flow(flow.name) else None)
    model_name = o["name"] or flow.name
    problem = name_problem(model_name)  # the name becomes the output folder under the data dir
    if problem:
        raise TrainingError(f"model {problem}; pass --name NAME" if not o["name"] else f"--name: {problem}")
    values = {**_with_preset(o), "name": model_name, "data": [str(Path(p).resolve()) for p in o["data"]],
              "gpus": o.get("gpus") or 0}
    return TrainConfig(out=str(out or data_dir() / "models" / model_name), flow=flow.name, flow_version=version,
                       system_prompt=flow.system_prompt or None, **values)


def _preset_option(fn: Any) -> Any:
    from engine.train.presets import PRESETS

    names = ", ".join(f"{p.name}: {p.summary}" for p in PRESETS.values())
    return click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
                        help=f"Training recipe; explicit flags override it (default: quick on CPU, standard "
                        f"on GPU). {names}.")(fn)


def _with_preset(o: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig values: the preset's, except for every flag given on the command line."""
    from click.core import ParameterSource

    from engine.train.presets import apply_preset

    ctx = click.get_current_context()
    given = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    explicit = {k for k in o if ctx.get_parameter_source(k) in given}
    preset = o.get("preset") or ("standard" if o.get("deepspeed") else None)  # a GPU bundle: not the CPU default
    return apply_preset(preset, config_values(o, TrainConfig), explicit)


@click.command("compile")
@_training_options
@options_from(TrainConfig, "deepspeed", "gpus")
@click.option("--nprocs", type=click.IntRange(min=1), default=2, show_default=True, help="CPU ranks when --gpus is 0.")
@click.option("--hostfile", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Nodes for a multi-node run.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Model directory (default: <data dir>/models/NAME).")
@click.option("--resume", is_flag=True, help="Continue the run whose checkpoint is in --out.")
@ray_options
def compile_cmd(flow_ref: str, out: Path | None, resume: bool, nprocs: int, hostfile: str | None, **o: Any) -> None:
    """Fine-tune a base model (all parameters) on FLOW's conversations; writes a Hugging Face model dir."""
    cfg = _config(flow_ref, out, **o)
    out_dir = Path(cfg.out)
    pending = (out_dir / ".train" / "last" / "trainer_state.json").is_file()
    if pending and not resume:
        raise TrainingError(f"{out_dir} holds an unfinished run; add --resume to continue it, or pick another --out")
    if not pending and (out_dir / "config.json").is_file():
        raise TrainingError(f"{out_dir} already holds a compiled model; pick another --out (or --name) or delete it")
    if o.pop("target") == "ray":  # returns at once: the job follows the Ray job
        compile_on_ray(cfg, o)
        return
    if o["deepspeed"]:
        from engine.train.distributed import describe, launch

        click.echo(describe(cfg, nprocs), err=True)
        launch(cfg, nprocs=nprocs, hostfile=hostfile)
    else:
        from engine.train.loop import compile_model
        from engine.train.presets import make_plan

        for line in make_plan(cfg).lines():
            click.echo(line, err=True)
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
    from engine.train.bundle import export_bundle, launch_line

    cfg = _config(flow_ref, out / "output", gpus=gpus, deepspeed="zero3", **o)
    export_bundle(cfg, out, gpus=gpus, hosts=list(hosts), include_base=not no_base)
    click.echo(f"bundle written to {out}; on the GPU machine run: ./run.sh   ({launch_line(gpus, bool(hosts))})")


@bundle_group.command("import")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--name", default=None, help="Registry name (default: the one in its subterra.json).")
def bundle_import(path: str, name: str | None) -> None:
    """Register a model trained from a bundle (its output/ folder, or the bundle itself)."""
    from engine.train.bundle import import_model

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
