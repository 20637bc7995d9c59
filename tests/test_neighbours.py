"""The heatmap-neighbour index: exact kNN against brute force, random ties, descriptors, cache, agreement,
and the approximate (faiss) search against the exact one."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from utils.data.faces import landmark_heatmaps
from utils.methods.neighbours import (
    NeighbourConfig,
    approximate_neighbours,
    build_index,
    heatmap_descriptors,
    label_agreement,
    nearest_neighbours,
    normalised_landmark_heatmaps,
    recall_at_k,
    search_neighbours,
)


def pairwise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))


@pytest.mark.parametrize("chunk", [4096, 37])  # one chunk, and chunks that do not divide N
def test_nearest_neighbours_match_brute_force(chunk):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(150, 6)).astype(np.float32)
    indices, distances = nearest_neighbours(torch.from_numpy(feats), k=5, chunk=chunk)
    assert indices.shape == distances.shape == (150, 5)
    assert indices.dtype == np.int64 and distances.dtype == np.float32

    d = pairwise(feats)
    np.fill_diagonal(d, np.inf)
    expected = np.argsort(d, axis=1)[:, :5]
    for i in range(len(feats)):
        assert set(indices[i]) == set(expected[i]), i
    np.testing.assert_allclose(distances, np.take_along_axis(d, expected, axis=1), rtol=1e-4, atol=1e-4)
    assert (np.diff(distances, axis=1) >= 0).all()  # nearest first
    assert (indices != np.arange(150)[:, None]).all()


def test_a_row_is_never_its_own_neighbour_even_among_duplicates():
    feats = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [5.0, 5.0], [5.0, 5.0]])
    indices, distances = nearest_neighbours(feats, k=2)
    assert (indices != np.arange(5)[:, None]).all()
    assert set(indices[0]) == {1, 2} and set(indices[1]) == {0, 2} and set(indices[2]) == {0, 1}
    assert indices[3, 0] == 4 and indices[4, 0] == 3 and indices[3, 1] in (0, 1, 2)
    # distances carry the tie-breaking noise: sqrt(1e-6 * mean squared norm) at most
    assert distances[:3].max() <= np.sqrt(1e-6 * 20) + 1e-6
    assert nearest_neighbours(feats, k=10)[0].shape == (5, 4)  # k is capped at N - 1


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_identical_features_give_random_neighbours(value):
    """The centred heatmap: every descriptor is the same, so the neighbours are random images."""
    n, k = 200, 5
    indices, _ = nearest_neighbours(torch.full((n, 3), value), k=k, seed=0)
    assert (indices != np.arange(n)[:, None]).all()
    assert all(len(set(row)) == k for row in indices)
    counts = np.bincount(indices.ravel(), minlength=n)
    assert (counts > 0).sum() > 0.8 * n  # spread over the images, not the same few (1 - e^-5 expected)
    assert counts.max() < 20
    assert len({tuple(sorted(row)) for row in indices}) == n  # no two images share their neighbour set
    other, _ = nearest_neighbours(torch.full((n, 3), value), k=k, seed=1)
    assert (other != indices).any()  # the seed breaks the ties


def test_centred_heatmaps_have_zero_descriptors():
    heat = np.broadcast_to(np.arange(48 * 48, dtype=np.uint8).reshape(48, 48), (10, 48, 48))
    feats = heatmap_descriptors(heat, pool=24, components=8)
    assert feats.shape == (10, 8)
    assert (feats == feats[0]).all()  # every descriptor is the same (about 0, up to rounding)
    assert feats.abs().max() < 1e-4


def random_heatmaps(n=30, size=48, seed=0):
    rng = np.random.default_rng(seed)
    return landmark_heatmaps(rng.uniform(5, size - 5, (n, 68, 2)).astype(np.float32), size, 1.5)


def test_descriptors_without_pca_keep_the_distances_of_pooled_heatmaps():
    heat = random_heatmaps()
    feats = heatmap_descriptors(heat, pool=24, components=0)
    assert feats.shape == (30, 24 * 24) and feats.dtype == torch.float32
    pooled = F.adaptive_avg_pool2d(torch.from_numpy(heat).float()[:, None] / 255, 24).flatten(1).numpy()
    np.testing.assert_allclose(pairwise(feats.numpy()), pairwise(pooled), rtol=1e-4, atol=1e-4)


def test_descriptors_with_enough_components_keep_the_distances():
    """30 centred heatmaps span at most 29 dimensions: 29 principal components lose nothing."""
    heat = random_heatmaps()
    state = torch.random.get_rng_state()
    feats = heatmap_descriptors(heat, pool=12, components=29)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is left alone
    assert feats.shape == (30, 29)
    full = heatmap_descriptors(heat, pool=12, components=0)
    np.testing.assert_allclose(pairwise(feats.numpy()), pairwise(full.numpy()), rtol=1e-3, atol=1e-3)


def test_descriptors_of_fewer_images_than_components():
    """Fewer images than components (a small subset): every centred dimension is kept, nothing fails."""
    heat = random_heatmaps(n=20)
    feats = heatmap_descriptors(heat, pool=12, components=64)
    full = heatmap_descriptors(heat, pool=12, components=0)
    np.testing.assert_allclose(pairwise(feats.numpy()), pairwise(full.numpy()), rtol=1e-4, atol=1e-4)
    assert nearest_neighbours(feats, k=3)[0].shape == (20, 3)


def test_normalised_heatmaps_ignore_position_and_size_of_the_face():
    rng = np.random.default_rng(0)
    landmarks = rng.uniform(14, 34, (3, 68, 2))
    base = normalised_landmark_heatmaps(landmarks, 48, 1.5)
    moved = normalised_landmark_heatmaps(landmarks * 1.4 + np.array([-6.0, 4.0]), 48, 1.5)
    shrunk = normalised_landmark_heatmaps((landmarks - 24) * 0.6 + 20, 48, 1.5)
    assert base.shape == (3, 48, 48) and base.dtype == np.uint8
    assert np.abs(base.astype(int) - moved).max() <= 1  # uint8 rounding
    assert np.abs(base.astype(int) - shrunk).max() <= 1
    assert np.abs(base[0].astype(int) - base[1]).max() > 50  # but different shapes stay different
    # the jaw line (landmarks 0-16) is left out
    jaw = landmarks.copy()
    jaw[:, :17] += rng.normal(0, 3, (3, 17, 2))
    np.testing.assert_array_equal(normalised_landmark_heatmaps(jaw, 48, 1.5), base)


def test_label_agreement_by_hand():
    labels = np.array([0, 0, 1, 1, 1, 2])
    neighbours = np.array([[1, 2], [0, 0], [3, 4], [2, 0], [5, 5], [0, 1]])
    out = label_agreement(neighbours, labels)
    # same label: [1, 0], [1, 1], [1, 1], [1, 0], [0, 0], [0, 0] -> 6 of 12
    assert out["agreement"] == pytest.approx(6 / 12)
    assert out["chance"] == pytest.approx((2 / 6) ** 2 + (3 / 6) ** 2 + (1 / 6) ** 2)
    assert out["per_class"] == pytest.approx({0: 3 / 4, 1: 3 / 6, 2: 0.0})


def test_build_index_is_cached(sample, tmp_path):
    rows = sample.split_indices("train")
    config = NeighbourConfig(k=4)
    first = build_index(sample, rows, config, cache_dir=tmp_path)
    assert not first["loaded"] and first["neighbours"].shape == (len(rows), 4)
    assert len(list(tmp_path.glob("sample-neighbours-*.npz"))) == 1
    second = build_index(sample, rows, config, cache_dir=tmp_path)
    assert second["loaded"]
    np.testing.assert_array_equal(second["neighbours"], first["neighbours"])
    np.testing.assert_array_equal(second["distances"], first["distances"])
    assert second["seconds"] == pytest.approx(first["seconds"])
    other = build_index(sample, rows, NeighbourConfig(k=4, seed=1), cache_dir=tmp_path)  # other settings
    assert not other["loaded"] and len(list(tmp_path.glob("sample-neighbours-*.npz"))) == 2
    uncached = build_index(sample, rows, config, cache_dir=False)
    np.testing.assert_array_equal(uncached["neighbours"], first["neighbours"])


@pytest.mark.parametrize("space", ["landmarks", "normalised", "centre"])
def test_index_in_every_space(sample, space):
    rows = sample.split_indices("train")
    index = build_index(sample, rows, NeighbourConfig(k=3, space=space), cache_dir=False)
    neighbours = index["neighbours"]
    assert neighbours.shape == (len(rows), 3) and neighbours.max() < len(rows)
    assert (neighbours != np.arange(len(rows))[:, None]).all()
    if space == "centre":
        np.testing.assert_allclose(index["distances"], 0, atol=1e-3)
        counts = np.bincount(neighbours.ravel(), minlength=len(rows))
        assert (counts > 0).sum() > 0.8 * len(rows) and counts.max() < 20  # spread at random
        agreement = label_agreement(neighbours, sample.labels[rows])
        assert abs(agreement["agreement"] - agreement["chance"]) < 0.1  # random neighbours: chance level
    else:
        assert (index["distances"] > 0).mean() > 0.5


def test_unknown_space_is_refused():
    with pytest.raises(ValueError, match="space"):
        NeighbourConfig(space="pixels")


def test_unknown_search_is_refused():
    with pytest.raises(ValueError, match="exact.*approximate.*auto"):
        NeighbourConfig(search="faiss")


def clustered(n=3000, dim=16, clusters=30, seed=0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (clusters, dim))
    return torch.from_numpy((centres[rng.integers(clusters, size=n)] + rng.normal(size=(n, dim))).astype(np.float32))


def check_neighbours(feats: torch.Tensor, indices: np.ndarray, distances: np.ndarray, k: int) -> None:
    """``k`` distinct other rows per row, nearest first, at their true Euclidean distances."""
    n = len(feats)
    assert indices.shape == distances.shape == (n, k)
    assert indices.dtype == np.int64 and distances.dtype == np.float32
    assert ((indices >= 0) & (indices < n)).all()
    assert (indices != np.arange(n)[:, None]).all()
    assert all(len(set(row)) == k for row in indices)
    x = feats.numpy().astype(np.float64)
    true = np.sqrt(((x[:, None] - x[indices]) ** 2).sum(-1))
    np.testing.assert_allclose(distances, true, rtol=1e-4, atol=1e-4)
    assert (np.diff(distances, axis=1) >= -1e-5).all()  # nearest first


def test_approximate_neighbours_find_the_exact_ones():
    feats = clustered()
    found, distances = approximate_neighbours(feats, k=5, nlist=16, nprobe=4)
    check_neighbours(feats, found, distances, 5)
    exact, _ = nearest_neighbours(feats, k=5)
    assert recall_at_k(found, exact) >= 0.95
    again, _ = approximate_neighbours(feats, k=5, nlist=16, nprobe=4)
    np.testing.assert_array_equal(again, found)  # seeded: deterministic


def test_approximate_search_skips_the_query_among_duplicates():
    """With identical rows the query need not come first in faiss's answer; it is dropped wherever it is."""
    base = clustered(n=300, dim=8).numpy()
    feats = torch.from_numpy(np.concatenate([base, base, base[:50]]))  # every row has 1 or 2 identical copies
    indices, distances = approximate_neighbours(feats, k=4, nlist=4, nprobe=4)
    check_neighbours(feats, indices, distances, 4)
    n = len(base)
    twins = [{i + n, i + 2 * n} if i < 50 else {i + n} for i in range(n)]
    for i in range(n):  # the identical copies come first, at distance 0
        assert set(indices[i, : len(twins[i])]) == twins[i], i
        assert (distances[i, : len(twins[i])] == 0).all()


