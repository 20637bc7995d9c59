"""What notebooks 01 and 07 call instead of holding logic: the preprocessing steps of single faces and their
figure, the summaries printed, the synthetic group photo, an uploaded photo, the photo-and-probabilities figure."""

from __future__ import annotations

import dataclasses
import io

import cv2
import numpy as np
import pytest
from PIL import Image

from utils.data import load_dataset_or_sample
from utils.data.faces import (
    FaceConfig,
    preparation_steps,
    preparation_summary,
    reading_summary,
    synthetic_group_photo,
    uploaded_image,
)
from utils.evaluation import plots


@pytest.fixture(scope="module")
def dataset():
    ds, on_sample = load_dataset_or_sample("fer2013", "x", quick=True)
    assert on_sample
    return ds


@pytest.mark.parametrize("ships_landmarks", [True, False])
def test_preparation_steps_show_each_detector_the_landmarks_and_the_face_kept(dataset, ships_landmarks):
    ds = dataset if ships_landmarks else dataclasses.replace(dataset, landmarks=None)
    steps = preparation_steps(ds, FaceConfig(), count=3, seed=1)
    assert len(steps) == 3 and [s["row"] for s in steps] == sorted(s["row"] for s in steps)
    for step in steps:
        assert set(step["boxes"]) == {"haar", "dlib"}
        assert step["image"].shape == (48, 48) and step["face"].shape == (48, 48)
        assert step["landmarks"].shape == (68, 2) and np.isfinite(step["landmarks"]).all()
        assert step["face_landmarks"].shape == (68, 2)
        assert step["label"] in ds.classes
        if ships_landmarks:
            np.testing.assert_allclose(step["landmarks"], ds.landmarks[step["row"]])
    assert any(s["boxes"]["dlib"] is not None for s in steps)  # dlib at 2x finds nearly every sample face
    fig = plots.preparation_steps(steps)
    assert len(fig.axes) == 6


def test_the_summaries_name_what_was_skipped(dataset, sample):
    assert reading_summary(dataset) == "0 bad rows or files skipped"
    from utils.data.base import Problem

    bad = dataclasses.replace(dataset, problems=[Problem("row 7", "2303 pixels")], excluded={"not a face": 3})
    assert reading_summary(bad).splitlines() == [
        "1 bad rows or files skipped",
        "   row 7: 2303 pixels",
        "excluded by the dataset's own rules: 3 (not a face)",
    ]
    lines = preparation_summary(sample).splitlines()
    assert lines[0].startswith("PreparedFaces('sample', 720 images")
    assert lines[1].startswith("face detected: ") and lines[2] == "0 unreadable images skipped"


def test_the_group_photo_has_a_face_per_expression_with_room_for_labels():
    import dlib

    photo = synthetic_group_photo((3, 5, 6), seed=3, size=96)
    assert photo.dtype == np.uint8 and photo.shape == (3 * 96, 3 * 96 + 4 * 32)
    found = dlib.get_frontal_face_detector()(cv2.resize(photo, None, fx=2, fy=2), 0)
    assert len(found) == 3
    assert np.array_equal(photo, synthetic_group_photo((3, 5, 6), seed=3, size=96))  # the same every time


def test_an_uploaded_photo_is_read_from_either_widget_version():
    buffer = io.BytesIO()
    Image.fromarray(np.full((5, 7, 3), 200, np.uint8)).save(buffer, format="PNG")
    content = buffer.getvalue()
    assert uploaded_image(()) is None and uploaded_image({}) is None
    new = uploaded_image(({"name": "a.png", "content": memoryview(content)},))  # ipywidgets 8
    old = uploaded_image({"a.png": {"content": content}})  # ipywidgets 7
    assert new.shape == old.shape == (5, 7, 3) and new.dtype == np.uint8


def test_the_photo_figure_has_the_photo_and_a_bar_per_face_and_class():
    from utils.predict import Face

    classes = ["angry", "happy", "neutral"]
    photo = np.full((120, 200), 128, np.uint8)
    faces = [
        Face((10, 20, 60, 60), "dlib", np.zeros((48, 48), np.uint8), np.zeros((68, 2)), dict(zip(classes, p)))
        for p in ([0.1, 0.8, 0.1], [0.2, 0.2, 0.6])
    ]
    fig = plots.photo_predictions(photo, faces, classes)
    image, bars = fig.axes
    assert len(bars.patches) == 6
    assert [t.get_text() for t in bars.get_yticklabels()] == classes
    empty = plots.photo_predictions(photo, [], classes)
    assert "no face found" in [t.get_text() for t in empty.axes[1].texts]
