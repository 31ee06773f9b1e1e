"""Many ranks: DeepSpeed ZeRO-3 around the same training loop (`engine.train.loop.fit`).

`launch(cfg)` writes the run's config and a DeepSpeed config next to the output and starts the
ranks: `deepspeed` on GPU machines (with `--hostfile` for several nodes), `torchrun` for CPU
ranks (the gloo backend; this is how CI proves the multi-rank path on a laptop). Every rank runs
`python -m engine.train CONFIG.json`, which calls `run_worker`: initialise the process group, let
DeepSpeed shard parameters, gradients and optimizer state, then the ordinary `setup → fit → finish`
with a `DeepSpeedStepper` in place of the plain one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from engine.errors import TrainingError
from engine.provenance import REPO_ROOT
from engine.train.checkpoint import (
    TrainState,
    fresh_dir,
    fsync_tree,
    rng_state,
    set_rng_state,
    swap_in,
    write_state,
)
from engine.train.config import TrainConfig
from engine.train.model import load_model
from engine.train.stepper import lr_lambda


def deepspeed_config(cfg: TrainConfig, world_size: int = 1) -> dict[str, Any]:
    """The ZeRO-3 config implied by the training settings (DeepSpeed does clipping and precision)."""
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and torch.cuda.is_available()
                                       and torch.cuda.is_bf16_supported())
    return {
        "train_micro_batch_size_per_gpu": 1,  # one packed row per micro-batch (cfg.batch_size conversations)
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.grad_accum * world_size,
        "gradient_clipping": cfg.max_grad_norm,
        "bf16": {"enabled": bf16},
        "zero_optimization": {
            "stage": 3,
            "overlap_comm": torch.cuda.is_available(),
            "contiguous_gradients": True,
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def launch_command(config_path: Path, cfg: TrainConfig, nprocs: int, hostfile: str | None = None,
                   master_port: int = 29511) -> list[str]:
    """The exact command that starts every rank (what a launch bundle prints, too)."""
    worker = ["-m", "engine.train", str(config_path)]
    if cfg.gpus and not hostfile and shutil.which("deepspeed") is None:
        raise TrainingError("the `deepspeed` launcher is not on PATH; `pip install deepspeed` in this environment")
    if cfg.gpus or hostfile:
        cmd = ["deepspeed", f"--master_port={master_port}"]
        if hostfile:
            cmd += [f"--hostfile={hostfile}"]
        else:
            cmd += [f"--num_gpus={cfg.gpus}"]
        return cmd + ["--module", "engine.train", str(config_path)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nprocs}",
            f"--master_port={master_port}", *worker]


def launch(cfg: TrainConfig, nprocs: int = 2, hostfile: str | None = None, env: dict[str, str] | None = None,
           master_port: int = 29511) -> Path:
    """Start the ranks and wait; returns the output dir. Resumes from `<out>/.train/last` when present."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "train_config.json"
    config_path.write_text(cfg.model_dump_json(indent=2))
    cmd = launch_command(config_path, cfg, nprocs, hostfile, master_port)
    pythonpath = str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    full_env = {**os.environ, **(env or {}), "PYTHONPATH": pythonpath}
    proc = subprocess.run(cmd, env=full_env)
    if proc.returncode != 0:
        raise TrainingError(f"the distributed run exited with code {proc.returncode} (command: {' '.join(cmd)}); "
                            f"fix what its log says and re-run with --resume to continue from the last checkpoint")
    return out


def init_distributed(cuda: bool) -> None:
    """Join the process group: NCCL on GPUs, gloo on CPU ranks.

    On CPU ranks DeepSpeed would first JIT-compile its shared-memory all-reduce op (`deepspeed_shm_comm`,
    one to two minutes of C++ per interpreter, before the first step); gloo's all-reduce serves a
    small model as well, so the op is marked unavailable unless SUBTERRA_DEEPSPEED_SHM=1 asks for it."""
    import deepspeed
    import deepspeed.ops

    if not cuda and os.environ.get("SUBTERRA_DEEPSPEED_SHM") != "1":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")


def run_worker(cfg: TrainConfig) -> Path:
    """One rank: join the group, train under DeepSpeed, rank 0 writes the model dir."""
    from engine.train import loop

    init_distributed(torch.cuda.is_available())
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    run = loop.setup(cfg, stepper_factory=DeepSpeedStepper)
    run.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    loop.fit(run)
    out = loop.finish(run)
    torch.distributed.barrier()
    return out


class DeepSpeedStepper:
    """The `engine.train.stepper.Stepper` contract on a DeepSpeed engine (ZeRO-3 sharded)."""

    def __init__(self, base_dir: str, cfg: TrainConfig, total_steps: int):
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        world = torch.distributed.get_world_size()
        ds_config = deepspeed_config(cfg, world)
        self._hf_ds = HfDeepSpeedConfig(ds_config)  # kept alive: from_pretrained then loads straight into shards
        dtype = torch.bfloat16 if ds_config["bf16"]["enabled"] else torch.float32
        model = load_model(base_dir, cfg, dtype)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
        schedule = lr_lambda(cfg, total_steps)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model, optimizer=optimizer, config=ds_config,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, schedule),
        )
        self.module = self.engine
        self.cfg = cfg

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        # our loss is already divided by the step's token count, so DeepSpeed must not divide by GAS again
        self.engine.set_gradient_accumulation_boundary(last)
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> float:
        lr = float(self.scheduler.get_last_lr()[0])
        self.engine.step()
        return lr

    def save(self, path: Path, state: TrainState) -> None:
        # every rank writes its shards under a tag of their own (never over the last good ones: a crash
        # mid-save would leave torn shards beside a valid state); `latest` names the new tag once all are
        # written; our trainer state rides in DeepSpeed's client state, so it never disagrees with them
        tag = f"step{state.step}"
        self.engine.save_checkpoint(str(path), tag=tag, client_state={"rng": rng_state(), "trainer": state.__dict__})
        torch.distributed.barrier()
        if torch.distributed.get_rank() == 0:
            write_state(path, state)  # marks the dir as resumable
            fsync_tree(path / tag)
            for old in path.iterdir():  # older tags go once `latest` names a complete new one
                if old.is_dir() and old.name != tag and (old.name.startswith("step") or old.name == "ckpt"):
                    shutil.rmtree(old, ignore_errors=True)
        torch.distributed.barrier()

    def load(self, path: Path) -> TrainState:
        _, client = self.engine.load_checkpoint(str(path), tag=None)  # the tag `latest` names
        if not client or "trainer" not in client:
            raise TrainingError(f"{path} holds no subterra trainer state; delete it to start the run afresh")
        set_rng_state(client["rng"])
        return TrainState(**client["trainer"])

    def save_best(self, path: Path, dtype: torch.dtype) -> None:
        state_dict = self.engine._zero3_consolidated_16bit_state_dict()  # collective: every rank joins
        if torch.distributed.get_rank() == 0:
            tmp = fresh_dir(path)
            sd = {k: v.to(dtype) for k, v in state_dict.items()}
            self.engine.module.save_pretrained(tmp, state_dict=sd, safe_serialization=True)
            swap_in(tmp, path)
        torch.distributed.barrier()


def describe(cfg: TrainConfig, nprocs: int) -> str:
    """One line for the CLI: what will run where."""
    where = f"{cfg.gpus} GPU(s) per node" if cfg.gpus else f"{nprocs} CPU rank(s) (gloo)"
    return f"DeepSpeed ZeRO-3 on {where}; config {json.dumps(deepspeed_config(cfg, max(nprocs, 1)))}"
