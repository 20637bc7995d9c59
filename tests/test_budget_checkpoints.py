"""The training core's small pieces on their own: the time budget that fits a schedule, and the checkpoints a run
resumes from (the engine tests check them inside a whole fit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.core import checkpoints
from utils.core.budget import CALIBRATION_STEPS, MAX_WARMUP_SHARE, TimeBudget, fit_schedule


def drive(budget: TimeBudget, seconds_per_step, epochs: int):
    """Run ``budget`` through ``epochs`` epochs of fake steps (``seconds_per_step(step)`` each); returns the steps
    taken per epoch and the seconds spent."""
    now, step, spent, taken = 0.0, 0, 0.0, []
    for _ in range(epochs):
        if step >= budget.total_steps:
            break
        tic, done = now, 0
        budget.start_epoch(now, step)
        for b in range(budget.steps_per_epoch):
            if b >= budget.epoch_steps(budget.epoch_start):
                break
            budget.count(b, step, now)
            now += seconds_per_step(step)
            step += 1
            done += 1
            budget.after_step(b, step, now, spent + now - tic)
            if budget.over(spent + now - tic, step):
                break
        spent += now - tic
        budget.end_epoch(now, step, spent)
        taken.append(done)
    return taken, spent


def test_without_a_budget_the_schedule_is_the_plan():
    budget = TimeBudget(None, steps_per_epoch=10, epochs=3, warmup=5)
    taken, _ = drive(budget, lambda s: 1.0, 5)
    assert taken == [10, 10, 10] and budget.total_steps == 30 and budget.warmup == 5 and budget.fitted


def test_a_budget_fits_as_many_steps_as_the_time_holds():
    budget = TimeBudget(1.0, steps_per_epoch=10, epochs=50, warmup=20)  # 60 s at 1 s a step: 60 steps
    taken, spent = drive(budget, lambda s: 1.0, 50)
    assert budget.total_steps == 60 and sum(taken) == 60 and spent == pytest.approx(60.0)
    assert budget.seconds_per_step == pytest.approx(1.0)
    assert budget.warmup == round(MAX_WARMUP_SHARE * 60)  # the planned 20 shortened to a fifth of 60


def test_the_first_step_is_not_timed_and_the_fit_comes_after_the_calibration_steps():
    budget = TimeBudget(1.0, steps_per_epoch=100, epochs=5, warmup=0)
    now = 0.0
    budget.start_epoch(now, 0)
    for b in range(CALIBRATION_STEPS):
        budget.count(b, b, now)
        now += 10.0 if b == 0 else 1.0  # a slow first step (allocations) is left out of the measure
        changed = budget.after_step(b, b + 1, now, now)
        assert changed == (b + 1 == CALIBRATION_STEPS)
    assert budget.seconds_per_step == pytest.approx(1.0)
    assert budget.total_steps == CALIBRATION_STEPS + int(60 - now)


def test_a_budget_refits_after_a_slowdown_and_stops_at_the_budget():
    budget = TimeBudget(1.0, steps_per_epoch=10, epochs=50, warmup=0)
    taken, spent = drive(budget, lambda s: 1.0 if s < 10 else 3.0, 50)
    assert budget.total_steps == 10 + (60 - 10) // 3 and sum(taken) == budget.total_steps
    assert spent <= 60.0 + 3.0


def test_the_state_round_trips():
    budget = TimeBudget(2.0, steps_per_epoch=10, epochs=50, warmup=3)
    drive(budget, lambda s: 1.0, 2)
    again = TimeBudget(2.0, steps_per_epoch=10, epochs=50, warmup=3)
    again.load_state_dict(budget.state_dict())
    assert again.state_dict() == budget.state_dict()
    assert set(budget.state_dict()) == {"total_steps", "fitted", "seconds_per_step", "warmup"}


def test_fit_schedule_counts_steps_at_their_cost():
    half_first = lambda p: np.where(np.asarray(p) < 0.5, 0.5, 1.0)  # noqa: E731
    total, _ = fit_schedule(0, 1000, 60.0, 1.0, 0, half_first)
    assert total == 80  # 40 steps at 0.5 s, 40 at 1 s
    assert fit_schedule(10, 1000, 0.0, 1.0, 5) == (11, 2)  # at least one more step; warm-up at most a fifth


def test_a_resume_point_restores_the_parts_the_progress_and_the_random_states(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    path = tmp_path / "last.pt"
    checkpoints.save_resume_point(path, {"model": model, "optimizer": optimizer, "ema": None}, {"epoch": 3})
    expected = torch.rand(5)  # what the generator gives next after the save
    assert not (tmp_path / ".last.pt.tmp").exists()  # written to a temporary file, then renamed

    other = torch.nn.Linear(3, 2)
    other_optimizer = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    torch.rand(100)  # move the generator on
    rest = checkpoints.resume(path, {"model": other, "optimizer": other_optimizer, "ema": None}, "cpu")
    assert rest == {"epoch": 3}
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)
    assert other_optimizer.state_dict()["state"][0]["momentum_buffer"] is not None
    assert torch.equal(torch.rand(5), expected)


def test_the_log_has_every_key_any_epoch_logged(tmp_path):
    checkpoints.write_log(tmp_path / "log.csv", [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.0, "acc": 0.5}])
    lines = (tmp_path / "log.csv").read_text().splitlines()
    assert lines == ["epoch,loss,acc", "1,2.0,", "2,1.0,0.5"]
