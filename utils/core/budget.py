"""A training-time budget (:attr:`utils.core.engine.TrainConfig.max_minutes`): the schedule is fitted to it.

The run times its first steps and fits its schedule to the budget: as many steps as fit (at most the planned
number), so that warm-up and cosine decay end when the time is up on whatever machine it runs. After every
epoch, and every tenth of the schedule within one, the rest of the schedule is fitted again to the speed
measured since the last fit (a shared machine slows down and speeds up). Steps count at their cost relative to
a full one (:meth:`utils.methods.Method.step_cost`: a progressively resized step at 32 of 48 px costs 4/9).
A fitted schedule shorter than planned keeps its warm-up to at most :data:`MAX_WARMUP_SHARE` of its steps.

>>> budget = TimeBudget(minutes=1.0, steps_per_epoch=6, epochs=50, warmup=0)
>>> budget.total_steps  # planned until the first steps are timed
300
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from utils.core import distributed as dist_utils

CALIBRATION_STEPS = 12  # steps of the first epoch timed to fit the schedule to a time budget
MAX_WARMUP_SHARE = 0.2  # a time budget that fits few epochs shortens the warm-up to this share of the steps

Cost = Callable[[np.ndarray], np.ndarray]


def fit_schedule(
    step: int,
    planned: int,
    seconds_left: float,
    seconds_per_step: float,
    warmup: int,
    cost: Cost | None = None,
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


def agree(flag: bool) -> bool:
    """``flag`` as the first process sees it, on every process (a decision to stop must be the same)."""
    if not dist_utils.is_distributed():
        return flag
    return bool(dist_utils.broadcast_(torch.tensor([int(flag)]))[0])


class TimeBudget:
    """The schedule's length and warm-up, fitted to ``minutes`` of training (None: the planned schedule).

    The engine calls :meth:`start_epoch`, then per step :meth:`count` before it and :meth:`after_step` after
    it, and :meth:`end_epoch`; :attr:`total_steps` and :attr:`warmup` are the schedule at any time.

    Args:
        minutes: the budget (None: no limit).
        steps_per_epoch: optimizer steps in an epoch.
        epochs: epochs planned (the schedule never grows past them).
        warmup: warm-up steps planned.
        cost: a step's cost at a share of the schedule, relative to a full step (None: 1).
    """

    def __init__(self, minutes: float | None, steps_per_epoch: int, epochs: int, warmup: int, cost: Cost | None = None):
        self.seconds = None if minutes is None else 60.0 * minutes
        self.steps_per_epoch, self.planned = steps_per_epoch, steps_per_epoch * epochs
        self.total_steps, self.warmup, self.cost = self.planned, warmup, cost
        self.fitted = self.seconds is None  # a budget's schedule is a plan until the first steps are timed
        self.seconds_per_step: float | None = None  # of a full-cost step, as last measured
        self.spent = 0.0  # steps taken, each at its cost
        self.timer = (0.0, 0, 0.0)  # (time, step, spent) when the steps being timed began
        self.epoch_start = 0  # the step the current epoch began at

    def state_dict(self) -> dict:
        keys = ("total_steps", "fitted", "seconds_per_step", "warmup")
        return {k: getattr(self, k) for k in keys}

    def load_state_dict(self, state: dict) -> None:
        for key in ("total_steps", "fitted", "seconds_per_step", "warmup"):
            if key in state:
                setattr(self, key, state[key])

    def epoch_steps(self, step: int) -> int:
        """Steps of the epoch that begins (or began) at ``step``: a full epoch, or what is left of the schedule."""
        return min(self.steps_per_epoch, self.total_steps - step)

    def start_epoch(self, now: float, step: int) -> None:
        self.timer, self.epoch_start = (now, step, self.spent), step

    def count(self, batch: int, step: int, now: float) -> None:
        """Before a step: count its cost. The first step of an unfitted schedule is not timed (allocations)."""
        if batch == 1 and not self.fitted:
            self.timer = (now, step, self.spent)
        cost = 1.0 if self.cost is None else float(self.cost(np.float64(step / self.total_steps)))
        self.spent += cost

    def after_step(self, batch: int, step: int, now: float, elapsed: float) -> bool:
        """After the ``batch``-th step of the epoch (``step`` steps done, ``elapsed`` seconds of training): fit
        the schedule when the first steps are timed, and again every tenth of it. Returns whether it changed."""
        if self.seconds is None:
            return False
        epoch_steps = self.epoch_steps(self.epoch_start)
        calibrated = (
            not self.fitted and (batch + 1 == min(self.steps_per_epoch, CALIBRATION_STEPS) or batch + 1 == epoch_steps)
        ) and batch >= 1
        due = self.fitted and step - self.timer[1] >= max(CALIBRATION_STEPS, self.total_steps // 10)
        if not (calibrated or (due and step < self.total_steps)):
            return False
        self._refit(step, now, self.seconds - elapsed)
        self.fitted, self.timer = True, (now, step, self.spent)
        return True

    def over(self, elapsed: float, step: int) -> bool:
        """Whether training must stop now: the budget is spent before the schedule ended (a slowdown)."""
        return self.seconds is not None and agree(elapsed >= self.seconds) and step < self.total_steps

    def end_epoch(self, now: float, step: int, train_seconds: float) -> None:
        """After an epoch (``train_seconds`` of training so far): fit the rest of the schedule to the speed
        measured since the last fit."""
        if self.seconds is not None and self.fitted and self.timer[1] < step < self.total_steps:
            self._refit(step, now, self.seconds - train_seconds)

    def _refit(self, step: int, now: float, seconds_left: float) -> None:
        self.seconds_per_step = (now - self.timer[0]) / (self.spent - self.timer[2])
        self.total_steps, self.warmup = fit_schedule(
            step, self.planned, seconds_left, self.seconds_per_step, self.warmup, self.cost
        )
