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

import csv
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from . import distributed as dist_utils
from .loader import BatchLoader, FaceTensors, epoch_generator
from .runtime import show_progress


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

    # fields added after runs were recorded: left out of a run's identity while at these values, so that
    # finished runs keep their folders (see :func:`config_dict`)
    LATER_DEFAULTS: ClassVar[dict] = {"ema": None}

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


# ----------------------------------------------------------------------------------------- checkpoints


def save_atomic(obj, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (global state, saved for resume)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


MAX_WARMUP_SHARE = 0.2  # a time budget that fits few epochs shortens the warm-up to this share of the steps


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

    loader = BatchLoader(
        train,
        config.batch_size * dist_utils.world_size(),
        shuffle=True,
        balanced=config.balance == "sampler",
        drop_last=len(train) >= config.batch_size * dist_utils.world_size() * 2,
        seed=config.seed,
    )
    steps = min(len(loader), steps_per_epoch or len(loader))
    total_steps = steps * config.epochs  # fitted to max_minutes after the first steps
    budget = None if config.max_minutes is None else 60 * config.max_minutes
    fitted = budget is None
    warmup = int(round(config.warmup_epochs * steps))
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

    result = FitResult(run_dir)
    start_epoch, step = 0, 0
    last = run_dir / "last.pt" if run_dir is not None else None
    if last is not None and last.is_file():
        state = load_checkpoint(last, map_location=device)
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        _set_rng_state(state["rng"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        result.history = list(state["history"])
        result.best_epoch, result.best_score = state["best_epoch"], state["best_score"]
        result.train_seconds = state["train_seconds"]
        result.resumed_from_epoch = state["epoch"]
        total_steps, fitted = state.get("total_steps", total_steps), state.get("fitted", fitted)
        result.seconds_per_step = state.get("seconds_per_step")
        warmup = state.get("warmup", warmup)
        if main and progress:
            print(f"resuming {run_dir.name} after epoch {state['epoch'] + 1}/{config.epochs}")

    from tqdm.auto import tqdm

    since_best = (start_epoch - 1 - result.best_epoch) if result.best_epoch >= 0 else 0
    epochs_bar = tqdm(
        range(start_epoch, config.epochs),
        desc=run_dir.name if run_dir else "training",
        unit="epoch",
        disable=not show_progress(progress and main),
        initial=start_epoch,
        total=config.epochs,
    )
    result.stop_reason = "schedule done"
    method.on_schedule(total_steps)
    calibration = min(steps, CALIBRATION_STEPS)  # steps timed before the schedule is fitted to the budget
    out_of_time = False
    spent = 0.0  # steps taken, each counted at its cost relative to a full step (Method.step_cost)
    for epoch in epochs_bar:
        if step >= total_steps or out_of_time:
            break
        tic = time.perf_counter()
        method.train()
        loader.set_epoch(epoch)
        # one generator per epoch and process for the augmentation, independent of the batch order
        augment_gen = epoch_generator(config.seed + 7919 * (dist_utils.rank() + 1), epoch, device)
        sums: dict[str, float] = {}
        done = 0  # batches trained this epoch
        epoch_steps = min(steps, total_steps - step)
        batches = tqdm(
            loader,
            total=epoch_steps,
            leave=False,
            desc=f"epoch {epoch + 1}",
            disable=not show_progress(progress and main),
        )
        timer = (time.perf_counter(), step, spent)  # the steps timed to fit the schedule start here
        for b, (x, y, rows) in enumerate(batches):
            if b >= epoch_steps:
                break
            if b == 1 and not fitted:
                timer = (time.perf_counter(), step, spent)  # after one step: the first is slower (allocations)
            share = len(x) // dist_utils.world_size()  # under torchrun each process takes its share
            mine = slice(dist_utils.rank() * share, (dist_utils.rank() + 1) * share)
            x, y, rows = x[mine], y[mine], rows[mine]
            lr = learning_rate(step, total_steps, warmup, config.lr, config.min_lr)
            method.before_step(step / total_steps)
            spent += float(method.step_cost(np.float64(step / total_steps)))
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
            method.after_step(step / total_steps)
            if ema is not None:
                ema.update_parameters(method)
            logs = {"loss": loss.item(), **logs}
            for k, v in logs.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            done += 1
            if b % 10 == 0:
                batches.set_postfix(loss=f"{logs['loss']:.3f}", lr=f"{lr:.3g}")
            now = time.perf_counter()
            elapsed = result.train_seconds + now - tic
            calibrated = not fitted and (b + 1 == calibration or b + 1 == epoch_steps) and b >= 1
            # within an epoch, the rest of the schedule is fitted again every tenth of it (at least every
            # CALIBRATION_STEPS steps), so a machine that was busy while the first steps were timed still gets
            # its budget's worth of steps
            due = fitted and budget is not None and step - timer[1] >= max(CALIBRATION_STEPS, total_steps // 10)
            if calibrated or (due and step < total_steps):
                result.seconds_per_step = (now - timer[0]) / (spent - timer[2])
                total_steps, warmup = _fit_schedule(
                    step, steps * config.epochs, budget - elapsed, result.seconds_per_step, warmup, method.step_cost
                )
                epoch_steps, fitted, timer = min(steps, total_steps - (step - done)), True, (now, step, spent)
                method.on_schedule(total_steps)
                epochs_bar.total, batches.total = math.ceil(total_steps / steps), epoch_steps  # the fitted schedule
            if budget is not None and _agree(elapsed >= budget) and step < total_steps:
                out_of_time = True  # slower than measured: stop rather than overrun
                result.stop_reason = f"time budget of {config.max_minutes} min reached before the schedule ended"
                break
        train_time = time.perf_counter() - tic
        result.train_seconds += train_time
        if budget is not None and fitted and not out_of_time and step > timer[1] and step < total_steps:
            # re-fit the rest of the schedule to the speed since the last fit (machines slow down and speed up)
            result.seconds_per_step = (tic + train_time - timer[0]) / (spent - timer[2])
            total_steps, warmup = _fit_schedule(
                step,
                steps * config.epochs,
                budget - result.train_seconds,
                result.seconds_per_step,
                warmup,
                method.step_cost,
            )
            method.on_schedule(total_steps)
        row = {"epoch": epoch + 1, "steps": done, "lr": lr, **{f"train_{k}": v / max(1, done) for k, v in sums.items()}}
        kept.eval()
        scores = validate(kept) if validate is not None else {"score": float(epoch)}
        row.update({f"val_{k}": float(v) for k, v in scores.items()})
        row["seconds"] = round(train_time, 2)
        result.history.append(row)
        improved = scores["score"] > result.best_score
        if improved:
            result.best_score, result.best_epoch = float(scores["score"]), epoch
            since_best = 0
        else:
            since_best += 1
        if main and run_dir is not None:
            if improved:
                save_atomic(
                    {"model": kept.state_dict(), "epoch": epoch, "score": result.best_score}, run_dir / "best.pt"
                )
            save_atomic(
                {
                    "model": method.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    **({"ema": ema.state_dict()} if ema is not None else {}),
                    "epoch": epoch,
                    "step": step,
                    "history": result.history,
                    "best_epoch": result.best_epoch,
                    "best_score": result.best_score,
                    "train_seconds": result.train_seconds,
                    "total_steps": total_steps,
                    "fitted": fitted,
                    "seconds_per_step": result.seconds_per_step,
                    "warmup": warmup,
                    "rng": _rng_state(),
                },
                last,
            )
            _write_log(run_dir / "log.csv", result.history)
        dist_utils.barrier()
        epochs_bar.set_postfix({k: f"{v:.4f}" for k, v in scores.items()})
        if config.patience is not None and since_best >= config.patience:
            result.stop_reason = f"early stop: no better validation score for {config.patience} epochs"
            break
    epochs_bar.close()
    result.epochs_run = len(result.history)
    result.total_steps, result.steps_per_epoch, result.warmup_steps = total_steps, steps, warmup
    if run_dir is not None and (run_dir / "best.pt").is_file():
        method.load_state_dict(load_checkpoint(run_dir / "best.pt", map_location=device)["model"])
    elif ema is not None:  # no checkpoints: the average of the last epoch
        method.load_state_dict(ema.module.state_dict())
    method.eval()
    return result


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


CALIBRATION_STEPS = 12  # steps of the first epoch timed to fit the schedule to a time budget


def _fit_schedule(
    step: int,
    planned: int,
    seconds_left: float,
    seconds_per_step: float,
    warmup: int,
    cost: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[int, int]:
    """The total steps that fit: those done plus what the time left allows at the measured rate, at most the
    planned number, at least one more (every process gets the same answer under torchrun); and the warm-up,
    only ever shortened, to at most ``MAX_WARMUP_SHARE`` of that total.

    ``cost`` (:meth:`Method.step_cost`) gives the cost of a step at a share of the schedule relative to a full
    step, and ``seconds_per_step`` is then the seconds of a full step. A step's share depends on the total, so
    the total is the largest whose remaining steps fit (found by bisection; the time left grows with it)."""
    left = max(0.0, seconds_left)
    fits = step + int(left / seconds_per_step)  # every step costing a full one
    if cost is not None:

        def seconds(total: int) -> float:  # the steps from `step` to `total`, as shares of `total`
            return seconds_per_step * float(np.sum(cost(np.arange(step, total) / total)))

        low, high = step, planned  # seconds(low) <= left; find the largest such total
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if seconds(middle) <= left else (low, middle - 1)
        fits = low
    total = torch.tensor([max(step + 1, min(planned, fits))], dtype=torch.long)
    total_steps = int(dist_utils.broadcast_(total)[0])
    return total_steps, min(warmup, max(1, round(MAX_WARMUP_SHARE * total_steps)))


def _agree(flag: bool) -> bool:
    """``flag`` as the first process sees it, on every process (a decision to stop must be the same)."""
    if not dist_utils.is_distributed():
        return flag
    return bool(dist_utils.broadcast_(torch.tensor([int(flag)]))[0])


def _write_log(path: Path, history: list[dict]) -> None:
    keys = list(dict.fromkeys(k for row in history for k in row))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


def config_dict(**configs) -> dict:
    """Dataclass configs (or dicts) as one nested plain dict (``{name: fields}``), for hashing and records.

    A dataclass's ``LATER_DEFAULTS`` (fields added after runs were recorded, and their defaults; those its base
    classes declare count too) are left out while at those values: a run's hash stays what it was before the
    field existed.
    """
    out = {}
    for name, c in configs.items():
        if hasattr(c, "__dataclass_fields__"):
            fields = asdict(c)
            later = {}
            for klass in reversed(type(c).__mro__):
                later.update(vars(klass).get("LATER_DEFAULTS", {}))
            for key, default in later.items():
                if key in fields and fields[key] == default:
                    del fields[key]
            out[name] = fields
        else:
            out[name] = c
    return json.loads(json.dumps(out, default=str))
