"""FRA: the region and semantic-relation losses against slow references (Sinkhorn against ``lightly``), the
positional encoding, heatmaps and the map-size guard, the weighted sum of the three losses, the region table
on known landmarks, and a loss that falls on the sample."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import BYOL_SMALL, FRA_SMALL, randn, spec, train_on_sample

from utils.evaluation.regions import GROUPS, group_map, group_shares, region_table
from utils.methods.fra import FRA, FRAConfig, sine_positions
from utils.methods.losses import byol_loss, region_loss, relation_loss, sinkhorn

# ---------------------------------------------------------------------------------------------- FRA


def test_sine_positions_follow_detr():
    pos = sine_positions(3, 5, 8)  # (8, 3, 5)
    assert pos.shape == (8, 3, 5)
    for y in range(3):
        for x in range(5):
            ey, ex = (y + 1) / 3 * 2 * math.pi, (x + 1) / 5 * 2 * math.pi
            freqs = [10000 ** (i / 2) for i in range(2)]
            expected = [math.sin(ey / f) for f in freqs] + [math.cos(ey / f) for f in freqs]
            expected += [math.sin(ex / f) for f in freqs] + [math.cos(ex / f) for f in freqs]
            torch.testing.assert_close(pos[:, y, x], torch.tensor(expected), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        sine_positions(2, 2, 6)


def test_region_loss_against_a_slow_reference():
    p, z = randn(3, 4, 8, seed=7), randn(3, 4, 8, seed=8)
    slow = 0.0
    for b in range(3):
        for i in range(4):
            pi, zi = F.normalize(p[b, i], dim=0), F.normalize(z[b, i], dim=0)
            slow += (2 - 2 * float(pi @ zi)) / 12
            off = sum(float(pi @ F.normalize(z[b, j], dim=0)) ** 2 for j in range(4) if j != i)
            slow += 0.02 * off / 4 / 12
    assert float(region_loss(p, z, 0.02)) == pytest.approx(slow, rel=1e-5)
    torch.testing.assert_close(region_loss(p, z), byol_loss(p.flatten(0, 1), z.flatten(0, 1)))


def test_sinkhorn_matches_lightly_and_balances():
    from lightly.loss.swav_loss import sinkhorn as lightly_sinkhorn

    probs = F.softmax(randn(40, 5, seed=9) / 0.3, dim=1)
    ours = sinkhorn(probs, 3)
    torch.testing.assert_close(ours, lightly_sinkhorn(probs.log(), iterations=3, epsilon=1.0), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours.sum(dim=1), torch.ones(40))  # every position: one unit of mass
    many = sinkhorn(probs, 50)
    torch.testing.assert_close(many.sum(dim=0), torch.full((5,), 40 / 5), rtol=1e-3, atol=1e-3)  # balanced


def test_relation_loss_against_a_slow_reference():
    student, teacher = randn(30, 4, seed=10), randn(30, 4, seed=11)
    q = sinkhorn(F.softmax(teacher / 0.04, dim=1), 3)
    p = F.softmax(student / 0.1, dim=1)
    ce = -sum(float((q[n] * p[n].log()).sum()) for n in range(30)) / 30
    mean = p.mean(dim=0)
    balance = math.log(4) + float((mean * mean.log()).sum())
    assert float(relation_loss(student, teacher)) == pytest.approx(ce + balance, rel=1e-5)
    assert float(relation_loss(student, teacher, balance_weight=0)) == pytest.approx(ce, rel=1e-5)


def test_fra_refuses_a_map_smaller_than_six():
    with pytest.raises(ValueError, match="at least 6x6.*3x3"):
        FRA(FRAConfig(region_stage=None, last_stride=2), spec())
    small = {**BYOL_SMALL, "stem_stride": 2}
    assert FRA(FRAConfig(last_stride=1, region_stage=None, **small), spec()).region is not None


def test_fra_heatmaps_are_distributions_and_regions_compete_for_positions():
    torch.manual_seed(0)
    method = FRA(FRAConfig(stem_stride=2, **{k: v for k, v in BYOL_SMALL.items() if k != "stem_stride"}), spec())
    x = torch.rand(3, 1, 48, 48, generator=torch.Generator().manual_seed(1))
    heat = method.region_heatmaps(x)
    assert heat.shape == (3, 8, 6, 6)
    torch.testing.assert_close(heat.sum(dim=(2, 3)), torch.ones(3, 8))
    scores = randn(2, 8, 36, seed=3)
    assignment = F.softmax(scores / method.config.scale, dim=1) + 1e-7  # scale 0.1: the paper's beta = 10
    torch.testing.assert_close(
        method.heatmaps_from_scores(scores), assignment / assignment.sum(dim=-1, keepdim=True), rtol=1e-5, atol=1e-7
    )


@pytest.mark.parametrize("symmetric", [True, False])
def test_fra_forward_is_the_weighted_sum_of_its_three_losses(symmetric):
    torch.manual_seed(0)
    config = FRAConfig(
        projector_hidden=64,
        projector_dim=32,
        predictor_hidden=64,
        stem_stride=2,
        decoder_dropout=0.0,
        dense_hidden=32,
        symmetric=symmetric,
    )
    pairs = ((0, 1), (1, 0)) if symmetric else ((0, 1),)  # (online view, target view)
    method = FRA(config, spec())
    x = torch.rand(6, 1, 48, 48, generator=torch.Generator().manual_seed(1))
    loss, logs = method(x, None, None, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    views = [method.augment(x, g), method.augment(x, g)]
    with torch.no_grad():
        online = [method.encode(v) for v in views]
        target = [method.encode(v, target=True) for v in views]
        glob = sum(byol_loss(method.predictor(online[i].projection), target[j].projection) for i, j in pairs)
        reg = sum(region_loss(method.region_predictor(online[i].regions), target[j].regions, 0.02) for i, j in pairs)
        rel = sum(
            0.5
            * relation_loss(
                online[i].scores.transpose(1, 2).flatten(0, 1), target[i].scores.transpose(1, 2).flatten(0, 1)
            )
            for i, _ in pairs
        )
    assert logs["global"] == pytest.approx(float(glob), rel=1e-4)
    assert logs["region"] == pytest.approx(float(reg), rel=1e-4)
    assert logs["relation"] == pytest.approx(float(rel), rel=1e-4)
    assert loss.item() == pytest.approx(0.5 * float(glob) + 0.5 * float(reg) + 0.1 * float(rel), rel=1e-4)


# --------------------------------------------------------------------------------------- region table


def test_group_map_on_known_landmarks():
    landmarks = np.full((1, 68, 2), np.nan, dtype=np.float32)
    landmarks[0, :17] = [2, 2]  # jaw: top-left corner
    landmarks[0, 17:27] = [45, 2]  # brows: top-right
    landmarks[0, 27:36] = [24, 24]  # nose: centre
    landmarks[0, 36:48] = [2, 45]  # eyes: bottom-left
    landmarks[0, 48:68] = [45, 45]  # mouth: bottom-right
    groups = group_map(landmarks, 48, radius=5)
    names = {name: GROUPS.index(name) for name in GROUPS}
    assert groups[0, 2, 2] == names["jaw"] and groups[0, 2, 45] == names["brows"]
    assert groups[0, 24, 24] == names["nose"] and groups[0, 45, 2] == names["eyes"]
    assert groups[0, 45, 45] == names["mouth"] and groups[0, 12, 24] == names["other"]  # 12 px from the nose
    assert (group_map(np.full((1, 68, 2), np.nan), 48) == names["other"]).all()


def test_a_heatmap_on_the_mouth_has_its_mass_there():
    landmarks = np.zeros((2, 68, 2), dtype=np.float32)
    rng = np.random.default_rng(0)
    landmarks[:] = rng.uniform(5, 43, size=(2, 68, 2))
    landmarks[:, 48:68] = [30, 40]  # every mouth point at x 30, y 40
    heat = np.zeros((2, 2, 48, 48), dtype=np.float32)
    heat[:, 0, 40, 30] = 1.0  # query 0: all mass on the mouth
    heat[:, 1] = 1.0  # query 1: uniform
    shares = group_shares(heat, landmarks, size=48)
    mouth = GROUPS.index("mouth")
    assert shares["mass"][0, mouth] == pytest.approx(1.0, abs=1e-4)
    # float32 sums over 48 x 48 pixels: the last digits depend on the CPU's summation order (AMD EPYC: 1.7e-5)
    np.testing.assert_allclose(shares["mass"][1], shares["uniform"], atol=1e-4)
    np.testing.assert_allclose(shares["mass"].sum(axis=1), 1.0, atol=1e-4)
    table = region_table(shares)
    assert table.loc["query 0", "top group"] == "mouth" and table.loc["query 0", "lift"] > 10
    assert table.loc["query 1", "lift"] == pytest.approx(1.0, abs=1e-4)


# -------------------------------------------------------------------------------- training on the sample


@pytest.mark.slow
def test_the_loss_falls_over_20_steps_on_the_sample(sample):
    _, result = train_on_sample(FRA, FRAConfig(**FRA_SMALL), sample, epochs=4, steps=5)
    losses = [h["train_loss"] for h in result.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    assert result.history[0]["train_momentum"] < result.history[-1]["train_momentum"] < 1.0  # rising on its cosine


def test_hard_heatmaps_are_the_positions_each_query_wins():
    torch.manual_seed(0)
    method = FRA(FRAConfig(stem_stride=2, **{k: v for k, v in BYOL_SMALL.items() if k != "stem_stride"}), spec())
    x = torch.rand(3, 1, 48, 48, generator=torch.Generator().manual_seed(1))
    partition = method.region_partition(x)  # (3, 6, 6)
    hard = method.region_heatmaps(x, hard=True)  # (3, 8, 6, 6)
    assert partition.shape == (3, 6, 6) and hard.shape == (3, 8, 6, 6)
    for q in range(8):
        won = partition == q
        expected = won.float() / won.sum(dim=(1, 2), keepdim=True).clamp_min(1)
        torch.testing.assert_close(hard[:, q], expected)


def test_pooled_shares_weigh_images_by_what_they_hold():
    landmarks = np.random.default_rng(0).uniform(5, 43, size=(2, 68, 2)).astype(np.float32)
    landmarks[:, 48:68] = [30, 40]
    counts = np.zeros((2, 1, 48, 48), dtype=np.float32)
    counts[0, 0, 40, 30] = 3.0  # image 0: three positions on the mouth
    counts[1, 0, 0, 0] = 1.0  # image 1: one position in a corner ("other")
    pooled = group_shares(counts, landmarks, 48, per_image=False)["mass"][0]
    assert pooled[GROUPS.index("mouth")] == pytest.approx(0.75) and pooled[GROUPS.index("other")] == pytest.approx(0.25)
    averaged = group_shares(counts, landmarks, 48)["mass"][0]
    assert averaged[GROUPS.index("mouth")] == pytest.approx(0.5)


def test_a_query_that_wins_nothing_is_marked_unused():
    shares = {
        "mass": np.array([[0.5, 0.5, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0.0]]),
        "uniform": np.full(6, 1 / 6),
        "groups": GROUPS,
    }
    table = region_table(shares)
    assert table.loc["query 1", "top group"] == "unused" and np.isnan(table.loc["query 1", "lift"])
    assert table.loc["query 0", "lift"] == pytest.approx(3.0)


def test_region_awareness_is_recorded_in_the_runs_record(finished_runs, sample, tmp_path):
    import shutil

    from utils.core import runs
    from utils.evaluation.regions import record_region_awareness

    folder = tmp_path / finished_runs["fra"].run_dir.name
    shutil.copytree(finished_runs["fra"].run_dir, folder)
    run = runs.load_run(folder, "cpu")
    aware = record_region_awareness(run, sample, "val")
    record = runs.finished(folder)
    tables = record["region_awareness"]["sample/val"]
    queries = run.method.config.queries
    for kind in ("soft", "hard"):
        assert len(tables[kind]) == queries + 1  # every query, then the uniform map
        for row in tables[kind].values():
            assert (row["top group"] in (*GROUPS, "unused", "") and row["lift"] is None) or row["lift"] >= 0
    assert aware["heatmaps"].shape[:2] == (len(aware["rows"]), queries)