def test_approximate_search_breaks_ties_at_random():
    """Identical descriptors (the centred heatmap): random neighbours, as the exact search gives."""
    n, k = 200, 5
    feats = torch.zeros((n, 3))
    indices, distances = approximate_neighbours(feats, k=k, nlist=4)
    check_neighbours(feats, indices, distances, k)
    counts = np.bincount(indices.ravel(), minlength=n)
    assert (counts > 0).sum() > 0.8 * n and counts.max() < 20
    assert len({tuple(sorted(row)) for row in indices}) == n


def test_rows_with_too_few_candidates_fall_back_to_the_exact_search(monkeypatch):
    """Many cells and one probed: some cells hold fewer than k + 1 rows, and faiss returns -1 ids."""
    import utils.methods.neighbours as neighbours

    asked = []

    def exact(features, k, seed=0, chunk=None, rows=None):
        asked.append(rows)
        return nearest_neighbours(features, k, seed, chunk, rows)

    monkeypatch.setattr(neighbours, "nearest_neighbours", exact)
    feats = clustered(n=60, dim=4, clusters=6)
    indices, distances = approximate_neighbours(feats, k=5, nlist=30, nprobe=1)
    assert len(asked) == 1 and 0 < len(asked[0]) < 60  # the fallback ran, for some of the rows only
    check_neighbours(feats, indices, distances, 5)
    np.testing.assert_array_equal(indices[asked[0]], nearest_neighbours(feats, 5, rows=asked[0])[0])


