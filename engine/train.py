"""Compile: full-parameter fine-tuning of a small model on a flow's conversations.

Reads top to bottom: `compile_model` → `setup` (data, model, optimizer, resume) → `fit` (the loop)
→ `validate` (held-out loss) → `finish` (the Hugging Face model dir + `subterra.json`).

The same loop runs on a CPU, one GPU, or many GPUs under DeepSpeed ZeRO-3: only the `Stepper`
differs (plain PyTorch here, `engine.distributed.DeepSpeedStepper` there). Batches are packed
without padding (`engine.packing`), and the loss of an optimizer step is the mean over every
assistant token in its micro-batches, whatever their lengths.

Resume: every `save_every` steps the run writes `<out>/.train/last` (weights, optimizer, scheduler,
RNG and data position) atomically; `--resume` (or `python -m engine.train CONFIG` again) carries on
from there. The best weights by eval loss live in `<out>/.train/best` and become the output.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from engine.errors import SubterraError, TrainingError
from engine.packing import Batch, Example, epoch_order, fit_to_length, pack

ROOT = Path(__file__).resolve().parent.parent
HISTORY_KEEP = 100_000  # per-step records kept in subterra.json (a 20-epoch 8B run has ~5k)


class TrainConfig(BaseModel):
    """Everything a compile run needs; written next to the checkpoints and into `subterra.json`."""

    model_config = ConfigDict(extra="forbid")

    out: str = Field(description="Output model directory (Hugging Face format once finished).")
    base: str = Field("smollm2-135m", description="Base model: `smollm2-135m`, a local HF directory or a hub id.")
    data: list[str] = Field(default_factory=list, description="JSONL files of conversations (`messages` + `meta`).")
    dataset: str | None = Field(None, description="Name of a stored dataset, instead of or besides `data`.")
    flow: str | None = Field(None, description="Flow name, for provenance and the registry.")
    flow_version: int | None = Field(None, description="Flow version the data was generated from.")
    system_prompt: str | None = Field(None, description="Flow's minimal system prompt, added to conversations without one.")
    name: str | None = Field(None, description="Registry name of the compiled model (default: the out dir's name).")
    epochs: int = Field(3, ge=1, description="Passes over the training conversations.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    lr: float = Field(2e-5, gt=0, description="Peak learning rate (cosine decay to 0 after warm-up).")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Fraction of the steps spent warming the lr up linearly.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    batch_size: int = Field(4, ge=1, description="Conversations per micro-batch (packed into one row, no padding).")
    grad_accum: int = Field(4, ge=1, description="Micro-batches per optimizer step (effective batch = batch_size × grad_accum × ranks).")
    max_len: int = Field(2048, ge=16, description="Longest conversation in tokens; longer ones are dropped or split.")
    overlong: Literal["drop", "split"] = Field("drop", description="What to do with conversations over max_len.")
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 autocast where the hardware has it.")
    optimizer: Literal["adamw", "adamw8bit"] = Field("adamw", description="adamw8bit needs a CUDA GPU and bitsandbytes.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    attention: Literal["varlen", "sdpa"] = Field(
        "varlen", description="varlen: attention per packed conversation (no T x T mask); sdpa: block-diagonal mask.")
    seed: int = Field(42, description="Seed for the data order, the eval split and torch.")
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="Held-out share when the data has no eval split.")
    eval_every: int | None = Field(None, ge=1, description="Also evaluate every N steps (always at each epoch end).")
    patience: int | None = Field(3, ge=1, description="Stop after this many evaluations without a better eval loss.")
    save_every: int = Field(50, ge=1, description="Write the resumable checkpoint every N steps.")
    deepspeed: Literal["zero3"] | None = Field(None, description="Train under DeepSpeed ZeRO-3 (launched by engine.distributed).")
    gpus: int = Field(0, ge=0, description="GPUs per node for a distributed launch (0: CPU ranks).")
    device: str | None = Field(None, description="Force a torch device (default: cuda if available, else cpu).")
    job_id: int | None = Field(None, description="Store job that receives progress events (created when missing).")
    keep_state: bool = Field(False, description="Keep `<out>/.train` (optimizer state) after a successful run.")
    add_to_registry: bool = Field(True, description="Add the finished model to the store's registry.")


@dataclass
class TrainState:
    """What a resumed run needs besides weights/optimizer: where it was and what it saw."""

    epoch: int = 0
    step_in_epoch: int = 0  # optimizer steps done inside `epoch`
    step: int = 0
    tokens: int = 0  # every token forwarded (there is no padding)
    target_tokens: int = 0  # assistant tokens trained on
    best_loss: float = math.inf
    best_step: int = -1
    best_epoch: float = -1.0
    bad_evals: int = 0
    wall: float = 0.0  # seconds of training over all sessions
    losses: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    resumed_from: list[int] = field(default_factory=list)


@dataclass
class Run:
    cfg: TrainConfig
    base_dir: str
    tokenizer: Any
    model: Any
    stepper: Any
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


# ------------------------------------------------------------------------------------------------
# entry points


def compile_model(cfg: TrainConfig) -> Path:
    """Train and write the model directory; returns its path. Safe to call again to resume."""
    run = setup(cfg)
    fit(run)
    return finish(run)


def setup(cfg: TrainConfig, stepper_factory: Any = None) -> Run:
    """Render the data, load the model, build the optimizer, and resume when a checkpoint exists."""
    from transformers import AutoTokenizer

    from engine.bundled import resolve_base_model

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    base_dir = resolve_base_model(cfg.base)
    tokenizer = _load(lambda: AutoTokenizer.from_pretrained(base_dir), cfg.base)
    records = load_records(cfg)
    train_ex, eval_ex, stats = prepare_examples(tokenizer, records, cfg)
    rank, world = _rank_world()
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    autocast = _autocast_dtype(cfg, device)
    micro = len(epoch_order(len(train_ex), cfg.batch_size, cfg.seed, 0))
    steps_per_epoch = math.ceil(math.ceil(micro / world) / cfg.grad_accum)
    total = cfg.max_steps or steps_per_epoch * cfg.epochs
    if stepper_factory is None:
        model = _load_model(base_dir, cfg, device, torch.float32)
        stepper = TorchStepper(model, cfg, total)
    else:  # DeepSpeed builds (and shards) the model itself
        stepper = stepper_factory(base_dir, cfg, total)
        model = stepper.module
    state = TrainState()
    job_id = _job(cfg, rank)
    run = Run(cfg, base_dir, tokenizer, model, stepper, train_ex, eval_ex, stats, state, device, autocast,
              steps_per_epoch, total, job_id, rank, world)
    last = Path(cfg.out) / ".train" / "last"
    if (last / "trainer_state.json").is_file():
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
            if end_of_epoch or st.step % cfg.save_every == 0:
                run.stepper.save(last, st)
    if not st.evals or st.evals[-1]["step"] != st.step:
        _evaluate_and_keep(run)
    run.stepper.save(last, st)


def train_step(run: Run, group: list[list[int]]) -> None:
    """One optimizer step over `group` (its micro-batches): the loss is the mean over all its target tokens."""
    st, t0 = run.state, time.monotonic()
    batches = [pack([run.train[i] for i in mb]) for mb in group]
    n_targets = sum(b.n_targets for b in batches)  # normalise by the whole step's tokens, not per micro-batch
    loss_sum = 0.0
    for k, b in enumerate(batches):
        loss = forward_loss(run, b) / max(n_targets, 1)
        run.stepper.backward(loss, last=k == len(batches) - 1)
        loss_sum += float(loss.detach())
    lr = run.stepper.step()
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
            b = pack(mine[i:i + run.cfg.batch_size])
            loss_sum += float(forward_loss(run, b))
            n += b.n_targets
    run.model.train()
    return _all_sum(loss_sum, run) / max(_all_sum(n, run), 1)


def forward_loss(run: Run, b: Batch) -> torch.Tensor:
    """Summed cross-entropy over the batch's target tokens; logits only where there is a target."""
    keep = (b.labels[0] != -100).nonzero().squeeze(-1)  # (N,) positions with a target
    ids, pos, labels = (t.to(run.device) for t in (b.input_ids, b.position_ids, b.labels))
    with torch.autocast(run.device.type, dtype=run.autocast or torch.float32, enabled=run.autocast is not None):
        out = run.model(input_ids=ids, position_ids=pos, use_cache=False, logits_to_keep=keep.to(run.device))
    logits = out.logits[0].float()  # (N, V)
    return torch.nn.functional.cross_entropy(logits, labels[0, keep.to(run.device)], reduction="sum")


