"""The training engine: schedule, checkpoints, exact resume, early stopping, finished runs reused."""

from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from utils.core.augment import AugmentConfig, BatchAugment
from utils.core.budget import fit_schedule
from utils.core.engine import TrainConfig, class_weights, fit, learning_rate, load_checkpoint
from utils.core.loader import FaceTensors
from utils.methods import Method
from utils.methods.models import FERNet


def tiny_net(seed=0, classes=3):
    torch.manual_seed(seed)
    backbone = nn.Sequential(
        nn.Conv2d(1, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.1), nn.AdaptiveAvgPool2d(2), nn.Flatten()
    )
    return FERNet(backbone, 32, classes)


def toy_data(n=96, seed=0):
    """Three classes told apart by where a bright square sits."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 60, (n, 1, 16, 16), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 3
    for i in range(n):
        r = 2 + 5 * int(y[i])
        x[i, 0, r : r + 4, 4:12] = 250
    return FaceTensors(x, y)


class TinyClassifier(Method):
    """A small classifier trained with label-smoothed cross-entropy on augmented toy images."""

    kind = "classifier"

    def __init__(self, seed=0):
        super().__init__(None, None)
        self.encoder = tiny_net(seed)
        self.augment = BatchAugment(AugmentConfig(rotate=5, translate=0.05, scale=(0.9, 1.0), flip=0.0))

    def forward(self, x, y, rows, generator):
        logits = self.encoder(self.augment(x, generator))
        return F.cross_entropy(logits, y, label_smoothing=0.05), {}


def make_method(seed=0):
    return TinyClassifier(seed)


def validator(data):
    def validate(method):
        with torch.no_grad():
            logits = method.encoder(data.x.float() / 255)
        return {"score": float((logits.argmax(1) == data.y).float().mean())}

    return validate


CONFIG = TrainConfig(epochs=4, batch_size=16, lr=0.05, warmup_epochs=1, amp=False, seed=3, deterministic=True)


def test_learning_rate_warms_up_then_follows_a_cosine():
    peak, total, warm = 0.1, 100, 10
    lrs = [learning_rate(s, total, warm, peak) for s in range(total)]
    assert lrs[0] == pytest.approx(peak / warm) and lrs[warm - 1] == pytest.approx(peak)
    assert all(a <= b for a, b in zip(lrs[:warm], lrs[1:warm]))
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1 :]))
    mid = warm + (total - warm) // 2
    assert lrs[mid] == pytest.approx(peak / 2, rel=0.05)
    assert learning_rate(total, total, warm, peak, floor=0.1) == pytest.approx(0.01)


def test_training_learns_the_toy_task(tmp_path):
    data, val = toy_data(), toy_data(seed=1)
    method = make_method()
    result = fit(
        method, data, TrainConfig(epochs=8, batch_size=16, lr=0.1, amp=False), tmp_path, validator(val), progress=False
    )
    assert result.best_score >= 0.9  # chance is 1/3
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


@pytest.mark.parametrize("ema", [None, 0.9], ids=["plain", "ema"])
def test_interrupted_run_resumes_to_the_same_weights(tmp_path, ema):
    CONFIG = dataclasses.replace(globals()["CONFIG"], ema=ema)
    data, val = toy_data(), toy_data(seed=1)
    straight = make_method()
    fit(straight, data, CONFIG, tmp_path / "straight", validator(val), progress=False)
    last = load_checkpoint(tmp_path / "straight" / "last.pt")  # loads with weights_only=True

    class Interrupted(Exception):
        pass

    calls = {"n": 0}
    interrupted = make_method()
    original = interrupted.forward

    def forward_then_crash(x, y, rows, generator):
        calls["n"] += 1
        if calls["n"] == 2 * (len(data) // 16) + 3:  # in the middle of the third epoch
            raise Interrupted
        return original(x, y, rows, generator)

    interrupted.forward = forward_then_crash
    with pytest.raises(Interrupted):
        fit(interrupted, data, CONFIG, tmp_path / "resumed", validator(val), progress=False)
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["epoch"] == 1  # two epochs were saved

    resumed = make_method(seed=99)  # other initial weights: everything must come from the checkpoint
    result = fit(resumed, data, CONFIG, tmp_path / "resumed", validator(val), progress=False)
    assert result.resumed_from_epoch == 1 and result.epochs_run == CONFIG.epochs
    final = load_checkpoint(tmp_path / "resumed" / "last.pt")
    for name, tensor in last["model"].items():
        assert torch.equal(tensor, final["model"][name]), name
    for name, tensor in last.get("ema", {}).items():  # the weight average resumes too
        assert torch.equal(tensor, final["ema"][name]), name
    assert [h["train_loss"] for h in final["history"]] == [h["train_loss"] for h in last["history"]]


class Recorded(TinyClassifier):
    """Keeps a copy of its weights and buffers after every optimizer step."""

    def __init__(self, seed=0):
        super().__init__(seed)
        self.snapshots = [copy.deepcopy(self.encoder)]

    def after_step(self, progress):
        self.snapshots.append(copy.deepcopy(self.encoder))


def test_the_weight_average_is_what_is_validated_and_kept(tmp_path):
    from lightly.models.utils import update_momentum  # an independent EMA step: ema = m * ema + (1 - m) * model

    data = toy_data()
    decay, seen = 0.95, []
    method = Recorded()

    def validate(m):  # every epoch better than the last: the last epoch's average is kept
        seen.append(m)
        return {"score": float(len(seen))}

    result = fit(method, data, dataclasses.replace(CONFIG, ema=decay), tmp_path, validate, progress=False)
    snapshots = method.snapshots
    assert len(snapshots) == 1 + CONFIG.epochs * (len(data) // 16)

    # the average as lightly's momentum update computes it, with the warmed-up decay, in float64: it starts at
    # the weights after the first step, and the n-th step after that mixes in with min(decay, (1 + n) / (10 + n))
    reference = copy.deepcopy(snapshots[1]).double()
    for n, snapshot in enumerate(snapshots[2:], start=1):
        update_momentum(copy.deepcopy(snapshot).double(), reference, m=min(decay, (1 + n) / (10 + n)))
    assert result.best_epoch == CONFIG.epochs - 1 == load_checkpoint(tmp_path / "best.pt")["epoch"]
    for name, p in reference.named_parameters():
        torch.testing.assert_close(method.encoder.state_dict()[name].double(), p, atol=1e-6, rtol=1e-5)
    assert all(m is not method for m in seen)  # validation saw the average, not the trained weights
    final = snapshots[-1].state_dict()
    assert any(not torch.allclose(method.encoder.state_dict()[k], final[k]) for k, _ in reference.named_parameters())


def test_without_checkpoints_the_method_ends_with_the_weight_average():
    data = toy_data()
    method = Recorded()
    fit(method, data, dataclasses.replace(CONFIG, epochs=2, ema=0.5), None, None, progress=False)
    reference = copy.deepcopy(method.snapshots[1]).double()
    for n, snapshot in enumerate(method.snapshots[2:], start=1):
        m = min(0.5, (1 + n) / (10 + n))
        for r, s in zip(reference.parameters(), copy.deepcopy(snapshot).double().parameters()):
            r.data.mul_(m).add_(s.data, alpha=1 - m)  # the formula, written out
    for name, p in reference.named_parameters():
        torch.testing.assert_close(method.encoder.state_dict()[name].double(), p, atol=1e-6, rtol=1e-5)


def test_a_weight_average_decay_outside_0_1_is_refused():
    with pytest.raises(ValueError, match="ema"):
        TrainConfig(ema=1.0)


def test_early_stopping_and_best_epoch(tmp_path):
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.6, 0.9])
    result = fit(
        make_method(),
        toy_data(),
        TrainConfig(epochs=6, batch_size=32, patience=2, amp=False),
        tmp_path,
        lambda m: {"score": next(scores)},
        progress=False,
    )
    assert result.epochs_run == 4 and result.best_epoch == 1 and "early stop" in result.stop_reason
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 1


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    method = make_method()
    method.forward = lambda x, y, rows, g: (torch.tensor(math.nan, requires_grad=True), {})
    with pytest.raises(FloatingPointError, match="epoch 1"):
        fit(method, toy_data(), TrainConfig(epochs=1, batch_size=32, amp=False), None, progress=False)


def test_class_weights_are_balanced():
    y = torch.tensor([0, 0, 0, 1, 2, 2])
    w = class_weights(y, 4)
    assert torch.allclose(w, torch.tensor([6 / 12, 6 / 4, 6 / 8, 0.0]))


class Clock:
    """A fake ``time.perf_counter`` that advances only when a training step runs (``seconds`` per step)."""

    def __init__(self, seconds=1.0):
        self.t, self.seconds = 0.0, seconds

    def __call__(self):
        return self.t


def clocked_method(clock, seconds=None):
    """A toy method whose every step advances ``clock``: by ``seconds(n)`` for the n-th step if given, by
    ``clock.seconds`` otherwise."""
    method = make_method()
    forward, steps = method.forward, {"n": 0}

    def step(x, y, rows, generator):
        steps["n"] += 1
        if seconds is not None:
            clock.seconds = seconds(steps["n"])
        clock.t += clock.seconds
        return forward(x, y, rows, generator)

    method.forward = step
    return method


def test_a_time_budget_fits_the_schedule_to_the_measured_speed(monkeypatch):
    """1 s per step and a 1-minute budget: 60 steps in all, whatever EPOCHS says, ending with the schedule."""
    import utils.core.engine as engine

    clock = Clock(1.0)
    monkeypatch.setattr(engine.time, "perf_counter", clock)
    config = TrainConfig(epochs=50, batch_size=16, amp=False, max_minutes=1.0, warmup_epochs=0)  # 6 steps/epoch
    result = fit(clocked_method(clock), toy_data(), config, None, lambda m: {"score": 0.0}, progress=False)
    assert result.seconds_per_step == pytest.approx(1.0)
    assert result.total_steps == 60 and sum(h["steps"] for h in result.history) == 60
    assert result.epochs_run == 10 and result.train_seconds == pytest.approx(60.0)
    assert result.stop_reason == "schedule done"
    assert result.history[-1]["lr"] < 0.01 * config.lr  # the cosine reached its end at the budget


def test_a_budget_that_fits_few_steps_shortens_the_warm_up(monkeypatch):
    """5 warm-up epochs (30 steps) planned, 60 steps fit: the warm-up becomes a fifth of them, 12 steps."""
    import utils.core.engine as engine

    clock = Clock(1.0)
    monkeypatch.setattr(engine.time, "perf_counter", clock)
    config = TrainConfig(epochs=50, batch_size=16, amp=False, max_minutes=1.0, warmup_epochs=5)
    result = fit(clocked_method(clock), toy_data(), config, None, lambda m: {"score": 0.0}, progress=False)
    assert result.total_steps == 60 and result.warmup_steps == 12
    # the first epoch (6 steps) is timed on the planned 30-step ramp; the fit at its end shortens the ramp
    assert result.history[0]["lr"] == pytest.approx(config.lr * 6 / 30)
    assert result.history[1]["lr"] == pytest.approx(config.lr)  # step 12 of 12: the peak
    unbounded = fit(make_method(), toy_data(), dataclasses.replace(config, max_minutes=None, epochs=6), None,
                    lambda m: {"score": 0.0}, progress=False)  # fmt: skip
    assert unbounded.warmup_steps == 30  # without a budget the warm-up is what was asked


def test_the_schedule_follows_a_slowdown_between_epochs(monkeypatch, tmp_path):
    """Fitted at 1 s per step, then every step takes 3 s: after each epoch the rest of the schedule is fitted
    again, and the run still ends with its schedule exactly at the budget."""
    import utils.core.engine as engine

    clock = Clock(1.0)
    monkeypatch.setattr(engine.time, "perf_counter", clock)
    config = TrainConfig(epochs=50, batch_size=16, amp=False, max_minutes=1.0, warmup_epochs=0)

    def slow_down(m):
        clock.seconds = 3.0  # after the first epoch
        return {"score": 0.0}

    result = fit(clocked_method(clock), toy_data(), config, tmp_path, slow_down, progress=False)
    assert result.train_seconds == pytest.approx(60.0) and result.stop_reason == "schedule done"
    assert result.total_steps == 6 + (60 - 6) // 3  # 6 steps at 1 s, then as many as fit at 3 s
    assert sum(h["steps"] for h in result.history) == result.total_steps
    assert load_checkpoint(tmp_path / "last.pt")["total_steps"] == result.total_steps  # a resume keeps it


def test_a_machine_busy_while_the_first_steps_are_timed_still_gets_its_budget(monkeypatch):
    """10 s a step while the schedule is first fitted (another program holds the CPU), then 1 s: the fit after
    12 steps plans 30 steps, ending at 138 s of 300 inside the first epoch (48 steps); the fit again within
    the epoch (every 12 steps) finds the machine fast and plans what the rest of the budget holds."""
    import utils.core.engine as engine

    clock = Clock()
    monkeypatch.setattr(engine.time, "perf_counter", clock)
    method = clocked_method(clock, lambda n: 10.0 if n <= 12 else 1.0)  # busy, then free
    config = TrainConfig(epochs=50, batch_size=2, amp=False, max_minutes=5.0, warmup_epochs=0)  # 48 steps/epoch
    result = fit(method, toy_data(), config, None, lambda m: {"score": 0.0}, progress=False)
    assert result.total_steps == 24 + (300 - 132)  # re-fitted at step 24 (132 s), 1 s a step from there
    assert sum(h["steps"] for h in result.history) == result.total_steps == 192
    assert result.train_seconds == pytest.approx(300.0) and result.stop_reason == "schedule done"
    assert result.seconds_per_step == pytest.approx(1.0)


class HalfCostFirst(TinyClassifier):
    """A toy method whose steps cost half a full one in the first half of the schedule (as progressive resizing
    does); each step advances ``clock`` by its cost in seconds."""

    def __init__(self, clock):
        super().__init__()
        self.clock, self.progress = clock, None

    def before_step(self, progress):
        self.progress = progress

    def step_cost(self, progress):
        return np.where(np.asarray(progress) < 0.5, 0.5, 1.0)

    def forward(self, x, y, rows, generator):
        self.clock.t += float(self.step_cost(self.progress))
        return super().forward(x, y, rows, generator)


def test_a_budget_fits_steps_whose_cost_changes_during_the_schedule(monkeypatch):
    """A full step takes 1 s, but the first half of the schedule's steps half that: a 1-minute budget holds
    80 steps (40 at 0.5 s, 40 at 1 s), not 60, and the schedule still ends at the budget."""
    import utils.core.engine as engine

    clock = Clock()
    monkeypatch.setattr(engine.time, "perf_counter", clock)
    config = TrainConfig(epochs=50, batch_size=16, amp=False, max_minutes=1.0, warmup_epochs=0)
    result = fit(HalfCostFirst(clock), toy_data(), config, None, lambda m: {"score": 0.0}, progress=False)
    assert result.seconds_per_step == pytest.approx(1.0)  # a full step's seconds, measured on cheap steps
    assert result.total_steps == 80 and sum(h["steps"] for h in result.history) == 80
    assert result.train_seconds == pytest.approx(60.0) and result.stop_reason == "schedule done"
    ones = lambda progress: np.ones_like(progress)  # noqa: E731 - a uniform cost: the plain division's answer
    for left in (0.0, 0.5, 41.9, 42.0, 61.3, 1e4):
        assert fit_schedule(5, 300, left, 0.7, 20, ones) == fit_schedule(5, 300, left, 0.7, 20)


def test_a_slowdown_within_an_epoch_stops_at_the_budget(monkeypatch):
    import utils.core.engine as engine

    clock = Clock()
    # from step 41, in the middle of an epoch: the next fit, at step 42, averages 1 s and 5 s steps and plans
    # more steps than the budget holds
    method = clocked_method(clock, lambda n: 1.0 if n <= 40 else 5.0)
    monkeypatch.setattr(engine.time, "perf_counter", clock)
    config = TrainConfig(epochs=50, batch_size=16, amp=False, max_minutes=1.0, warmup_epochs=0)
    result = fit(method, toy_data(), config, None, lambda m: {"score": 0.0}, progress=False)
    assert 60 <= result.train_seconds <= 60 + 5  # stopped by the step that crossed the budget
    assert "before the schedule ended" in result.stop_reason
    assert sum(h["steps"] for h in result.history) < result.total_steps


def test_epoch_logs_are_means_over_the_batches_trained(tmp_path):
    """With steps_per_epoch capping an epoch, the logged means divide by the steps taken (once, by one more)."""

    class Counting(TinyClassifier):
        def forward(self, x, y, rows, generator):
            loss, _ = super().forward(x, y, rows, generator)
            return loss, {"one": 1.0}

    result = fit(
        Counting(), toy_data(), TrainConfig(epochs=2, batch_size=16, amp=False), None, progress=False, steps_per_epoch=3
    )
    assert [h["train_one"] for h in result.history] == [1.0, 1.0]