def test_nearest_neighbours_of_some_rows_are_those_of_the_full_search():
    rng = np.random.default_rng(1)
    feats = torch.from_numpy(rng.normal(size=(120, 5)).astype(np.float32))
    full_indices, full_distances = nearest_neighbours(feats, k=4, chunk=50)
    rows = np.array([0, 7, 55, 56, 119, 3])
    indices, distances = nearest_neighbours(feats, k=4, chunk=4, rows=rows)
    np.testing.assert_array_equal(indices, full_indices[rows])
    np.testing.assert_allclose(distances, full_distances[rows], rtol=1e-5, atol=1e-5)


def test_auto_search_is_exact_below_the_threshold():
    feats = clustered(n=200, dim=4)
    exact = NeighbourConfig(k=3, exact_below=201)
    indices, _, method = search_neighbours(feats, exact)
    assert method == "exact"
    np.testing.assert_array_equal(indices, nearest_neighbours(feats, k=3)[0])
    indices, distances, method = search_neighbours(feats, NeighbourConfig(k=3, exact_below=200))
    assert method == "faiss-ivf"
    check_neighbours(feats, indices, distances, 3)
    assert search_neighbours(feats, NeighbourConfig(k=3, search="approximate"))[2] == "faiss-ivf"
    assert search_neighbours(feats, NeighbourConfig(k=3, search="exact", exact_below=10))[2] == "exact"


