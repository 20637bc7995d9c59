"""Representation probes: weighted kNN, the linear probe and its choice of C, the two floors, a floor run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from utils.core import runs
from utils.core.loader import face_tensors
from utils.core.runtime import seed_everything
from utils.evaluation.probes import PROBE_CS, extract_features, knn_scores, linear_probe
from utils.methods import EncoderConfig, InputSpec
from utils.methods.floors import RandomInit, RandomInitConfig, RawPixels, RawPixelsConfig, floors


def clusters(n_per_class=40, classes=3, dim=10, spread=0.3, seed=0):
    """Gaussian clusters around far-apart centres (different directions, so cosine similarity separates them)."""
    rng = np.random.default_rng(seed)
    centres = 5 * np.eye(classes, dim)
    y = np.repeat(np.arange(classes), n_per_class)
    x = centres[y] + rng.normal(0, spread, (len(y), dim))
    return x.astype(np.float32), y


# ------------------------------------------------------------------------------------------------ kNN


def test_knn_scores_are_distributions_and_separate_clusters():
    train_x, train_y = clusters(seed=0)
    query_x, query_y = clusters(n_per_class=15, seed=1)
    scores = knn_scores(train_x, train_y, query_x, num_classes=4, k=10, chunk=16)  # several chunks
    assert scores.shape == (45, 4)
    np.testing.assert_allclose(scores.sum(axis=1), 1, rtol=1e-5)
    assert (scores >= 0).all() and (scores[:, 3] == 0).all()  # no training image of class 3
    np.testing.assert_array_equal(scores.argmax(axis=1), query_y)


def test_knn_votes_by_similarity():
    train = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    query = np.array([[1.0, 0.05]])  # close to the single class-0 image, far from the two of class 1
    scores = knn_scores(train, np.array([0, 1, 1]), query, num_classes=2, k=3, temperature=0.07)
    assert scores[0, 0] > 0.99
    uniform = knn_scores(train, np.array([0, 1, 1]), query, num_classes=2, k=3, temperature=1e6)
    np.testing.assert_allclose(uniform[0], [1 / 3, 2 / 3], rtol=1e-4)  # a huge temperature: plain counts
    assert knn_scores(train, np.array([0, 1, 1]), query, num_classes=2, k=50).shape == (1, 2)  # k capped at N


# --------------------------------------------------------------------------------------- linear probe


def test_linear_probe_on_separable_data():
    (tx, ty), (vx, vy), (sx, sy) = (clusters(seed=s, spread=0.5) for s in range(3))
    result = linear_probe(tx, ty, {"val": (vx, vy), "test": (sx, sy)}, num_classes=3)
    assert set(result["probs"]) == {"val", "test"}
    for name, y in (("val", vy), ("test", sy)):
        probs = result["probs"][name]
        assert probs.shape == (len(y), 3)
        np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-6)
        assert (probs.argmax(axis=1) == y).mean() >= 0.95
    assert list(result["accuracy_by_C"]) == list(PROBE_CS)
    assert result["C"] in PROBE_CS
    assert result["accuracy_by_C"][result["C"]] == max(result["accuracy_by_C"].values())
    assert result["seconds"] >= 0


def test_linear_probe_picks_the_best_c_on_val():
    """Noisy, overlapping classes: the C values disagree, and the first C with the best val accuracy wins."""
    rng = np.random.default_rng(0)
    tx = rng.normal(size=(40, 100)).astype(np.float32)  # few images, many useless features
    ty = (tx[:, 0] + 0.5 * rng.normal(size=40) > 0).astype(int)
    vx = rng.normal(size=(200, 100)).astype(np.float32)
    vy = (vx[:, 0] > 0).astype(int)
    cs = (1e-4, 1e-2, 1.0, 100.0)
    result = linear_probe(tx, ty, {"val": (vx, vy)}, num_classes=2, cs=cs)
    by_c = result["accuracy_by_C"]
    assert list(by_c) == list(cs) and len(set(by_c.values())) > 2
    best = max(by_c.values())
    assert result["C"] == next(c for c in cs if by_c[c] == best)
    assert result["C"] not in (cs[0], cs[-1])  # here neither extreme wins: the choice is not by position
    accuracy = (result["probs"]["val"].argmax(axis=1) == vy).mean()
    assert accuracy == pytest.approx(by_c[result["C"]])  # the probabilities come from the chosen model


def test_linear_probe_with_a_class_missing_from_train():
    tx, ty = clusters(classes=3, seed=0)
    vx, vy = clusters(classes=4, n_per_class=10, seed=1)  # val has class 3, train does not
    result = linear_probe(tx, ty, {"val": (vx, vy), "test": (vx[:5], vy[:5])}, num_classes=5)
    for name, n in (("val", 40), ("test", 5)):
        probs = result["probs"][name]
        assert probs.shape == (n, 5)
        assert (probs[:, 3:] == 0).all()  # classes never seen in training get probability 0
        np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-6)
    assert (result["probs"]["val"][:30].argmax(axis=1) == vy[:30]).all()


def test_linear_probe_needs_the_selection_split():
    tx, ty = clusters()
    with pytest.raises(KeyError):
        linear_probe(tx, ty, {"test": (tx, ty)}, num_classes=3)


# -------------------------------------------------------------------------------------------- floors


@pytest.fixture(scope="module")
def small(sample):
    """20 images of each split: enough for the floors' shapes, cheap for a ResNet on a CPU."""
    rows = np.concatenate([sample.split_indices(s)[:20] for s in ("train", "val", "test")])
    return sample.subset(rows)


