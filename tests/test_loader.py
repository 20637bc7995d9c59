"""Split tensors in every channel layout, and the batch loader's epochs, orders and class balancing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from utils.core.augment import AugmentConfig, BatchAugment
from utils.core.loader import BatchLoader, FaceTensors, channel_count, face_tensors
from utils.data.faces import FaceConfig, PreparedFaces, centre_heatmap

SIZE = 12


def prepared_faces(n=10, rgb=False, soft=False, seed=0) -> PreparedFaces:
    """A tiny preprocessed dataset: random faces and heatmaps, labels 0..6, train / val / test rows."""
    rng = np.random.default_rng(seed)
    shape = (n, SIZE, SIZE, 3) if rgb else (n, SIZE, SIZE)
    soft_labels = None
    if soft:
        soft_labels = rng.dirichlet(np.ones(7), size=n).astype(np.float32)
    return PreparedFaces(
        name="toy",
        classes=("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"),
        images=rng.integers(0, 256, shape, dtype=np.uint8),
        landmarks=rng.uniform(0, SIZE, (n, 68, 2)).astype(np.float32),
        heatmaps=rng.integers(0, 256, (n, SIZE, SIZE), dtype=np.uint8),
        labels=np.arange(n, dtype=np.int64) % 7,
        splits=np.array((["train", "train", "val", "test"] * n)[:n]),
        face_found=np.ones(n, dtype=bool),
        rows=np.arange(n),
        sources=np.full(n, "toy"),
        config=FaceConfig(detector="none", landmarks=False, size=SIZE, color="rgb" if rgb else "gray"),
        soft_labels=soft_labels,
    )


def test_gray_layout_is_the_images_with_their_labels():
    faces = prepared_faces()
    data = face_tensors(faces, channels="gray")
    assert data.x.shape == (10, 1, SIZE, SIZE) and data.x.dtype == torch.uint8
    assert data.y.dtype == torch.int64
    np.testing.assert_array_equal(data.x[:, 0].numpy(), faces.images)
    np.testing.assert_array_equal(data.y.numpy(), faces.labels)
    assert data.image_channels == 1
    assert data.soft is None


def test_a_split_keeps_its_rows_in_order():
    faces = prepared_faces()
    data = face_tensors(faces, "train", channels="gray+heatmap")
    rows = faces.split_indices("train")
    assert len(data) == len(rows) == 6
    np.testing.assert_array_equal(data.index, rows)
    np.testing.assert_array_equal(data.x[:, 0].numpy(), faces.images[rows])
    np.testing.assert_array_equal(data.y.numpy(), faces.labels[rows])


def test_heatmap_layout_adds_each_image_its_landmark_heatmap():
    faces = prepared_faces()
    data = face_tensors(faces, channels="gray+heatmap")
    assert data.x.shape == (10, 2, SIZE, SIZE)
    np.testing.assert_array_equal(data.x[:, 1].numpy(), faces.heatmaps)
    assert data.image_channels == 1  # the heatmap is not an image channel (no photometric changes)


def test_centre_layout_adds_the_same_centred_map_to_every_image():
    faces = prepared_faces()
    data = face_tensors(faces, channels="gray+centre")
    assert data.x.shape == (10, 2, SIZE, SIZE)
    centre = data.x[:, 1].numpy()
    for i in range(1, len(centre)):
        np.testing.assert_array_equal(centre[i], centre[0])
    np.testing.assert_array_equal(centre[0], centre_heatmap(SIZE))
    peak = np.unravel_index(centre[0].argmax(), centre[0].shape)
    assert all(abs(p - (SIZE - 1) / 2) <= 0.5 for p in peak)
    np.testing.assert_array_equal(data.x[:, 0].numpy(), faces.images)


def test_rgb_from_gray_repeats_the_grey_image():
    faces = prepared_faces()
    data = face_tensors(faces, channels="rgb")
    assert data.x.shape == (10, 3, SIZE, SIZE)
    for c in range(3):
        np.testing.assert_array_equal(data.x[:, c].numpy(), faces.images)
    assert data.image_channels == 3

    data = face_tensors(faces, channels="rgb+heatmap")
    assert data.x.shape == (10, 4, SIZE, SIZE)
    np.testing.assert_array_equal(data.x[:, 3].numpy(), faces.heatmaps)
    assert data.image_channels == 3


def test_rgb_faces_keep_their_colour_channels_in_order():
    faces = prepared_faces(rgb=True)
    data = face_tensors(faces, channels="rgb+heatmap")
    assert data.x.shape == (10, 4, SIZE, SIZE)
    for c in range(3):
        np.testing.assert_array_equal(data.x[:, c].numpy(), faces.images[..., c])
    np.testing.assert_array_equal(data.x[:, 3].numpy(), faces.heatmaps)


@pytest.mark.parametrize("channels", ["gray", "gray+heatmap", "gray+centre"])
def test_asking_grey_of_rgb_faces_raises(channels):
    with pytest.raises(ValueError, match="RGB"):
        face_tensors(prepared_faces(rgb=True), channels=channels)


def test_unknown_layout_raises():
    with pytest.raises(ValueError, match="channels must be one of"):
        face_tensors(prepared_faces(), channels="grey")
    assert [channel_count(c) for c in ("gray", "gray+heatmap", "gray+centre", "rgb", "rgb+heatmap")] == [1, 2, 2, 3, 4]


def test_soft_labels_follow_their_rows():
    faces = prepared_faces(soft=True)
    data = face_tensors(faces, "val")
    np.testing.assert_array_equal(data.soft.numpy(), faces.soft_labels[faces.split_indices("val")])
    sub = data.subset([1, 0])
    np.testing.assert_array_equal(sub.soft.numpy(), data.soft.numpy()[[1, 0]])
    np.testing.assert_array_equal(sub.index, data.index[[1, 0]])


# ------------------------------------------------------------------------------------------- loader


def toy_tensors(labels) -> FaceTensors:
    labels = torch.as_tensor(labels, dtype=torch.int64)
    n = len(labels)
    x = torch.arange(n, dtype=torch.int64).remainder(256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2)
    return FaceTensors(x.contiguous(), labels)


def epoch_rows(loader: BatchLoader, epoch: int) -> list[int]:
    loader.set_epoch(epoch)
    return [int(r) for _, _, rows in loader for r in rows]


def test_shuffled_epoch_visits_every_row_once_and_batches_match_their_rows():
    data = toy_tensors(np.arange(23) % 3)
    loader = BatchLoader(data, batch_size=5, shuffle=True, seed=1)
    seen = []
    for x, y, rows in loader:
        assert x.dtype == torch.float32
        torch.testing.assert_close(x, data.x[rows].float() / 255)
        assert torch.equal(y, data.y[rows])
        seen += rows.tolist()
    assert sorted(seen) == list(range(23))
    assert seen != list(range(23))  # shuffled


def test_unshuffled_loader_keeps_the_order():
    loader = BatchLoader(toy_tensors(np.zeros(7)), batch_size=3)
    assert epoch_rows(loader, 0) == list(range(7))
    assert epoch_rows(loader, 5) == list(range(7))


def test_same_epoch_same_order_other_epoch_other_order():
    data = toy_tensors(np.arange(40) % 2)
    loader = BatchLoader(data, batch_size=8, shuffle=True, seed=3)
    first = epoch_rows(loader, 2)
    assert epoch_rows(loader, 2) == first
    assert epoch_rows(BatchLoader(data, batch_size=8, shuffle=True, seed=3), 2) == first  # a resumed run
    assert epoch_rows(loader, 3) != first
    assert epoch_rows(BatchLoader(data, batch_size=8, shuffle=True, seed=4), 2) != first


def test_same_epoch_same_augmentation():
    data = FaceTensors(torch.randint(0, 256, (12, 1, 16, 16), dtype=torch.uint8), torch.zeros(12, dtype=torch.int64))
    loader = BatchLoader(data, batch_size=4, shuffle=True, augment=BatchAugment(AugmentConfig()), seed=0)
    loader.set_epoch(1)
    a = [x for x, _, _ in loader]
    b = [x for x, _, _ in loader]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert all(u.min() >= 0 and u.max() <= 1 for u in a)
    loader.set_epoch(2)
    c = [x for x, _, _ in loader]
    assert not all(torch.equal(u, v) for u, v in zip(a, c))


def test_balanced_sampling_evens_out_an_imbalanced_split():
    labels = np.array([0] * 180 + [1] * 20)
    loader = BatchLoader(toy_tensors(labels), batch_size=32, balanced=True, seed=0)
    for epoch in range(2):
        loader.set_epoch(epoch)
        y = torch.cat([y for _, y, _ in loader])
        assert len(y) == 200
        share = torch.bincount(y, minlength=2).float() / len(y)
        assert torch.all((share > 0.35) & (share < 0.65)), share


def test_length_with_and_without_drop_last():
    data = toy_tensors(np.zeros(23))
    loader = BatchLoader(data, batch_size=5, shuffle=True)
    assert len(loader) == 5
    sizes = [len(y) for _, y, _ in loader]
    assert sizes == [5, 5, 5, 5, 3]

    loader = BatchLoader(data, batch_size=5, shuffle=True, drop_last=True)
    assert len(loader) == 4
    assert [len(y) for _, y, _ in loader] == [5, 5, 5, 5]

    assert len(BatchLoader(toy_tensors(np.zeros(20)), batch_size=5, drop_last=True)) == 4
    assert len(BatchLoader(toy_tensors(np.zeros(20)), batch_size=5)) == 4