def test_build_index_records_its_search(tmp_path):
    heat = random_heatmaps(n=40)
    prepared = SimpleNamespace(name="toy", heatmaps=heat)
    rows = np.arange(40)
    exact = build_index(prepared, rows, NeighbourConfig(k=3, pool=12, components=8), cache_dir=tmp_path)
    assert exact["search"] == "exact" and not exact["loaded"]
    config = NeighbourConfig(k=3, pool=12, components=8, exact_below=40)
    approximate = build_index(prepared, rows, config, cache_dir=tmp_path)
    assert approximate["search"] == "faiss-ivf" and not approximate["loaded"]  # another cache entry
    again = build_index(prepared, rows, config, cache_dir=tmp_path)
    assert again["loaded"] and again["search"] == "faiss-ivf"
    np.testing.assert_array_equal(again["neighbours"], approximate["neighbours"])
    assert (
        build_index(prepared, rows, NeighbourConfig(k=3, pool=12, components=8), cache_dir=False)["search"] == "exact"
    )


def test_recall_at_k_by_hand():
    exact = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3]])
    found = np.array([[3, 2, 1], [2, 4, 5], [5, 4, 6]])  # 3 of 3, 1 of 3, 0 of 3
    assert recall_at_k(found, exact) == pytest.approx(4 / 9)
    assert recall_at_k(exact, exact) == 1.0
    with pytest.raises(ValueError):
        recall_at_k(found[:2], exact)


def test_descriptors_of_a_set_too_large_for_memory_keep_the_distances(monkeypatch):
    """Beyond POOLED_IN_MEMORY the components come from the covariance, chunk by chunk; on heatmaps that vary in
    fewer directions than the components kept, both ways keep every distance between pooled heatmaps."""
    from utils.methods import neighbours

    rng = np.random.default_rng(0)
    patterns = rng.random((3, 12, 12))
    weights = rng.random((300, 3))
    heat = np.clip(np.rint(np.einsum("nk,khw->nhw", weights, patterns) * 80), 0, 255).astype(np.uint8)
    pooled = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(heat).float()[:, None] / 255, 6).flatten(1)

    def distances(x):
        return torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")

    expected = distances(pooled)
    in_memory = neighbours.heatmap_descriptors(heat, pool=6, components=8)
    monkeypatch.setattr(neighbours, "POOLED_IN_MEMORY", 1000)
    streamed = neighbours.heatmap_descriptors(heat, pool=6, components=8)
    assert streamed.shape == (300, 8)
    # the uint8 heatmaps' rounding adds a little variance in every direction, which the 8 components drop:
    # up to half a grey level (0.002), far below the distances between these heatmaps (median 0.48)
    torch.testing.assert_close(distances(streamed), expected, atol=2e-3, rtol=0)
    torch.testing.assert_close(distances(in_memory), expected, atol=2e-3, rtol=0)
    assert float(expected.median()) > 0.05
