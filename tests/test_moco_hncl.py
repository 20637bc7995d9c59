"""MoCo v2 and HNCL: queue, momentum update, masks, neighbour bank, k = 0, a short last batch, and a loss
that falls on the sample.

The two-process (torchrun) checks are in ``test_distributed.py``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utils.core.engine import TrainConfig, fit
from utils.core.loader import face_tensors
from utils.methods import InputSpec
from utils.methods.hncl import HNCL, HNCLConfig
from utils.methods.losses import info_nce, multi_positive_info_nce
from utils.methods.moco import MoCo, MoCoConfig
from utils.methods.neighbours import NeighbourConfig, build_index

SMALL = {"backbone": "resnet18", "stem_stride": 2, "queue_size": 64, "hidden": 64, "dim": 16}
TINY = {"stem_stride": 4, "hidden": 8, "dim": 4}  # for checks where the encoder does not matter


def spec(train_size=100, in_channels=1, image_channels=1):
    return InputSpec(in_channels, image_channels, ("a", "b", "c"), 48, train_size)


def moco(seed=0, train_size=100, **settings):
    torch.manual_seed(seed)
    return MoCo(MoCoConfig(**settings), spec(train_size))


def hncl(neighbours=None, seed=0, **settings):
    """HNCL with a given ``(N, k)`` neighbour table."""
    neighbours = ring_neighbours() if neighbours is None else neighbours
    torch.manual_seed(seed)
    method = HNCL(HNCLConfig(**settings, neighbours=NeighbourConfig(k=neighbours.shape[1])), spec(len(neighbours)))
    method.set_neighbours(neighbours)
    return method


def unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


# ----------------------------------------------------------------------------------------------- MoCo


def test_moco_forward_enqueues_the_batch_keys():
    torch.manual_seed(0)
    method = moco(**SMALL)
    x = torch.rand(16, 1, 48, 48, generator=torch.Generator().manual_seed(1))
    rows = torch.arange(100, 116)
    loss, logs = method(x, None, rows, torch.Generator().manual_seed(2))
    assert loss.ndim == 0 and torch.isfinite(loss) and loss.requires_grad
    assert -1 <= logs["pos_sim"] <= 1
    assert int(method.queue_ptr) == 16
    assert torch.equal(method.queue_rows[:16], rows)
    assert (method.queue_rows[16:] == -1).all()
    torch.testing.assert_close(method.queue.norm(dim=1), torch.ones(64))  # the keys (and the initial queue)


def test_keys_are_unit_vectors_in_the_batch_order():
    """The shuffled, split key batch is put back in order: in eval mode (fixed batch-norm statistics) the
    keys equal a plain forward pass of the key encoder."""
    torch.manual_seed(0)
    method = moco(**SMALL).eval()
    x = torch.rand(12, 1, 48, 48, generator=torch.Generator().manual_seed(1))
    keys = method.keys(x, torch.Generator().manual_seed(3))
    torch.testing.assert_close(keys.norm(dim=1), torch.ones(12))
    with torch.no_grad():
        plain = F.normalize(method.key_projector(method.key_encoder(x)), dim=1)
    torch.testing.assert_close(keys, plain, rtol=1e-4, atol=1e-5)


def test_queue_wraps_around():
    method = moco(queue_size=8, **TINY)
    for start in (0, 4, 8):
        method.remember(unit(4, 4, seed=start), torch.arange(start, start + 4))
    assert int(method.queue_ptr) == 4
    assert method.queue_rows.tolist() == [8, 9, 10, 11, 4, 5, 6, 7]
    torch.testing.assert_close(method.queue[:4], unit(4, 4, seed=8))


def test_momentum_update_of_the_key_encoder():
    m = 0.9
    method = moco(queue_size=8, key_momentum=m, **TINY)
    online = ("encoder.", "projector.")
    with torch.no_grad():  # the key encoder starts as a copy; move the query encoder away from it
        for p in [*method.encoder.parameters(), *method.projector.parameters()]:
            p.add_(torch.randn_like(p))
    before_q = {n: p.clone() for n, p in method.named_parameters() if n.startswith(online)}
    before_k = {n: p.clone() for n, p in method.named_parameters() if n.startswith(("key_encoder.", "key_projector."))}
    method.after_step(0.5)
    params = dict(method.named_parameters())
    assert len(before_q) == len(before_k) > 0
    for qname, q in before_q.items():
        kname = "key_" + qname
        torch.testing.assert_close(params[kname], m * before_k[kname] + (1 - m) * q, rtol=0, atol=1e-6)
        assert torch.equal(params[qname], q)  # the query side is untouched
    assert not any(p.requires_grad for p in [*method.key_encoder.parameters(), *method.key_projector.parameters()])


def test_check_sizes_warns_when_the_queue_exceeds_the_dataset():
    method = moco(queue_size=64, **TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        method.check_sizes(1000, 48)  # any batch size: the queue wraps around
    with pytest.warns(UserWarning, match="larger than the dataset"):
        method.check_sizes(50, 32)


def test_queue_takes_batches_of_any_size():
    """A short last batch (50 images in batches of 32) used to misalign the pointer and break the next enqueue."""
    method = moco(queue_size=64, **TINY)
    for start, n in [(0, 32), (32, 18), (0, 32), (32, 18)]:  # two epochs of 50 images
        method.remember(unit(n, 4, seed=start + n), torch.arange(start, start + n))
    assert int(method.queue_ptr) == (2 * 50) % 64
    # slot by slot: the second epoch's keys overwrote the oldest, wrapping around the end once
    assert method.queue_rows.tolist() == [*range(14, 32), *range(32, 50), *range(36, 50), *range(0, 14)]
    method.remember(unit(100, 4, seed=9), torch.arange(100))  # larger than the queue: its last 64 keys
    assert method.queue_rows.tolist() == [*range(64, 100), *range(36, 64)]


def test_earlier_keys_of_the_query_image_are_not_negatives():
    method = moco(queue_size=8, **TINY)
    t = method.config.temperature
    q, k = unit(3, 4, seed=0), unit(3, 4, seed=1)
    rows = torch.tensor([0, 1, 2])
    negatives, negative_rows = unit(8, 4, seed=2), torch.arange(10, 18)

    def loss(i, queue, queue_rows):  # query i alone: the mask is per query
        method.queue, method.queue_rows = queue, queue_rows
        return method.contrastive_loss(q[i : i + 1], k[i : i + 1], rows[i : i + 1])[0]

    for i in range(3):
        without = loss(i, negatives, negative_rows)
        torch.testing.assert_close(without, info_nce(q[i : i + 1], k[i : i + 1], negatives, t))
        # the queue also holds a key of image i identical to its positive, and an older key of image i
        queue = torch.cat([negatives[:3], k[i : i + 1], negatives[3:], unit(1, 4, seed=3)])
        own = torch.cat([negative_rows[:3], rows[i : i + 1], negative_rows[3:], rows[i : i + 1]])
        torch.testing.assert_close(loss(i, queue, own), without, rtol=1e-6, atol=1e-6)
        other = torch.cat([negative_rows[:3], torch.tensor([-1]), negative_rows[3:], torch.tensor([-1])])
        assert loss(i, queue, other) > without  # had they not been masked, they would count as negatives

    # in a batch, a key of image 1 is masked for query 1 only: it stays a negative of queries 0 and 2
    queue = torch.cat([negatives, k[1:2]])
    queue_rows = torch.cat([negative_rows, torch.tensor([1])])
    method.queue, method.queue_rows = queue, queue_rows
    mask = torch.zeros(3, 9, dtype=torch.bool)
    mask[1, 8] = True
    torch.testing.assert_close(method.contrastive_loss(q, k, rows)[0], info_nce(q, k, queue, t, mask))


# ----------------------------------------------------------------------------------------------- HNCL


def ring_neighbours(n=10, k=2):
    """Image i's neighbours are i+1 ... i+k (mod n)."""
    return (torch.arange(n)[:, None] + torch.arange(1, k + 1)[None]) % n


