"""The cluster side of a Ray compile: `python -m engine.train.ray_worker ray_job.json` (the Ray job's entry point).

The driver builds a Ray Train `TorchTrainer` (`ScalingConfig(num_workers, use_gpu, resources_per_worker)`,
`RunConfig(name=<submission id>, storage_path=<storage>)`) whose workers each run the ordinary
`engine.train.loop` (setup → fit → finish) with the `DeepSpeedStepper`: ZeRO-3 with the project's own
DeepSpeed config, on the process group Ray Train has already set up (NCCL on GPUs, gloo on CPUs).

Why DeepSpeed and not the plain `TorchStepper` with gradient averaging: it is the one path a GPU
cluster needs (the model sharded over every worker, so an 8B model fits), the ranks already agree
on data, evals, checkpoints and the gathered best weights, and it runs with gloo on CPU workers, so
CI on two CPU workers exercises the very code an 8-GPU job runs. The plain stepper has no
all-reduce; giving it one would be a second distributed implementation to keep in step.

Rank 0 writes the Hugging Face folder + `subterra.json` (`loop.finish`) and hands it to
`ray.train.report(checkpoint=..., checkpoint_dir_name="model")`, which Ray Train persists to
`<storage>/<submission id>/model`; the client copies it from there. While training, rank 0 prints
the loop's progress (the job row it writes in a node-local scratch store) as `SUBTERRA_PROGRESS`
lines, which reach the Ray job's log and so the client.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from engine.errors import SubterraError
from engine.provenance import REPO_ROOT
from engine.train.ray_target import MARK_ERROR, MARK_PROGRESS, RayJob


def drive(spec_path: str) -> int:
    """The Ray job's driver: run the trainer; exit 0 once the model is on the storage."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    spec = RayJob.model_validate_json(Path(spec_path).read_text())
    ray.init()  # the cluster this job was submitted to
    resources = {"CPU": spec.cpus_per_worker, **({"GPU": spec.gpus_per_worker} if spec.gpus_per_worker else {})}
    trainer = TorchTrainer(
        train_worker, train_loop_config={"spec": spec.model_dump(mode="json")},
        scaling_config=ScalingConfig(num_workers=spec.workers, use_gpu=spec.gpus_per_worker > 0,
                                     resources_per_worker=resources),
        run_config=RunConfig(name=spec.run_name, storage_path=spec.storage),
    )
    print(f"{time.strftime('%H:%M:%S')} training on {spec.workers} Ray Train worker(s), {resources} each; "
          "DeepSpeed ZeRO-3", flush=True)
    try:
        result = trainer.fit()
    except Exception as e:  # noqa: BLE001 - the workers already printed their own error line
        print(MARK_ERROR + (_last_line(str(e)) or type(e).__name__), flush=True)
        return 1
    if result.checkpoint is None:
        print(MARK_ERROR + "training ended without a model checkpoint", flush=True)
        return 1
    print(f"{time.strftime('%H:%M:%S')} model stored at {result.checkpoint.path}", flush=True)
    return 0