def finish(run: Run) -> Path:
    """Move the best weights into `out`, add tokenizer, generation config and `subterra.json`."""
    out, train_dir = Path(run.cfg.out), Path(run.cfg.out) / ".train"
    if run.rank != 0:
        return out
    best = train_dir / "best"
    if not (best / "config.json").is_file():
        raise TrainingError(f"no best checkpoint in {best}; run `subterra compile ... --resume` to finish the run")
    for f in best.iterdir():
        shutil.copy2(f, out / f.name)
    run.tokenizer.save_pretrained(out)
    _generation_config(run.base_dir, run.tokenizer).save_pretrained(out)
    provenance = _provenance(run)
    (out / "subterra.json").write_text(json.dumps(provenance, indent=2))
    if not run.cfg.keep_state:
        shutil.rmtree(train_dir, ignore_errors=True)
    if run.cfg.add_to_registry:
        from engine.registry import register_model

        register_model(name=run.cfg.name or out.name, path=out, provenance=provenance)
    if run.job_id:
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
    from engine.render import render_conversation

    train: list[Example] = []
    held: list[Example] = []
    for i, rec in enumerate(records):
        messages = list(rec["messages"])
        if cfg.system_prompt and messages and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": cfg.system_prompt})
        ex = Example(*render_conversation(tokenizer, messages))
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
        raise TrainingError(f"every conversation is longer than --max-len {cfg.max_len}; raise it or use overlong='split'")
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
# the plain PyTorch stepper (CPU or one GPU); DeepSpeed's is in engine.distributed


