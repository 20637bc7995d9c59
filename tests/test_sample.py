"""Tests of the procedurally drawn sample dataset (utils/sample.py) and of the bundled copy in data/sample/."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from utils.data.labels import EMOTIONS, HAPPY, NUM_BASIC, SAD
from utils.data.sample import CSV_NAME, DEFAULT_COUNTS, LANDMARKS_NAME, USAGES, draw_face, make_sample

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "data" / "sample"
SIZE_LIMIT = 2_000_000  # bytes: the bundled sample must stay under 2 MB
SMALL_COUNTS = {
    "Training": (2, 1, 2, 2, 2, 1, 2),
    "PublicTest": (1, 1, 1, 1, 1, 1, 1),
    "PrivateTest": (1, 0, 1, 1, 1, 1, 1),
}


@pytest.mark.parametrize("expression", range(NUM_BASIC))
def test_draw_face_shapes_and_landmarks_inside(expression):
    image, landmarks = draw_face(expression, np.random.default_rng(expression))
    assert image.shape == (48, 48) and image.dtype == np.uint8
    assert landmarks.shape == (68, 2) and landmarks.dtype == np.float32
    assert np.isfinite(landmarks).all()
    assert landmarks.min() >= 0 and landmarks.max() <= 47
    assert image.std() > 10  # a drawn face, not a blank image


def test_draw_face_other_size():
    image, landmarks = draw_face(HAPPY, np.random.default_rng(0), size=96)
    assert image.shape == (96, 96)
    assert landmarks.min() >= 0 and landmarks.max() <= 95


def test_draw_face_deterministic():
    first = draw_face(2, np.random.default_rng(42))
    second = draw_face(2, np.random.default_rng(42))
    other = draw_face(2, np.random.default_rng(43))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], other[0])


def test_draw_face_rejects_unknown_expression():
    with pytest.raises(ValueError):
        draw_face(len(EMOTIONS), np.random.default_rng(0))  # contempt is not drawn


def test_landmark_layout():
    """The iBUG-300W order: jaw left to right, brows above eyes, nose between, mouth below."""
    _, p = draw_face(6, np.random.default_rng(1))
    assert p[0, 0] < p[8, 0] < p[16, 0]  # jaw from the image-left ear round the chin
    assert p[8, 1] > p[57, 1] > p[33, 1] > p[30, 1] > p[27, 1]  # chin, lower lip, nostrils, nose tip, bridge
    assert p[17:27, 1].mean() < p[36:48, 1].mean()  # brows above the eyes
    assert p[36:42, 0].mean() < p[27, 0] < p[42:48, 0].mean()  # right eye (image left), nose, left eye
    assert p[36, 0] < p[39, 0] < p[42, 0] < p[45, 0]  # eye corners left to right
    assert p[48, 0] < p[51, 0] < p[54, 0] and p[51, 1] < p[57, 1]  # mouth corners, upper / lower lip


def _corner_lift(landmarks: np.ndarray) -> float:
    """How far the mouth corners (48, 54) sit above the lip-line centre (inner lips 62, 66), in pixels."""
    centre_y = landmarks[[62, 66], 1].mean()
    return float(centre_y - landmarks[[48, 54], 1].mean())


def test_mouth_corners_up_when_happy_down_when_sad():
    for seed in range(8):
        assert _corner_lift(draw_face(HAPPY, np.random.default_rng(seed))[1]) > 0.5
        assert _corner_lift(draw_face(SAD, np.random.default_rng(seed))[1]) < 0.0


def test_make_sample_writes_fer2013_format(tmp_path):
    written = make_sample(tmp_path, counts=SMALL_COUNTS, seed=3)
    assert written == SMALL_COUNTS
    csv_path, landmarks_path = tmp_path / CSV_NAME, tmp_path / LANDMARKS_NAME
    assert csv_path.read_bytes()[:2] == b"\x1f\x8b"  # gzip magic
    with gzip.open(csv_path, "rt") as f:
        assert f.readline().strip() == "emotion,pixels,Usage"

    frame = pd.read_csv(csv_path)
    assert list(frame.columns) == ["emotion", "pixels", "Usage"]
    assert len(frame) == sum(sum(c) for c in SMALL_COUNTS.values())
    pixels = [np.array(p.split(), dtype=int) for p in frame["pixels"]]
    assert all(p.size == 48 * 48 and p.min() >= 0 and p.max() <= 255 for p in pixels)
    assert list(dict.fromkeys(frame["Usage"])) == list(USAGES)  # Training, then PublicTest, then PrivateTest
    for usage, per_class in SMALL_COUNTS.items():
        labels = frame.loc[frame["Usage"] == usage, "emotion"]
        assert np.bincount(labels, minlength=NUM_BASIC).tolist() == list(per_class)

    landmarks = pd.read_csv(landmarks_path)
    assert list(landmarks.columns) == ["landmarks"]
    assert len(landmarks) == len(frame)
    points = np.stack([np.array(row.split(), dtype=float) for row in landmarks["landmarks"]])
    assert points.shape == (len(frame), 136)
    assert points.min() >= 0 and points.max() <= 47


def test_make_sample_is_byte_deterministic(tmp_path):
    counts = {"Training": (1, 1, 1, 1, 1, 1, 1)}
    make_sample(tmp_path / "a", counts=counts, seed=7)
    make_sample(tmp_path / "b", counts=counts, seed=7)
    for name in (CSV_NAME, LANDMARKS_NAME):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_make_sample_rejects_bad_counts(tmp_path):
    with pytest.raises(ValueError):
        make_sample(tmp_path, counts={"Validation": (1,) * NUM_BASIC})
    with pytest.raises(ValueError):
        make_sample(tmp_path, counts={"Training": (1, 2, 3)})


@pytest.mark.skipif(not (SAMPLE_DIR / CSV_NAME).exists(), reason="bundled sample not generated")
def test_bundled_sample_matches_defaults_and_size():
    total = sum(f.stat().st_size for f in SAMPLE_DIR.rglob("*") if f.is_file())
    assert total < SIZE_LIMIT
    frame = pd.read_csv(SAMPLE_DIR / CSV_NAME, usecols=["emotion", "Usage"])
    for usage, per_class in DEFAULT_COUNTS.items():
        labels = frame.loc[frame["Usage"] == usage, "emotion"]
        assert np.bincount(labels, minlength=NUM_BASIC).tolist() == list(per_class)
    assert len(pd.read_csv(SAMPLE_DIR / LANDMARKS_NAME)) == len(frame)