def floor_features(method, prepared, channels):
    return {
        split: extract_features(method.embed, face_tensors(prepared, split, channels))
        for split in ("train", "val", "test")
    }


def test_raw_pixel_floor_is_the_flattened_input_in_unit_range(sample):
    method = RawPixels(RawPixelsConfig("gray+heatmap"), InputSpec(2, 1, sample.classes, 48, 0))
    for split, feats in floor_features(method, sample, "gray+heatmap").items():
        data = face_tensors(sample, split, "gray+heatmap")
        assert feats.shape == (len(data), 2 * 48 * 48)
        assert feats.min() >= 0 and feats.max() <= 1 and feats.max() > 0.9
        np.testing.assert_allclose(feats, data.x.flatten(1).numpy() / 255, rtol=1e-6)


def test_random_init_floor_is_deterministic_for_a_seed(small):
    def features(seed):
        seed_everything(seed)
        method = RandomInit(RandomInitConfig(), InputSpec(1, 1, small.classes, 48, 20)).eval()
        return floor_features(method, small, "gray")

    first, again, other = features(0), features(0), features(1)
    for split, feats in first.items():
        assert feats.shape == (20, 512) and feats.dtype == np.float32
        np.testing.assert_array_equal(feats, again[split])
        assert not np.allclose(feats, other[split])


def test_a_floor_with_an_unknown_input_layout_is_refused():
    with pytest.raises(ValueError, match="channels must be one of"):
        RawPixelsConfig("grey")


def test_floor_runs_write_finished_records_and_are_found_again(sample, tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "versions", lambda: {"python": "3.x"})  # the real ones import cv2 and dlib: slow
    encoder = EncoderConfig(stem_stride=4)
    random_init, raw = floors(sample, encoder, seed=0, checkpoint_dir=tmp_path, device="cpu", progress=False)
    assert sorted(p.name.rsplit("-", 1)[0] for p in tmp_path.iterdir()) == [
        "floor-random-init-sample",
        "floor-raw-pixels-sample",
    ]
    for run, method in ((random_init, "random-init"), (raw, "raw-pixels")):
        on_disk = json.loads((run.run_dir / "metrics.json").read_text())
        assert on_disk["status"] == "finished" and on_disk["method"] == method and on_disk["protocol"] == "floor"
        assert on_disk["epochs_run"] == 0
        evaluations = on_disk["evaluations"]
        for protocol in ("linear", "knn"):
            for split in ("val", "test"):
                assert 0 <= evaluations[protocol][split]["accuracy"] <= 1
        assert evaluations["linear"]["C"] in PROBE_CS
        assert len(evaluations["linear"]["accuracy_by_C"]) == len(PROBE_CS)
    assert json.loads((raw.run_dir / "metrics.json").read_text())["seed"] is None  # nothing random in it

    # finished runs are found again, not recomputed; raw pixels are the same run for every seed
    monkeypatch.setattr(RawPixels, "embed", lambda *a: pytest.fail("recomputed"))
    again = floors(sample, encoder, seed=1, checkpoint_dir=tmp_path, device="cpu", progress=False)
    assert again[1].loaded and again[1].run_dir == raw.run_dir and again[1].record == raw.record
    assert not again[0].loaded and again[0].run_dir != random_init.run_dir  # another seed: other weights
