"""Face preprocessing: heatmaps against a slow reference, alignment geometry, the on-disk cache."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from utils.core import cache
from utils.data import faces, load_dataset
from utils.data.faces import (
    FaceConfig,
    FacePreprocessor,
    centre_heatmap,
    landmark_heatmaps,
    prepare,
    similarity_to_template,
)


def slow_heatmap(points, size, sigma):
    """Pixel by pixel: the largest Gaussian value over the landmarks."""
    out = np.zeros((size, size))
    for y in range(size):
        for x in range(size):
            for px, py in points:
                if np.isfinite(px):
                    out[y, x] = max(out[y, x], np.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * sigma**2)))
    return np.rint(out * 255).astype(np.uint8)


def test_landmark_heatmaps_match_slow_reference():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 20, size=(3, 5, 2)).astype(np.float32)
    points[2] = np.nan  # an image without landmarks
    fast = landmark_heatmaps(points, 20, sigma=1.7, chunk=2)
    for i in range(3):
        np.testing.assert_array_equal(fast[i], slow_heatmap(points[i], 20, 1.7))
    assert fast[2].max() == 0
    assert fast[0].max() >= 200  # near a landmark the map is close to its peak


def test_centre_heatmap_is_one_symmetric_blob():
    h = centre_heatmap(48)
    assert h.shape == (48, 48) and h.dtype == np.uint8
    np.testing.assert_array_equal(h, h[::-1])
    np.testing.assert_array_equal(h, h.T)
    assert h[23:25, 23:25].min() == h.max()
    assert h[0, 0] < 10


def rotated_face(angle_deg, scale=1.0, size=48):
    """Landmarks of a frontal template face rotated about the image centre."""
    rng = np.random.default_rng(1)
    base = rng.uniform(10, 38, size=(68, 2))
    base[36:42] = [14, 18] + rng.normal(0, 0.5, (6, 2))  # image-left eye
    base[42:48] = [32, 18] + rng.normal(0, 0.5, (6, 2))
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) * scale
    return (base - size / 2) @ rot.T + size / 2


@pytest.mark.parametrize("angle", [-25, -5, 0, 12, 30])
@pytest.mark.parametrize("scale", [0.7, 1.0, 1.6])
def test_alignment_levels_the_eyes_at_the_template(angle, scale):
    points = rotated_face(angle, scale)
    m = similarity_to_template(points, 64)
    out = faces.apply_transform(points, m)
    right, left = out[36:42].mean(0), out[42:48].mean(0)
    assert abs(right[1] - left[1]) < 1e-6  # level eye line
    assert left[0] > right[0]  # not mirrored
    np.testing.assert_allclose((right + left) / 2, np.array(faces.EYE_MID) * 64, atol=1e-6)
    np.testing.assert_allclose(left[0] - right[0], faces.EYE_DISTANCE * 64, atol=1e-6)


def test_process_with_given_landmarks_aligns_image_and_points():
    points = rotated_face(20)
    image = np.full((48, 48), 128, np.uint8)
    for x, y in points[36:48]:  # dark eyes where the landmarks say
        image[int(round(y)), int(round(x))] = 0
    pre = FacePreprocessor(FaceConfig(detector="none", landmarks=False))
    face, out_points, found = pre.process(image, given_landmarks=points)
    assert found and face.shape == (48, 48)
    right, left = out_points[36:42].mean(0), out_points[42:48].mean(0)
    assert abs(right[1] - left[1]) < 1e-4


def test_process_without_a_face_keeps_the_centred_image():
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 255, size=(6, 8), dtype=np.uint8)  # smooth blotches: no face
    image = np.asarray(Image.fromarray(coarse).resize((80, 60), Image.BICUBIC))
    pre = FacePreprocessor(FaceConfig(detector="dlib", landmarks=False, size=30))
    face, points, found = pre.process(image)
    assert not found and np.isnan(points).all()
    expected = Image.fromarray(image[:, 10:70]).resize((30, 30), Image.BILINEAR)
    assert np.abs(face.astype(int) - np.asarray(expected, dtype=int)).mean() < 3


def test_rgb_output_keeps_colour():
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0] = 200  # red
    pre = FacePreprocessor(FaceConfig(detector="none", landmarks=False, color="rgb", size=32))
    face, _, _ = pre.process(image)
    assert face.shape == (32, 32, 3) and face[..., 0].min() == 200 and face[..., 1].max() == 0


def test_missing_shape_predictor_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("FER_SHAPE_PREDICTOR", str(tmp_path / "nope.dat"))
    with pytest.raises(FileNotFoundError, match="nope.dat"):
        faces.shape_predictor_path()


def test_shape_predictor_is_found_without_importing_the_package():
    assert faces.shape_predictor_path().name == "shape_predictor_68_face_landmarks.dat"


# ---------------------------------------------------------------------------------------------- cache


def write_fer_csv(path, n=12, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        pixels = " ".join(map(str, rng.integers(0, 256, 2304)))
        rows.append((i % 7, pixels, ["Training", "PublicTest"][i % 2]))
    pd.DataFrame(rows, columns=["emotion", "pixels", "Usage"]).to_csv(path, index=False)
    return path


CHEAP = FaceConfig(detector="haar", landmarks=False, align=False)


def test_prepare_caches_and_reuses(tmp_path):
    ds = load_dataset("fer2013", write_fer_csv(tmp_path / "fer2013.csv"))
    first = prepare(ds, CHEAP, cache_dir=tmp_path / "cache", workers=1, progress=False)
    second = prepare(ds, CHEAP, cache_dir=tmp_path / "cache", workers=1, progress=False)
    assert not first.loaded_from_cache and second.loaded_from_cache
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.labels, ds.labels)
    assert len(list((tmp_path / "cache").glob("fer2013-faces-*"))) == 1
    # other settings -> another store, not the old one
    third = prepare(
        ds,
        FaceConfig(detector="haar", landmarks=False, align=False, size=32),
        cache_dir=tmp_path / "cache",
        workers=1,
        progress=False,
    )
    assert not third.loaded_from_cache and third.images.shape[1:] == (32, 32)
    assert len(list((tmp_path / "cache").glob("fer2013-faces-*"))) == 2


def test_prepare_uses_both_workers_like_one(tmp_path):
    ds = load_dataset("fer2013", write_fer_csv(tmp_path / "fer2013.csv", n=30))
    one = prepare(ds, CHEAP, cache_dir=False, workers=1, progress=False, chunk=7)
    two = prepare(ds, CHEAP, cache_dir=False, workers=2, progress=False, chunk=7)
    np.testing.assert_array_equal(one.images, two.images)


def test_cache_key_ignores_order_of_settings():
    assert cache.settings_key({"a": 1, "b": [1, 2]}) == cache.settings_key({"b": [1, 2], "a": 1})
    assert cache.settings_key({"a": 1}) != cache.settings_key({"a": 2})


def test_unreadable_image_is_reported_and_skipped(tmp_path):
    root = tmp_path / "fer"
    for split, cls in [("train", "happy"), ("test", "sad")]:
        folder = root / split / cls
        folder.mkdir(parents=True)
        for k in range(2):
            Image.fromarray(np.full((48, 48), 100 + k, np.uint8)).save(folder / f"{k}.jpg")
    (root / "train" / "happy" / "broken.jpg").write_bytes(b"not a jpeg")
    ds = load_dataset("fer2013", root)
    with pytest.warns(UserWarning, match="broken.jpg"):
        prepared = prepare(ds, CHEAP, cache_dir=False, workers=1, progress=False)
    assert len(prepared) == 4 and len(prepared.problems) == 1
    assert "broken.jpg" in prepared.problems[0].where