class TorchStepper:
    """Optimizer, cosine schedule with warm-up, clipping; saves/loads everything a resume needs."""

    def __init__(self, model: Any, cfg: TrainConfig, total_steps: int):
        self.module, self.cfg = model, cfg
        self.optimizer = make_optimizer(model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg, total_steps))

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        loss.backward()

    def step(self) -> float:
        torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(lr)

    def save(self, path: Path, state: TrainState) -> None:
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "rng": _rng_state()}, tmp / "state.pt")
        _write_state(tmp, state)
        _swap_in(tmp, path)  # a kill -9 mid-save leaves the previous checkpoint intact

    def load(self, path: Path) -> TrainState:
        blob = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
        self.module.load_state_dict(blob["model"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        _set_rng_state(blob["rng"])
        return _read_state(path)

    def save_best(self, path: Path, dtype: torch.dtype) -> None:
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        sd = {k: v.detach().to("cpu", dtype) for k, v in self.module.state_dict().items()}
        self.module.save_pretrained(tmp, state_dict=sd, safe_serialization=True)
        _swap_in(tmp, path)


def make_optimizer(model: Any, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adamw8bit":
        if not torch.cuda.is_available():
            raise TrainingError("--optimizer adamw8bit needs a CUDA GPU; use adamw on this machine")
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise TrainingError("8-bit AdamW needs bitsandbytes: pip install 'subterra[gpu]'") from None
        return bnb.optim.AdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95),
                             fused=torch.cuda.is_available() and next(model.parameters()).is_cuda or None)


def lr_lambda(cfg: TrainConfig, total_steps: int) -> Any:
    """Linear warm-up then cosine decay to zero, as a multiplier of the peak lr."""
    warmup = max(1, round(cfg.warmup_ratio * total_steps)) if cfg.warmup_ratio else 0

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


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
        run.stepper.save_best(Path(run.cfg.out) / ".train" / "best", _save_dtype(run.base_dir))
    else:
        st.bad_evals += 1
        if run.cfg.patience and st.bad_evals >= run.cfg.patience:
            st.stopped_early = True
    _log(run, f"eval at step {st.step}: loss {loss:.4f}" + (" (best)" if better else
         f" (best {st.best_loss:.4f} at step {st.best_step})") + (" — stopping early" if st.stopped_early else ""))


def _progress(run: Run, started: float, step0: int) -> None:
    st = run.state
    done = st.step - step0
    elapsed = time.monotonic() - started
    eta = elapsed / max(done, 1) * (run.total_steps - st.step)
    tps = st.losses[-1]["target_tokens"] / max(st.wall, 1e-9)
    event = {"step": st.step, "total": run.total_steps, "loss": st.losses[-1]["loss"], "lr": st.losses[-1]["lr"],
             "tokens_per_s": round(st.tokens / max(st.wall, 1e-9), 1), "target_tokens_per_s": round(tps, 1),
             "eta_s": round(eta, 1), "epoch": st.losses[-1]["epoch"]}
    if run.rank == 0 and run.job_id:
        events = st.losses[-200:]
        _store().update_job(run.job_id, progress=st.step / run.total_steps, events={"last": event, "losses": events,
                            "evals": st.evals}, message=f"step {st.step}/{run.total_steps} loss {event['loss']:.4f} "
                            f"{event['tokens_per_s']:.0f} tok/s ETA {eta:.0f}s")
    if os.environ.get("SUBTERRA_TRAIN_LOG") and run.rank == 0:
        print(json.dumps(event), flush=True)


def _log(run: Run, message: str) -> None:
    if run.rank == 0:
        print(message, file=sys.stderr, flush=True)


def _job(cfg: TrainConfig, rank: int) -> int | None:
    if rank != 0:
        return cfg.job_id
    if cfg.job_id:
        _store().update_job(cfg.job_id, status="running", pid=os.getpid())
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


def _load(fn: Any, base: str) -> Any:
    try:
        return fn()
    except OSError as e:
        raise TrainingError(f"cannot load base model '{base}' ({str(e).splitlines()[0]}); pass smollm2-135m, "
                            "a local model directory, or a hub id you can download") from None


def _load_model(base_dir: str, cfg: TrainConfig, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    model = _load(lambda: AutoModelForCausalLM.from_pretrained(base_dir, dtype=dtype, **attention_kwargs(cfg)), cfg.base)
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model.to(device)


def attention_kwargs(cfg: TrainConfig) -> dict[str, str]:
    if cfg.attention == "varlen":
        from engine.packing import register_varlen_attention

        return {"attn_implementation": register_varlen_attention()}
    return {}


def _autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast when asked, or on `auto` where the hardware runs bf16 fast (CUDA bf16, CPU AMX/AVX512-BF16)."""
    if cfg.precision == "fp32" or cfg.deepspeed:  # DeepSpeed handles precision itself
        return None
    if cfg.precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if _cpu_has_bf16() else None


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def _save_dtype(base_dir: str) -> torch.dtype:
    """Save in the base checkpoint's dtype (bf16 for most), so the output is as small as the base."""
    try:
        cfg = json.loads((Path(base_dir) / "config.json").read_text())
        name = cfg.get("torch_dtype") or cfg.get("dtype") or "float32"
    except (OSError, ValueError):
        name = "bfloat16"
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(str(name), torch.float32)


def _generation_config(base_dir: str, tokenizer: Any) -> Any:
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(base_dir)
    except OSError:
        return GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                bos_token_id=tokenizer.bos_token_id)


def _provenance(run: Run) -> dict[str, Any]:
    st = run.state
    return {
        "kind": "subterra-compiled-model", "flow": run.cfg.flow, "flow_version": run.cfg.flow_version,
        "dataset": run.cfg.dataset or [str(Path(p).resolve()) for p in run.cfg.data], "base": run.cfg.base,
        "base_dir": run.base_dir, "config": run.cfg.model_dump(), "seed": run.cfg.seed, "git_revision": git_revision(),
        "data": run.stats, "world_size": run.world, "precision": str(run.autocast or "float32").replace("torch.", ""),
        "steps": st.step, "total_steps": run.total_steps, "epochs_done": round(st.step / max(run.steps_per_epoch, 1), 3),
        "best_step": st.best_step, "best_epoch": st.best_epoch, "best_eval_loss": st.best_loss,
        "stopped_early": st.stopped_early, "tokens_seen": st.tokens, "target_tokens_seen": st.target_tokens,
        "wall_time_s": round(st.wall, 2), "resumed_at_steps": st.resumed_from,
        "train_loss": st.losses[-HISTORY_KEEP:], "eval_loss": st.evals,
    }


def git_revision() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if rev.returncode == 0 else None


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


def _rng_state() -> dict[str, Any]:
    s = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def _set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def _write_state(path: Path, state: TrainState) -> None:
    (path / "trainer_state.json").write_text(json.dumps(state.__dict__))


def _read_state(path: Path) -> TrainState:
    return TrainState(**json.loads((path / "trainer_state.json").read_text()))


def _swap_in(tmp: Path, path: Path) -> None:
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m engine.train CONFIG.json`: what the CLI, the launchers and launch bundles run."""
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 1:
        print("usage: python -m engine.train CONFIG.json", file=sys.stderr)
        return 2
    cfg = TrainConfig.model_validate_json(Path(args[0]).read_text())
    try:
        if cfg.deepspeed:
            from engine.distributed import run_worker

            run_worker(cfg)
        else:
            print(compile_model(cfg))
    except SubterraError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