def test_hncl_remember_fills_the_bank_for_the_batch_rows():
    method = hncl(queue_size=8, **TINY)
    assert not method.bank_filled.any()
    keys, rows = unit(3, 4, seed=0), torch.tensor([2, 5, 7])
    method.remember(keys, rows)
    torch.testing.assert_close(method.bank[rows], keys)
    assert method.bank_filled.nonzero().flatten().tolist() == [2, 5, 7]
    torch.testing.assert_close(method.queue[:3], keys)
    assert method.queue_rows[:3].tolist() == [2, 5, 7] and int(method.queue_ptr) == 3


def test_hncl_with_an_empty_bank_is_info_nce_without_the_related_negatives():
    method = hncl(queue_size=8, **TINY)
    config = method.config
    q, k = unit(2, 4, seed=0), unit(2, 4, seed=1)
    rows = torch.tensor([0, 5])  # neighbours: 0 -> (1, 2), 5 -> (6, 7)
    method.queue = unit(8, 4, seed=2)
    method.queue_rows = torch.tensor([0, 1, 3, 5, 6, 9, -1, 2])
    mask = torch.tensor(
        [
            [True, True, False, False, False, False, False, True],  # image 0, its neighbours 1 and 2
            [False, False, False, True, True, False, False, False],  # image 5, its neighbour 6
        ]
    )
    loss, logs = method.contrastive_loss(q, k, rows)
    assert logs["neighbours_used"] == 0
    torch.testing.assert_close(loss, info_nce(q, k, method.queue, config.temperature, mask), rtol=1e-6, atol=1e-6)

    # once neighbour 1 (of image 0) and 7 (of image 5) are in the bank they become positives
    bank_keys = unit(2, 4, seed=3)
    method.bank[torch.tensor([1, 7])] = bank_keys
    method.bank_filled[torch.tensor([1, 7])] = True
    loss, logs = method.contrastive_loss(q, k, rows)
    assert logs["neighbours_used"] == pytest.approx(0.5)
    positives = torch.stack(
        [k, torch.stack([bank_keys[0], method.bank[6]]), torch.stack([method.bank[2], bank_keys[1]])], 1
    )
    valid = torch.tensor([[True, True, False], [True, False, True]])
    expected = multi_positive_info_nce(q, positives, method.queue, config.temperature, valid, mask)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    assert not torch.isclose(loss, info_nce(q, k, method.queue, config.temperature, mask))


