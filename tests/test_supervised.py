"""The supervised method's batch mixing (mixup, cutmix), progressive resizing, and the identity of runs recorded
before they existed."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import spec

from utils.core import runs
from utils.core.augment import AugmentConfig
from utils.core.engine import TrainConfig, config_dict
from utils.methods.ran import RANConfig
from utils.methods.supervised import Supervised, SupervisedConfig

NO_AUGMENT = AugmentConfig(flip=0.0, rotate=0.0, scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter=0.0)


class Recording(torch.nn.Module):
    """Wraps an encoder and keeps the last batch it saw and the logits it gave."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder, self.seen = encoder, None

    def forward(self, x):
        self.seen = x.detach().clone()
        self.logits = self.encoder(x)
        return self.logits


def supervised(**changes):
    config = SupervisedConfig(backbone="resnet18", stem_stride=4, augment=NO_AUGMENT, **changes)
    torch.manual_seed(0)
    method = Supervised(config, spec())
    method.encoder = Recording(method.encoder)
    return method


def test_the_cutmix_loss_is_cross_entropy_with_the_labels_mixed_by_area():
    method = supervised(mix="cutmix")
    n = 8
    x = (torch.arange(n, dtype=torch.float32) / n)[:, None, None, None].expand(n, 1, 48, 48).contiguous()
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 0])
    for seed in range(5):
        loss, _ = method(x, y, torch.arange(n), torch.Generator().manual_seed(seed))
        seen = method.encoder.seen
        # read the partner and the pasted share from the pixels the encoder saw
        values = torch.round(seen * n).long().flatten(1)  # (n, H*W): which image each pixel came from
        own = values == torch.arange(n)[:, None]
        partner = torch.where(own.all(1), torch.arange(n), values.masked_fill(own, -1).max(1).values)
        pasted = (~own).float().mean(1)
        moved = partner != torch.arange(n)
        share = float(pasted[moved].mean()) if moved.any() else 0.0
        target = (1 - share) * F.one_hot(y, 7).float() + share * F.one_hot(y[partner], 7).float()
        expected = F.cross_entropy(method.encoder.logits.float(), target)  # soft-target cross-entropy
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_mixing_nothing_gives_the_plain_loss():
    x = torch.rand(6, 1, 48, 48, generator=torch.Generator().manual_seed(1))
    y, rows = torch.tensor([0, 1, 2, 3, 4, 5]), torch.arange(6)
    plain, _ = supervised()(x, y, rows, torch.Generator().manual_seed(2))
    never, _ = supervised(mix="mixup", mix_prob=0.0)(x, y, rows, torch.Generator().manual_seed(2))
    always, _ = supervised(mix="mixup")(x, y, rows, torch.Generator().manual_seed(2))
    assert torch.equal(plain, never) and not torch.equal(plain, always)


def test_bad_mixing_settings_are_refused():
    with pytest.raises(ValueError, match="mix"):
        SupervisedConfig(mix="mosaic")
    with pytest.raises(ValueError, match="mix_alpha"):
        SupervisedConfig(mix="mixup", mix_alpha=0.0)
    with pytest.raises(ValueError, match="mix_prob"):
        SupervisedConfig(mix="mixup", mix_prob=1.5)


def test_a_run_recorded_before_a_field_existed_is_found_under_its_old_name(tmp_path):
    """The one rule of run identity: a stored config's missing fields take today's defaults. A run recorded
    before ``width`` and ``ema`` existed (its folder named by the settings it had then) is the run at their
    defaults, and no other; a stored field that no longer exists matches nothing."""
    model, train = SupervisedConfig(stem_stride=2), TrainConfig(epochs=3)
    setup = {"method": "supervised", **config_dict(model=model, train=train), "data": {"name": "x", "faces": {}}}
    old = json.loads(json.dumps(setup))
    del old["model"]["width"], old["train"]["ema"]
    folder = tmp_path / "supervised-x-0ld0ld00"
    runs.write_record(folder, {"config": old})
    assert runs.find_finished(setup, tmp_path) == folder
    for changed in (dataclasses.replace(model, width=32), dataclasses.replace(model, mix="cutmix")):
        other = {**setup, **config_dict(model=changed)}
        assert runs.find_finished(other, tmp_path) is None
    assert runs.find_finished({**setup, **config_dict(train=dataclasses.replace(train, ema=0.99))}, tmp_path) is None
    gone = json.loads(json.dumps(old))
    gone["model"]["crop_size"] = 36  # a field this version does not have
    runs.write_record(folder, {"config": gone})
    assert runs.find_finished(setup, tmp_path) is None


def test_progressive_resizing_grows_the_training_images_in_steps_of_8_pixels():
    method = supervised(resize_from=32, resize_until=0.75)
    progress = np.array([0.0, 0.3, 0.374, 0.375, 0.6, 0.749, 0.75, 1.0])
    assert method.train_side(progress).tolist() == [32, 32, 32, 40, 40, 40, 48, 48]
    # a step's cost is the share of the pixels: (32/48)^2, (40/48)^2, 1
    assert method.step_cost(progress) == pytest.approx([4 / 9] * 3 + [25 / 36] * 3 + [1.0] * 2)
    assert supervised().step_cost(progress).tolist() == [1.0] * len(progress)
    odd = supervised(resize_from=30, resize_until=0.5)  # 18 px to grow: 30, 38, 46, then 48 at the end of it
    assert odd.train_side(np.array([0.0, 0.23, 0.45, 0.5])).tolist() == [30, 38, 46, 48]


def test_the_network_sees_resized_images_while_training_and_evaluates_at_full_size():
    method = supervised(resize_from=32, resize_until=0.5)
    x = torch.rand(4, 1, 48, 48, generator=torch.Generator().manual_seed(0))
    y, rows = torch.tensor([0, 1, 2, 3]), torch.arange(4)
    sides = []
    for progress in (0.0, 0.3, 0.6):
        method.before_step(progress)
        _, logs = method(x, y, rows, torch.Generator().manual_seed(0))
        sides.append((method.encoder.seen.shape[-1], logs["side"]))
    assert sides == [(32, 32.0), (40, 40.0), (48, 48.0)]
    method.before_step(0.0)
    # the resized batch is the augmented one shrunk with antialiasing (a uniform image stays uniform)
    grey = torch.full((2, 1, 48, 48), 0.25)
    method(grey, y[:2], rows[:2], torch.Generator().manual_seed(0))
    torch.testing.assert_close(method.encoder.seen, torch.full((2, 1, 32, 32), 0.25))
    method.eval()
    assert method.classifier()(x).shape == (4, 7)  # evaluation takes the full 48 px


def test_bad_resizing_settings_are_refused():
    with pytest.raises(ValueError, match="resize_from"):
        SupervisedConfig(resize_from=4)
    with pytest.raises(ValueError, match="resize_until"):
        SupervisedConfig(resize_from=32, resize_until=0.0)
    with pytest.raises(ValueError, match="smaller than the images' side, 48 px"):
        supervised(resize_from=48)
    with pytest.raises(ValueError, match="RAN has no progressive resizing"):
        RANConfig(resize_from=32)