def train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker = one DeepSpeed rank running the ordinary training loop."""
    # were DeepSpeed's CPU comm op asked for (SUBTERRA_DEEPSPEED_SHM=1), its JIT build goes into a dir of
    # this interpreter's own: a runtime env's virtualenv is a new interpreter, and sharing would rebuild
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions" / "subterra-ray"
                                                      / hashlib.sha1(sys.prefix.encode()).hexdigest()[:10]))
    import ray.train
    import torch
    import torch.distributed as dist

    from engine.train import loop
    from engine.train.distributed import DeepSpeedStepper, init_distributed

    spec = RayJob(**config["spec"])
    ctx = ray.train.get_context()
    rank, local_rank = ctx.get_world_rank(), ctx.get_local_rank()
    node_dir = Path(tempfile.gettempdir()) / "subterra-ray" / spec.run_name  # shared by this node's ranks
    # the loop's own job row (its progress events) lives in a scratch store on this node
    os.environ["SUBTERRA_HOME"] = str(node_dir / "home")
    cuda = torch.cuda.is_available() and spec.gpus_per_worker > 0
    echo = None
    try:
        cfg = spec.train.model_copy(update={"out": str(node_dir / spec.train.out),
                                            "data": [str(REPO_ROOT / d) for d in spec.train.data],
                                            "base": _base_dir(spec, node_dir, local_rank)})
        init_distributed(cuda)  # joins Ray Train's process group
        run = loop.setup(cfg, stepper_factory=DeepSpeedStepper)
        run.device = ray.train.torch.get_device() if cuda else torch.device("cpu")
        if rank == 0:
            print(f"{time.strftime('%H:%M:%S')} rank 0 of {run.world} ready: {len(run.train)} training and "
                  f"{len(run.eval)} held-out conversations, {run.total_steps} steps", flush=True)
        if rank == 0 and run.job_id:
            echo = ProgressEcho(node_dir / "home" / "subterra.db", run.job_id, run.state)
            echo.start()
        loop.fit(run)
        out = loop.finish(run)
        dist.barrier()
        if rank == 0:
            print(f"{time.strftime('%H:%M:%S')} trained {run.state.step} steps; handing the model to Ray Train",
                  flush=True)
    except SubterraError as e:
        print(MARK_ERROR + str(e), flush=True)
        raise
    finally:
        if echo:
            echo.close()
    metrics = {"step": run.state.step, "best_eval_loss": float(run.state.best_loss), "world_size": run.world}
    if rank == 0:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(out)),
                         checkpoint_dir_name="model")
    else:
        ray.train.report(metrics)
    if local_rank == 0:
        shutil.rmtree(node_dir, ignore_errors=True)


class ProgressEcho(threading.Thread):
    """Prints the loop's progress (its job row in the scratch store) as `SUBTERRA_PROGRESS {json}` lines.

    Each line carries the latest event, every eval so far and only the per-step losses not sent yet,
    so a long run's log stays small; the client rebuilds the same events a local compile writes.
    """

    def __init__(self, db: Path, job_id: int, state: Any, every_s: float = 1.0):
        super().__init__(name="subterra-progress", daemon=True)
        self.db, self.job_id, self.state, self.every_s = db, job_id, state, every_s
        self.stop = threading.Event()
        self.sent_step = 0
        self.seen: tuple[Any, int] | None = None

    def run(self) -> None:
        from engine.store import Store

        store = Store(self.db, seed=False)  # its own connection
        while not self.stop.wait(self.every_s):
            self.emit(store)
        self.emit(store)

    def close(self) -> None:
        self.stop.set()
        self.join(timeout=10)

    def emit(self, store: Any) -> None:
        try:
            row = store.get_job(self.job_id)
        except Exception:  # noqa: BLE001 - a busy scratch database: the next tick sends it
            return
        evals = list(self.state.evals)  # the run's own list: the row misses the evals after the last step
        if (row.get("updated"), len(evals)) == self.seen or not row.get("events"):
            return
        self.seen = (row.get("updated"), len(evals))
        events = json.loads(row["events"])
        losses = [e for e in events.get("losses", []) if e["step"] > self.sent_step]
        if losses:
            self.sent_step = losses[-1]["step"]
        line = {"progress": row.get("progress"), "message": row.get("message"), "last": events.get("last"),
                "evals": evals, "losses": losses}
        print(MARK_PROGRESS + json.dumps(line), flush=True)


def _base_dir(spec: RayJob, node_dir: Path, local_rank: int) -> str:
    """The base model on this node: shipped in the working dir, copied from the storage, or as given."""
    if spec.base.kind == "shipped":
        return str(REPO_ROOT / spec.train.base)
    if spec.base.kind != "uri":
        return spec.train.base
    import pyarrow.fs
    import torch.distributed as dist

    from engine.train.ray_target import storage_fs

    dest = node_dir / "base"
    if local_rank == 0 and not (dest / "config.json").is_file():  # one copy per node
        fs, path = storage_fs(spec.base.ref)
        pyarrow.fs.copy_files(path, str(dest), source_filesystem=fs,
                              destination_filesystem=pyarrow.fs.LocalFileSystem())
    dist.barrier()
    return str(dest)


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m engine.train.ray_worker ray_job.json", file=sys.stderr)
        return 2
    return drive(args[0])


if __name__ == "__main__":
    sys.exit(main())
