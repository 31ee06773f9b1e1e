"""Compile: full-parameter fine-tuning of a small model on a flow's conversations.

Reads top to bottom: `compile_model` → `setup` (data, model, optimizer, resume) → `fit` (the loop)
→ `validate` (held-out loss) → `finish` (the Hugging Face model dir + `subterra.json`).

The same loop runs on a CPU, one GPU, or many GPUs under DeepSpeed ZeRO-3: only the `Stepper`
differs (plain PyTorch here, `engine.train.distributed.DeepSpeedStepper` there). Batches are packed
without padding (`engine.train.packing`), and the loss of an optimizer step is the mean over every
assistant token in its micro-batches, whatever their lengths.

Resume: every `save_every` steps the run writes `<out>/.train/last` (weights, optimizer, scheduler,
RNG and data position) atomically; `--resume` (or `python -m engine.train CONFIG` again) carries on
from there. The best weights by eval loss live in `<out>/.train/best` and become the output.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import os
import random
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.errors import TrainingError
from engine.provenance import git_revision
from engine.train.checkpoint import TrainState, check_plan, is_resumable, plan_of, read_state, swap_in
from engine.train.config import TrainConfig
from engine.train.model import generation_config, load_model, load_tokenizer, save_dtype
from engine.train.packing import Batch, Example, epoch_order, fit_to_length, pack
from engine.train.stepper import Stepper, TorchStepper

HISTORY_KEEP = 100_000  # per-step records kept in subterra.json (a 20-epoch 8B run has ~5k)


@dataclass
class Run:
    cfg: TrainConfig
    base_dir: str
    tokenizer: Any
    model: Any
    stepper: Stepper
    train: list[Example]
    eval: list[Example]
    stats: dict[str, Any]
    state: TrainState
    device: torch.device
    autocast: torch.dtype | None
    steps_per_epoch: int
    total_steps: int
    job_id: int | None
    rank: int = 0
    world: int = 1
    last_event: dict[str, Any] | None = None  # the latest progress event, republished with each eval


# ------------------------------------------------------------------------------------------------
# entry points


STOP = threading.Event()
"""Set (by the job runner's SIGTERM handler, `engine.jobs`) to end the run after the current step,
with a resumable checkpoint."""


def compile_model(cfg: TrainConfig) -> Path:
    """Train and write the model directory; returns its path. Safe to call again to resume."""
    run = setup(cfg)
    try:
        fit(run)
        return finish(run)
    except BaseException as e:  # a compile that raises must not leave its job "running"
        if run.job_id and run.rank == 0 and not _runner_owned(run.job_id):
            _store().update_job(run.job_id, status="cancelled" if STOP.is_set() else "failed",
                                message=str(e) if isinstance(e, TrainingError) else f"{type(e).__name__}: {e}")
        raise


def setup(cfg: TrainConfig, stepper_factory: Any = None) -> Run:
    """Render the data, load the model, build the optimizer, and resume when a checkpoint exists."""
    from engine.base_model import resolve_base_model

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    set_threads(cfg)
    base_dir = resolve_base_model(cfg.base)
    tokenizer = load_tokenizer(base_dir, cfg)
    records = load_records(cfg)
    train_ex, eval_ex, stats = prepare_examples(tokenizer, records, cfg)
    rank, world = _rank_world()
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    autocast = _autocast_dtype(cfg, device)
    cfg = cfg.model_copy(update={"optimizer": resolve_optimizer(cfg, autocast)})  # what ran goes in the provenance
    micro = len(epoch_order(len(train_ex), cfg.batch_size, cfg.seed, 0))
    steps_per_epoch = math.ceil(math.ceil(micro / world) / cfg.grad_accum)
    total = cfg.max_steps or steps_per_epoch * cfg.epochs
    if stepper_factory is None:
        weights = torch.bfloat16 if cfg.optimizer == "adamw-bf16" else torch.float32
        model = load_model(base_dir, cfg, dtype=weights).to(device)
        stepper = TorchStepper(model, cfg, total)
    else:  # DeepSpeed builds (and shards) the model itself
        stepper = stepper_factory(base_dir, cfg, total)
        model = stepper.module
    state = TrainState(plan=plan_of(cfg, train_conversations=len(train_ex), ranks=world))
    job_id = _job(cfg, rank)
    run = Run(cfg, base_dir, tokenizer, model, stepper, train_ex, eval_ex, stats, state, device, autocast,
              steps_per_epoch, total, job_id, rank, world)
    last = Path(cfg.out) / ".train" / "last"
    if is_resumable(last):
        check_plan(read_state(last).plan, state.plan, last)  # before loading: a changed plan is refused
        run.state = stepper.load(last)
        run.state.resumed_from.append(run.state.step)
        _log(run, f"resumed from step {run.state.step} (epoch {run.state.epoch}, batch {run.state.step_in_epoch})")
    return run


def fit(run: Run) -> None:
    """The loop: epochs of packed micro-batches, evals, checkpoints; stops at the step budget or early."""
    cfg, st = run.cfg, run.state
    started, step0 = time.monotonic(), st.step
    done = lambda: st.step >= run.total_steps or st.stopped_early  # noqa: E731
    last = Path(cfg.out) / ".train" / "last"
    run.model.train()
    while not done():
        groups = _groups(run, st.epoch)
        for gi in range(st.step_in_epoch, len(groups)):
            train_step(run, groups[gi])
            st.step_in_epoch = gi + 1
            end_of_epoch = gi + 1 == len(groups)
            if end_of_epoch:
                st.epoch, st.step_in_epoch = st.epoch + 1, 0
            _progress(run, started, step0)
            if end_of_epoch or (cfg.eval_every and st.step % cfg.eval_every == 0):
                _evaluate_and_keep(run)
            if done():
                break
            if end_of_epoch or st.step % cfg.save_every == 0 or STOP.is_set():
                run.stepper.save(last, st)
            if STOP.is_set():
                raise TrainingError(f"stopped at step {st.step}/{run.total_steps} on request; resuming continues "
                                    "from this step")
    if not st.evals or st.evals[-1]["step"] != st.step:
        _evaluate_and_keep(run)
    run.stepper.save(last, st)


def train_step(run: Run, group: list[list[int]]) -> None:
    """One optimizer step over `group` (its micro-batches): the loss is the mean over all its target tokens."""
    st, t0 = run.state, time.monotonic()
    batches = [pack(p) for mb in group for p in passes([run.train[i] for i in mb], run.cfg.micro_tokens)]
    n_targets = sum(b.n_targets for b in batches)  # normalise by the whole step's tokens, not per micro-batch
    loss_sum = 0.0
    for k, b in enumerate(batches):
        loss = forward_loss(run, b) / max(n_targets, 1)
        run.stepper.backward(loss, last=k == len(batches) - 1)
        loss_sum += float(loss.detach())
    lr = run.stepper.step()
    if run.device.type == "cpu":
        release_freed_memory()
    st.step += 1
    st.tokens += int(_all_sum(sum(b.n_tokens for b in batches), run))
    st.target_tokens += int(_all_sum(n_targets, run))
    st.wall += time.monotonic() - t0
    epoch = st.epoch + (st.step_in_epoch + 1) / max(run.steps_per_epoch, 1)
    st.losses.append({"step": st.step, "epoch": round(epoch, 4), "loss": round(_all_mean(loss_sum, run), 5),
                      "lr": lr, "target_tokens": st.target_tokens})


def validate(run: Run) -> float:
    """Mean loss per assistant token over the held-out conversations (each rank takes its share)."""
    run.model.eval()
    loss_sum, n = 0.0, 0
    mine = run.eval[run.rank::run.world]
    with torch.no_grad():
        for i in range(0, len(mine), run.cfg.batch_size):
            for p in passes(mine[i:i + run.cfg.batch_size], run.cfg.micro_tokens):
                b = pack(p)
                loss_sum += float(forward_loss(run, b))
                n += b.n_targets
    run.model.train()
    return _all_sum(loss_sum, run) / max(_all_sum(n, run), 1)


def forward_loss(run: Run, b: Batch) -> torch.Tensor:
    """Summed cross-entropy over the batch's target tokens; the head runs only where there is a target,
    fused with the loss in `head_chunk`-row chunks (`engine.train.loss`) unless the model's head forbids it."""
    from engine.train.loss import chunked_loss, head_weight, logits_loss

    ids, pos, labels = (t.to(run.device) for t in (b.input_ids, b.position_ids, b.labels))
    keep = (labels[0] != -100).nonzero().squeeze(-1)  # (N,) positions with a target
    weight = head_weight(run.model) if run.cfg.head_chunk and not run.cfg.deepspeed else None
    if weight is None:
        return logits_loss(run.model, ids, pos, labels, keep, run.autocast)
    return chunked_loss(run.model, ids, pos, labels, keep, run.cfg.head_chunk, run.autocast, weight)


def passes(examples: list[Example], micro_tokens: int | None) -> list[list[Example]]:
    """A micro-batch cut into runs of whole conversations of at most `micro_tokens` tokens (one if None)."""
    if not micro_tokens:
        return [examples]
    out: list[list[Example]] = [[]]
    for ex in examples:
        if out[-1] and sum(map(len, out[-1])) + len(ex) > micro_tokens:
            out.append([])
        out[-1].append(ex)
    return out


def release_freed_memory() -> None:
    """Hand the step's freed activations back to the OS (glibc keeps them in its heap, and the process's
    resident memory then creeps up step by step: measured here 2.40 -> 2.33 GB peak over 4 steps). No-op
    where the C library has no malloc_trim."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _glibc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6") if sys.platform.startswith("linux") else None
    except OSError:
        return None


def set_threads(cfg: TrainConfig) -> int:
    """Use every core this process may run on (torch's default counts physical cores only), unless told."""
    n = cfg.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if not cfg.threads and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()  # the launcher (torchrun, DeepSpeed) already split the cores
    torch.set_num_threads(n)
    return n


def finish(run: Run) -> Path:
    """Move the best weights into `out`, add tokenizer, generation config and `subterra.json`."""
    out, train_dir = Path(run.cfg.out), Path(run.cfg.out) / ".train"
    if run.rank != 0:
        return out
    best = train_dir / "best"
    if not (best / "config.json").is_file():
        raise TrainingError(f"no best checkpoint in {best}; run `subterra compile ... --resume` to finish the run")
    # the model is assembled in a new folder, fsynced, then renamed over `out`: a crash leaves either the
    # unfinished run (resumable) or the complete model, never a folder of some of its files
    final = out.with_name(out.name + ".final")
    shutil.rmtree(final, ignore_errors=True)
    final.mkdir()
    for f in best.iterdir():
        shutil.copy2(f, final / f.name)
    run.tokenizer.save_pretrained(final)
    generation_config(run.base_dir, run.tokenizer).save_pretrained(final)
    provenance = _provenance(run)
    (final / "subterra.json").write_text(json.dumps(provenance, indent=2))
    for entry in out.iterdir():  # what else is there comes along (the run state only when kept)
        if (entry.name != ".train" or run.cfg.keep_state) and not (final / entry.name).exists():
            entry.rename(final / entry.name)
    swap_in(final, out)
    if run.cfg.add_to_registry:
        from engine.registry import register_model

        register_model(name=run.cfg.name or out.name, path=out, provenance=provenance)
    if run.job_id and _runner_owned(run.job_id):  # its worker writes the final status and result, once
        _store().update_job(run.job_id, progress=1.0, message=f"model written to {out}")
    elif run.job_id:
        _store().update_job(run.job_id, status="done", progress=1.0, message=f"model written to {out}",
                            result={"out": str(out), "best_eval_loss": run.state.best_loss, "step": run.state.step})
    return out


# ------------------------------------------------------------------------------------------------
# data


def load_records(cfg: TrainConfig) -> list[dict[str, Any]]:
    """Conversations from JSONL files and/or a stored dataset, as `{"messages", "meta"}` records."""
    records: list[dict[str, Any]] = []
    for path in cfg.data:
        records += _read_jsonl(Path(path))
    if cfg.dataset:
        records += _stored_dataset(cfg.dataset)
    if not records:
        raise TrainingError("no conversations to train on; pass --data FILE.jsonl or --dataset NAME "
                            "(create one with `subterra generate FLOW`)")
    return records


def prepare_examples(tokenizer: Any, records: list[dict[str, Any]],
                     cfg: TrainConfig) -> tuple[list[Example], list[Example], dict[str, Any]]:
    """Render, split train/eval (the data's own split when it has one) and fit to max_len."""
    from engine.train.render import render_conversation

    train: list[Example] = []
    held: list[Example] = []
    for i, rec in enumerate(records):
        messages = list(rec["messages"])
        if cfg.system_prompt and messages and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": cfg.system_prompt})
        try:  # every record is rendered before the first step: a bad one stops the run before it starts
            ex = Example(*render_conversation(tokenizer, messages))
        except TrainingError as e:
            raise TrainingError(f"conversation {i + 1} of the training data (line {i + 1} of a JSONL file): {e}; "
                                "fix or remove it") from None
        split = (rec.get("meta") or {}).get("split")
        if split not in ("train", "eval"):
            split = "eval" if random.Random(cfg.seed * 7919 + i).random() < cfg.eval_fraction else "train"
        (held if split == "eval" else train).append(ex)
    if not held and len(train) >= 2:  # no eval split at all: hold out a seeded share
        k = max(1, round(len(train) * cfg.eval_fraction))
        held, train = train[-k:], train[:-k]
    if not held or not train:
        raise TrainingError(f"need at least 2 conversations (one to train on, one held out); got {len(records)}")
    train, tstats = fit_to_length(train, cfg.max_len, cfg.overlong)
    held, estats = fit_to_length(held, cfg.max_len, cfg.overlong)
    if not train or not held:
        raise TrainingError(
            f"every conversation is longer than --max-len {cfg.max_len}; raise it or use overlong='split'")
    stats = {"train_conversations": len(train), "eval_conversations": len(held), "train_tokens": tstats.tokens,
             "train_target_tokens": tstats.target_tokens, "dropped": tstats.dropped + estats.dropped,
             "split": tstats.split + estats.split, "notes": tstats.notes + estats.notes}
    return train, held, stats


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    from engine.datasets import load_jsonl

    return load_jsonl(path)


def _stored_dataset(name: str) -> list[dict[str, Any]]:
    from engine.datasets import iter_conversations

    return list(iter_conversations(_store(), name))


def _groups(run: Run, epoch: int) -> list[list[list[int]]]:
    """This rank's micro-batches for an epoch, grouped per optimizer step.

    Every rank gets the same number of micro-batches (the list wraps around) so the ranks step together.
    """
    mbs = epoch_order(len(run.train), run.cfg.batch_size, run.cfg.seed, epoch)
    per_rank = math.ceil(len(mbs) / run.world)
    mbs = (mbs * 2)[: per_rank * run.world] if run.world > 1 else mbs
    mine = mbs[run.rank::run.world]
    return [mine[i:i + run.cfg.grad_accum] for i in range(0, len(mine), run.cfg.grad_accum)]


# ------------------------------------------------------------------------------------------------
# helpers


def _evaluate_and_keep(run: Run) -> None:
    st = run.state
    loss = validate(run)
    epoch = round(st.epoch + (st.step_in_epoch / max(run.steps_per_epoch, 1)), 4)
    better = loss < st.best_loss - 1e-6
    st.evals.append({"step": st.step, "epoch": epoch, "eval_loss": round(loss, 5), "best": better})
    if better:
        st.best_loss, st.best_step, st.best_epoch, st.bad_evals = loss, st.step, epoch, 0
        run.stepper.save_best(Path(run.cfg.out) / ".train" / "best", save_dtype(run.base_dir))
    else:
        st.bad_evals += 1
        if run.cfg.patience and st.bad_evals >= run.cfg.patience:
            st.stopped_early = True
    _log(run, f"eval at step {st.step}: loss {loss:.4f}" + (" (best)" if better else
         f" (best {st.best_loss:.4f} at step {st.best_step})") + (" — stopping early" if st.stopped_early else ""))
    _publish(run)  # the eval after a run's last step has no later progress event to ride on


def _progress(run: Run, started: float, step0: int) -> None:
    st = run.state
    done = st.step - step0
    elapsed = time.monotonic() - started
    eta = elapsed / max(done, 1) * (run.total_steps - st.step)
    tps = st.losses[-1]["target_tokens"] / max(st.wall, 1e-9)
    event = {"step": st.step, "total": run.total_steps, "loss": st.losses[-1]["loss"], "lr": st.losses[-1]["lr"],
             "tokens_per_s": round(st.tokens / max(st.wall, 1e-9), 1), "target_tokens_per_s": round(tps, 1),
             "eta_s": round(eta, 1), "epoch": st.losses[-1]["epoch"]}
    run.last_event = event
    _publish(run, message=f"step {st.step}/{run.total_steps} loss {event['loss']:.4f} "
                          f"{event['tokens_per_s']:.0f} tok/s ETA {eta:.0f}s")
    if os.environ.get("SUBTERRA_TRAIN_LOG") and run.rank == 0:
        print(json.dumps(event), flush=True)


def _publish(run: Run, message: str | None = None) -> None:
    """The job's progress: the latest step's event, the loss curve and every eval so far (rank 0 only)."""
    st = run.state
    if run.rank != 0 or not run.job_id or run.last_event is None:
        return
    fields: dict[str, Any] = {"progress": st.step / run.total_steps,
                              "events": {"last": run.last_event, "losses": st.losses[-200:], "evals": st.evals}}
    if message is not None:
        fields["message"] = message
    _store().update_job(run.job_id, **fields)


def _log(run: Run, message: str) -> None:
    if run.rank == 0:
        print(message, file=sys.stderr, flush=True)


def _runner_owned(job_id: int) -> bool:
    """Whether a job-runner worker (engine.jobs.worker) owns this row: it then owns the row's pid and its final
    status and result; the loop only reports progress (a "done" written here first raced the worker's result)."""
    return os.environ.get("SUBTERRA_JOB_ID") == str(job_id)


def _job(cfg: TrainConfig, rank: int) -> int | None:
    if rank != 0:
        return cfg.job_id
    if cfg.job_id:
        # a job-runner worker owns the row's pid (its heartbeat vouches for it), not a rank under it
        own = {} if _runner_owned(cfg.job_id) else {"pid": os.getpid()}
        _store().update_job(cfg.job_id, status="running", **own)
        return cfg.job_id
    return _store().create_job("compile", cfg.model_dump(), name=cfg.name or Path(cfg.out).name)


_STORE: Any = None


def _store() -> Any:
    """One Store per data dir (SUBTERRA_HOME may change between runs in one process, e.g. in tests)."""
    global _STORE
    from engine.store import Store, data_dir

    path = data_dir() / "subterra.db"
    if _STORE is None or _STORE.path != path:
        _STORE = Store(path, seed=False)
    return _STORE


def _autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast when asked, or on `auto` where the hardware runs bf16 fast (CUDA bf16, CPU AMX/AVX512-BF16)."""
    if cfg.precision == "fp32" or cfg.deepspeed:  # DeepSpeed handles precision itself
        return None
    if cfg.precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if _cpu_has_bf16() else None


def resolve_optimizer(cfg: TrainConfig, autocast: torch.dtype | None) -> str:
    """`auto` → adamw-bf16 where the run computes in bf16 anyway (fast bf16 hardware, no DeepSpeed), else adamw."""
    if cfg.optimizer == "adamw-bf16" and cfg.deepspeed:
        raise TrainingError("--optimizer adamw-bf16 is for single-process training; DeepSpeed runs use adamw "
                            "(ZeRO-3 shards the fp32 states instead)")
    if cfg.optimizer != "auto":
        return cfg.optimizer
    return "adamw-bf16" if autocast == torch.bfloat16 and not cfg.deepspeed else "adamw"


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _provenance(run: Run) -> dict[str, Any]:
    st = run.state
    return {
        "kind": "subterra-compiled-model", "flow": run.cfg.flow, "flow_version": run.cfg.flow_version,
        "system_prompt": run.cfg.system_prompt,  # what the model was trained with, and must be served with
        "dataset": run.cfg.dataset or [str(Path(p).resolve()) for p in run.cfg.data], "base": run.cfg.base,
        "base_dir": run.base_dir, "config": run.cfg.model_dump(), "seed": run.cfg.seed, "git_revision": git_revision(),
        "data": run.stats, "world_size": run.world, "precision": str(run.autocast or "float32").replace("torch.", ""),
        "steps": st.step, "total_steps": run.total_steps,
        "epochs_done": round(st.step / max(run.steps_per_epoch, 1), 3),
        "best_step": st.best_step, "best_epoch": st.best_epoch, "best_eval_loss": st.best_loss,
        "stopped_early": st.stopped_early, "tokens_seen": st.tokens, "target_tokens_seen": st.target_tokens,
        "wall_time_s": round(st.wall, 2), "resumed_at_steps": st.resumed_from,
        "train_loss": st.losses[-HISTORY_KEEP:], "eval_loss": st.evals,
    }


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _all_sum(x: float, run: Run) -> float:
    if run.world == 1:
        return x
    import torch.distributed as dist

    t = torch.tensor([float(x)], dtype=torch.float64, device=run.device)
    dist.all_reduce(t)
    return float(t.item()) if isinstance(x, float) else int(t.item())  # type: ignore[return-value]


def _all_mean(x: float, run: Run) -> float:
    return _all_sum(float(x), run) / run.world