def test_hncl_refuses_a_neighbour_table_of_another_shape():
    method = hncl(queue_size=8, **TINY)
    with pytest.raises(ValueError, match="neighbours must be"):
        method.set_neighbours(ring_neighbours(10, 3))


def test_hncl_with_no_neighbours_is_moco_v2_exactly(sample):
    """k = 0 with MoCo v2's head trains exactly as MoCo v2: the same losses, step by step, and the same weights
    (once, the positive mask was built (B, 0), dropping even the other view, and the loss was -0.0)."""
    train = face_tensors(sample, "train", "gray")
    settings = {**SMALL, "stem_stride": 4, "key_momentum": 0.99}
    plain = moco(train_size=len(train), **settings)
    torch.manual_seed(0)
    config = HNCLConfig(
        **settings, projector_layers=2, projector_batch_norm=False, predictor=False, neighbours=NeighbourConfig(k=0)
    )
    zero = HNCL(config, spec(len(train)))
    config_fit = TrainConfig(epochs=1, batch_size=32, lr=0.05, amp=False, warmup_epochs=0, seed=0, channels_last=False)
    a = fit(plain, train, config_fit, None, progress=False, steps_per_epoch=3)
    b = fit(zero, train, config_fit, None, progress=False, steps_per_epoch=3)
    assert a.history[0]["train_loss"] == b.history[0]["train_loss"] > 0
    zero_params = dict(zero.named_parameters())
    for name, p in plain.named_parameters():
        assert torch.equal(p, zero_params[name]), name


def test_a_training_set_shorter_than_two_batches_trains(sample):
    """50 images, batch 32, queue 64: every epoch ends with a short batch of 18 (drop_last is off)."""
    train = face_tensors(sample, "train", "gray").subset(np.arange(50))
    table = torch.as_tensor(build_index(sample, train.index, NeighbourConfig(k=2), cache_dir=False)["neighbours"])
    for method in (moco(train_size=50, queue_size=64, **TINY), hncl(table, queue_size=64, **TINY)):
        result = fit(method, train, TrainConfig(epochs=3, batch_size=32, amp=False), None, progress=False)
        assert result.epochs_run == 3 and all(math.isfinite(h["train_loss"]) for h in result.history)
        assert int(method.queue_ptr) == (3 * 50) % 64
        assert (method.queue_rows >= 0).all()  # 150 keys have filled the queue


# -------------------------------------------------------------------------------- training on the sample

# resnet18 with a stride-4 stem (12x12 maps after it) keeps both runs within a few seconds each on a CPU
FIT = TrainConfig(epochs=4, batch_size=32, lr=0.05, amp=False, warmup_epochs=0, seed=0)
STEPS = 5  # per epoch: 20 optimizer steps


def fill_queue(method, train, seed=1):
    """Fill the queue with keys of real training images before training.

    The initial queue is random unit vectors: easy negatives, so the very first steps have a low loss that
    then rises while the queue fills with real keys, whatever the encoder learns. Starting from a queue of
    real keys makes the first epoch's loss comparable with the last's.
    """
    g = torch.Generator().manual_seed(seed)
    rows = torch.randperm(len(train), generator=g)[: method.config.queue_size]
    with torch.no_grad():
        method.remember(method.keys(train.x[rows].float() / 255, g), rows)


@pytest.mark.slow
def test_moco_loss_falls_on_the_sample(sample):
    train = face_tensors(sample, "train", "gray")
    torch.manual_seed(0)
    method = moco(train_size=len(train), **{**SMALL, "stem_stride": 4})
    fill_queue(method, train)
    result = fit(method, train, FIT, None, progress=False, steps_per_epoch=STEPS)
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == FIT.epochs and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses


@pytest.mark.slow
def test_hncl_loss_falls_on_the_sample(sample):
    train = face_tensors(sample, "train", "gray+heatmap")
    index = build_index(sample, train.index, NeighbourConfig(k=3), cache_dir=False)
    assert index["neighbours"].shape == (len(train), 3)
    torch.manual_seed(0)
    config = HNCLConfig(**{**SMALL, "stem_stride": 4, "channels": "gray+heatmap"}, neighbours=NeighbourConfig(k=3))
    method = HNCL(config, spec(len(train), 2, train.image_channels))
    method.set_neighbours(torch.as_tensor(index["neighbours"]))
    fill_queue(method, train)
    result = fit(method, train, FIT, None, progress=False, steps_per_epoch=STEPS)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0], losses
    assert result.history[-1]["train_neighbours_used"] > 0  # neighbours' keys from the bank were positives
    assert int(method.bank_filled.sum()) >= method.config.queue_size
