"""The one training loop of the suite: every method (supervised, MoCo v2, HNCL, ...) is trained by :func:`fit`.

A method (:class:`utils.methods.Method`) is an ``nn.Module`` whose ``forward(x, y, rows, generator)`` returns
``(loss, logs)`` for one batch (it augments the batch itself, once or twice), with an ``after_step(progress)``
hook (momentum encoders) and ``param_groups(weight_decay)`` (what the optimizer updates, and how). :func:`fit`
does the rest:

- SGD with Nesterov momentum or AdamW; linear warm-up then cosine decay, set per step;
- mixed precision: float16 with a gradient scaler on CUDA, bfloat16 on CPUs with AVX512-BF16 or AMX;
- a validation call after each epoch whose ``score`` selects the best epoch (validation split only,
  never test) and drives early stopping;
- optionally an exponential moving average of the weights (``TrainConfig.ema``), which is what validation
  scores and the run keeps;
- per epoch: an atomically written checkpoint ``last.pt`` (model, optimizer, scaler, step, epoch, random
  states, history), ``best.pt`` when the score improves, and a row in ``log.csv``;
- resume: a run whose ``last.pt`` exists continues after its last finished epoch and ends with the same
  weights as an uninterrupted run (the batch order and augmentations of an epoch come from a generator
  seeded by the seed and the epoch);
- several processes under ``torchrun``: each takes its share of every batch, gradients are averaged.

Checkpoints hold only tensors and plain Python values and are loaded with ``weights_only=True``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from utils.core import distributed as dist_utils
from utils.core.budget import TimeBudget
from utils.core.checkpoints import load_checkpoint, resume, save_atomic, save_resume_point, write_log
from utils.core.loader import BatchLoader, FaceTensors, epoch_generator
from utils.core.runtime import show_progress


@dataclass
class TrainConfig:
    """Optimisation settings shared by every method.

    Attributes:
        epochs: passes over the training split.
        batch_size: images per step (per process under torchrun).
        optimizer: ``"sgd"`` (Nesterov momentum) or ``"adamw"``.
        lr: peak learning rate, reached after warm-up.
        momentum: SGD momentum (AdamW's beta1).
        weight_decay: L2 penalty (decoupled for AdamW); not applied to biases and norm layers.
        warmup_epochs: linear warm-up length, in epochs (may be fractional).
        min_lr: learning rate at the end of the cosine, as a share of ``lr``.
        balance: ``"none"``, ``"weights"`` (class-weighted loss) or ``"sampler"`` (class-balanced batches).
        patience: stop after this many epochs without a better validation score (None: never).
        amp: mixed precision where the device supports it.
        seed: seeds the initial weights, batch order and augmentation.
        deterministic: ask PyTorch for deterministic kernels (slower; used by the resume test).
        max_minutes: training-time budget (validation not counted). The run times its first steps and fits
            its schedule to the budget: as many steps as fit (at most ``epochs`` epochs; the last epoch may be
            partial), so warm-up and decay end at the budget on whatever machine it runs; after every epoch,
            and every tenth of the schedule within one, the rest of the schedule is fitted again to the speed
            measured since. Steps count at their cost relative to a full one (:meth:`Method.step_cost`: a
            progressively resized step at 32 of 48 px is 4/9). A fitted schedule shorter than planned keeps its
            warm-up to at most a fifth of its steps (``MAX_WARMUP_SHARE``). Training stops if a slowdown would
            overrun the budget before the next fit (None: no limit, ``epochs`` epochs).
        grad_clip: clip the gradient norm to this value (None: no clipping).
        channels_last: keep convolution weights in channels-last memory order on CPU and CUDA (ResNet-18 on
            48x48 faces trains about 1.25x faster on a CPU with bfloat16: the same computation, other kernels).
        ema: decay per step of an exponential moving average of the weights and buffers (e.g. 0.998; None:
            off). Validation, the best epoch and the weights the run keeps are the average's. It starts at the
            weights after the first step, and the n-th step after that mixes in with decay
            ``min(ema, (1 + n) / (10 + n))``, so early epochs are not dominated by the initial weights.
    """

    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    min_lr: float = 0.0
    balance: str = "none"
    patience: int | None = None
    amp: bool = True
    seed: int = 0
    deterministic: bool = False
    max_minutes: float | None = None
    grad_clip: float | None = None
    channels_last: bool = True
    ema: float | None = None

    def __post_init__(self):
        if self.ema is not None and not 0.0 < self.ema < 1.0:
            raise ValueError(f"ema is a decay per step in (0, 1), not {self.ema!r}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', not {self.optimizer!r}")
        if self.balance not in ("none", "weights", "sampler"):
            raise ValueError(f"balance must be 'none', 'weights' or 'sampler', not {self.balance!r}")


def amp_dtype(device: torch.device, enabled: bool = True) -> torch.dtype | None:
    """The autocast dtype for ``device``: float16 on CUDA, bfloat16 on capable CPUs, else None (float32)."""
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu":
        capable = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return torch.bfloat16 if capable else None
    return None


def learning_rate(step: int, total: int, warmup: int, peak: float, floor: float = 0.0) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to ``peak * floor``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def to_channels_last(module: nn.Module, device: torch.device) -> nn.Module:
    """Put ``module``'s convolution weights in channels-last order where that is faster (CPU, CUDA).

    Only 4-d tensors change; a 1-channel input batch is the same in either order, so batches need no copy.
    """
    if device.type in ("cpu", "cuda"):
        module.to(memory_format=torch.channels_last)
    return module


def make_optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW over parameter groups (a method's ``param_groups``). A group may carry
    ``lr_scale``: its learning rate is ``lr_scale`` times the schedule's.

    Both update all tensors at once (``foreach``), as PyTorch already does on CUDA: on a CPU its default is
    a Python loop over the tensors, 2.6-3x slower for ResNet-18's SGD step (39 against 14 ms on one thread),
    which was a fifth of the training time of a quick-mode run at batch 16."""
    groups = [g for g in groups if g["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True, foreach=True)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999), foreach=True)


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``n / (C * n_c)`` per class (scikit-learn's "balanced"); classes absent from ``labels`` get 0."""
    counts = torch.bincount(labels, minlength=num_classes).float()
    weights = len(labels) / (num_classes * counts.clamp(min=1))
    return torch.where(counts > 0, weights, torch.zeros_like(weights))


# ------------------------------------------------------------------------------------------------ fit


@dataclass
class FitResult:
    """What :func:`fit` did. ``history`` has one dict per epoch (the rows of ``log.csv``)."""

    run_dir: Path | None
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = -math.inf
    epochs_run: int = 0
    train_seconds: float = 0.0
    stop_reason: str = ""
    resumed_from_epoch: int | None = None
    total_steps: int = 0
    steps_per_epoch: int = 0
    seconds_per_step: float | None = None  # of a full-cost step (Method.step_cost), measured to fit the budget
    warmup_steps: int = 0


def fit(
    method: nn.Module,
    train: FaceTensors,
    config: TrainConfig,
    run_dir=None,
    validate: Callable[[nn.Module], dict] | None = None,
    progress: bool = True,
    steps_per_epoch: int | None = None,
) -> FitResult:
    """Train ``method`` on ``train`` (see the module docstring).

    Args:
        method: a :class:`utils.methods.Method`, already on the training device (``train``'s device).
        train: the training split as tensors.
        config: optimisation settings.
        run_dir: where checkpoints and the log go (None: keep nothing, no resume).
        validate: called after each epoch with the method in eval mode; returns a dict of floats whose
            ``score`` (higher is better) selects the best epoch. None: the last epoch is the best.
        progress: show progress bars.
        steps_per_epoch: cap on optimizer steps per epoch (quick runs).

    Returns:
        A :class:`FitResult`. The method's weights are those of the best epoch.
    """
    device = train.x.device
    if config.channels_last:
        to_channels_last(method, device)
    run_dir = Path(run_dir) if run_dir is not None else None
    main = dist_utils.is_main()
    if run_dir is not None and main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    world = dist_utils.world_size()
    loader = BatchLoader(
        train,
        config.batch_size * world,
        shuffle=True,
        balanced=config.balance == "sampler",
        drop_last=len(train) >= config.batch_size * world * 2,
        seed=config.seed,
        shard=(dist_utils.rank(), world),  # each process reads only its share of every batch
    )
    steps = min(len(loader), steps_per_epoch or len(loader))
    warmup = int(round(config.warmup_epochs * steps))
    budget = TimeBudget(config.max_minutes, steps, config.epochs, warmup, method.step_cost)
    optimizer = make_optimizer(method.param_groups(config.weight_decay), config)
    dtype = amp_dtype(device, config.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    ema = weight_average(method, config.ema) if config.ema is not None else None
    kept = ema.module if ema is not None else method  # the weights validated and kept
    model = method
    if dist_utils.is_distributed():
        model = nn.parallel.DistributedDataParallel(
            method, device_ids=[device.index] if device.type == "cuda" else None
        )
    parts = {"model": method, "optimizer": optimizer, "scaler": scaler, "ema": ema}
    result = FitResult(run_dir)
    start_epoch, step = _resume(run_dir, parts, device, result, budget)
    if start_epoch and main and progress:
        print(f"resuming {run_dir.name} after epoch {start_epoch}/{config.epochs}")

    from tqdm.auto import tqdm

    show = show_progress(progress and main)
    since_best = (start_epoch - 1 - result.best_epoch) if result.best_epoch >= 0 else 0
    epochs_bar = tqdm(range(start_epoch, config.epochs), desc=run_dir.name if run_dir else "training", unit="epoch",
                      disable=not show, initial=start_epoch, total=config.epochs)  # fmt: skip
    result.stop_reason = "schedule done"
    method.on_schedule(budget.total_steps)
    for epoch in epochs_bar:
        if step >= budget.total_steps or result.stop_reason != "schedule done":
            break
        tic = time.perf_counter()
        bar = tqdm(loader, total=budget.epoch_steps(step), leave=False, desc=f"epoch {epoch + 1}", disable=not show)
        step, row = _train_epoch(model, method, bar, optimizer, scaler, ema, dtype, budget, config, epoch, step, result,
                                 tic)  # fmt: skip
        epochs_bar.total = math.ceil(budget.total_steps / steps)  # the fitted schedule
        kept.eval()
        scores = validate(kept) if validate is not None else {"score": float(epoch)}
        row.update({f"val_{k}": float(v) for k, v in scores.items()})
        result.history.append(row)
        improved = scores["score"] > result.best_score
        if improved:
            result.best_score, result.best_epoch = float(scores["score"]), epoch
        since_best = 0 if improved else since_best + 1
        if main and run_dir is not None:
            _save_epoch(run_dir, kept if improved else None, parts, result, budget, epoch, step)
        dist_utils.barrier()
        epochs_bar.set_postfix({k: f"{v:.4f}" for k, v in scores.items()})
        if config.patience is not None and since_best >= config.patience:
            result.stop_reason = f"early stop: no better validation score for {config.patience} epochs"
    epochs_bar.close()
    result.epochs_run = len(result.history)
    result.total_steps, result.steps_per_epoch, result.warmup_steps = budget.total_steps, steps, budget.warmup
    result.seconds_per_step = budget.seconds_per_step
    if run_dir is not None and (run_dir / "best.pt").is_file():
        method.load_state_dict(load_checkpoint(run_dir / "best.pt", map_location=device)["model"])
    elif ema is not None:  # no checkpoints: the average of the last epoch
        method.load_state_dict(ema.module.state_dict())
    method.eval()
    return result


def _resume(run_dir: Path | None, parts: dict, device, result: FitResult, budget: TimeBudget) -> tuple[int, int]:
    """Load ``run_dir/last.pt`` into ``parts``, ``result`` and ``budget`` if it is there: ``(first epoch to
    train, optimizer steps taken)``, ``(0, 0)`` for a fresh start."""
    last = run_dir / "last.pt" if run_dir is not None else None
    if last is None or not last.is_file():
        return 0, 0
    state = resume(last, parts, device)
    result.history = list(state["history"])
    result.best_epoch, result.best_score = state["best_epoch"], state["best_score"]
    result.train_seconds, result.resumed_from_epoch = state["train_seconds"], state["epoch"]
    budget.load_state_dict(state)
    return state["epoch"] + 1, state["step"]


def _save_epoch(run_dir: Path, best: nn.Module | None, parts: dict, result: FitResult, budget, epoch: int, step: int):
    """After an epoch: ``best.pt`` when ``best`` (the kept weights) improved, the resume point and the log."""
    if best is not None:
        save_atomic({"model": best.state_dict(), "epoch": epoch, "score": result.best_score}, run_dir / "best.pt")
    progress = {"epoch": epoch, "step": step, "history": result.history, "best_epoch": result.best_epoch,
                "best_score": result.best_score, "train_seconds": result.train_seconds, **budget.state_dict()}  # fmt: skip
    save_resume_point(run_dir / "last.pt", parts, progress)
    write_log(run_dir / "log.csv", result.history)


def _train_epoch(model, method, batches, optimizer, scaler, ema, dtype, budget, config, epoch, step, result, tic):
    """One epoch of optimizer steps (fewer when the schedule ends or the budget is spent); returns the step
    reached and the epoch's log row (means of the batches' logs). Fits the schedule to the budget as it goes."""
    method.train()
    batches.iterable.set_epoch(epoch)
    device = next(method.parameters()).device
    # one generator per epoch and process for the augmentation, independent of the batch order
    augment_gen = epoch_generator(config.seed + 7919 * (dist_utils.rank() + 1), epoch, device)
    sums: dict[str, float] = {}
    done, lr = 0, 0.0  # batches trained this epoch
    budget.start_epoch(tic, step)
    for b, (x, y, rows) in enumerate(batches):
        if b >= budget.epoch_steps(budget.epoch_start):
            break
        lr = learning_rate(step, budget.total_steps, budget.warmup, config.lr, config.min_lr)
        method.before_step(step / budget.total_steps)
        budget.count(b, step, time.perf_counter())
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss, logs = model(x, y, rows, augment_gen)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1}, step {b + 1}; lower the lr?")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.grad_clip:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(method.parameters(), config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        step += 1
        method.after_step(step / budget.total_steps)
        if ema is not None:
            ema.update_parameters(method)
        for k, v in {"loss": loss.item(), **logs}.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        done += 1
        if b % 10 == 0:
            batches.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.3g}")
        now = time.perf_counter()
        elapsed = result.train_seconds + now - tic
        if budget.after_step(b, step, now, elapsed):
            method.on_schedule(budget.total_steps)
            batches.total = budget.epoch_steps(budget.epoch_start)
        if budget.over(elapsed, step):
            result.stop_reason = f"time budget of {config.max_minutes} min reached before the schedule ended"
            break
    train_time = time.perf_counter() - tic
    result.train_seconds += train_time
    if result.stop_reason == "schedule done" and step < budget.total_steps:
        budget.end_epoch(tic + train_time, step, result.train_seconds)
        method.on_schedule(budget.total_steps)
    row = {"epoch": epoch + 1, "steps": done, "lr": lr, **{f"train_{k}": v / max(1, done) for k, v in sums.items()}}
    row["seconds"] = round(train_time, 2)
    return step, row


def weight_average(method: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``method``'s weights and buffers (``torch.optim.swa_utils``): its first
    update copies the weights, the n-th after that mixes them in with decay ``min(decay, (1 + n) / (10 + n))``.
    Integer buffers (batch-norm counters, queue pointers) are copied, not averaged."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        n = int(n_averaged)
        d = min(decay, (1 + n) / (10 + n))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:
            torch._foreach_copy_(averaged, current)

    return torch.optim.swa_utils.AveragedModel(method, multi_avg_fn=update, use_buffers=True)


def config_dict(**configs) -> dict:
    """Dataclass configs (or dicts) as one nested plain dict (``{name: fields}``), for hashing and records."""
    out = {name: asdict(c) if hasattr(c, "__dataclass_fields__") else c for name, c in configs.items()}
    return json.loads(json.dumps(out, default=str))
