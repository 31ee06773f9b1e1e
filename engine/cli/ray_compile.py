"""`subterra compile FLOW --target ray ...`: the cluster flags (from `RayTarget`'s fields) and the hand-off.

The command returns as soon as the job is started; the job shows in `subterra jobs` with the Ray
job's status, the training progress and its log, and the model lands in the registry when it is done.
"""

from __future__ import annotations

from typing import Any

import click

from engine.cli.options import options_from
from engine.fields import field_spec
from engine.train.config import TrainConfig
from engine.train.ray_target import RayTarget

TARGETS = ("local", "ray")


def ray_options(fn: Any) -> Any:
    """`--target`, `--ray-address` (or RAY_ADDRESS), `--workers`, `--gpus-per-worker`, `--storage`."""
    fn = options_from(RayTarget, "workers", "gpus_per_worker", "storage")(fn)
    fn = click.option("--ray-address", "ray_address", envvar="RAY_ADDRESS", default=None,
                      help=field_spec(RayTarget, "address").help)(fn)
    return click.option("--target", type=click.Choice(TARGETS), default="local", show_default=True,
                        help="Where to train: this machine, or a Ray cluster (Ray Jobs + Ray Train, DeepSpeed "
                             "ZeRO-3 over its workers; needs `pip install 'subterra[ray]'`).")(fn)


def compile_on_ray(cfg: TrainConfig, o: dict[str, Any]) -> int:
    """Start the Ray compile job; prints where it runs and how to follow it. Returns the job id."""
    from engine.store import Store
    from engine.train.ray_target import submit_ray_compile

    target = RayTarget(address=o.get("ray_address"), workers=o["workers"], gpus_per_worker=o["gpus_per_worker"],
                       storage=o.get("storage"))
    job_id = submit_ray_compile(cfg, target)
    row = Store(seed=False).get_job(job_id)
    opts = _options(row)
    click.echo(f"job {job_id}: compiling '{cfg.name}' on the Ray cluster at {opts.address} ({opts.workers} "
               f"worker(s), Ray job {opts.submission_id}); the model comes back through {opts.storage}")
    click.echo(f"follow it with `subterra jobs show {job_id}`, stop it with `subterra jobs cancel {job_id}`")
    return job_id


def _options(row: dict[str, Any]) -> RayTarget:
    import json

    return RayTarget(**json.loads(row["config"])["options"])
