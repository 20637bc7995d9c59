"""``utils.predict`` on photos it has never seen: a group photo drawn with ``utils.data.sample`` (several faces,
grey and colour, small and large, rotated by its EXIF tag), a photo without a face, an unreadable file in a
folder, and a short video."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from utils.data.sample import draw_face
from utils.predict import Predictor, annotate, main, predict_image, predict_video, read_image

PLACES = [(20, 30), (150, 40), (280, 25)]  # top-left corners of the three 96-px faces


@pytest.fixture(scope="module")
def run_dir(finished_runs):
    return finished_runs["supervised"].run_dir  # read only: predictions go to --out


@pytest.fixture(scope="module")
def predictor(run_dir):
    return Predictor(run_dir)


def group_photo() -> np.ndarray:
    """Three synthetic faces (happy, surprise, neutral) on a 400 x 170 grey background."""
    rng = np.random.default_rng(3)
    canvas = np.full((170, 400), 128, dtype=np.uint8)
    for (x, y), expression in zip(PLACES, (3, 5, 6)):
        face, _ = draw_face(expression, rng, size=96)
        canvas[y : y + 96, x : x + 96] = face
    return canvas


def centres(faces):
    return sorted((f.box[0] + f.box[2] / 2, f.box[1] + f.box[3] / 2) for f in faces)


def test_every_face_of_a_group_photo_is_found_and_classified(predictor):
    faces = predict_image(group_photo(), predictor=predictor)
    assert len(faces) == 3
    for (cx, cy), (x, y) in zip(centres(faces), PLACES):
        assert abs(cx - (x + 48)) < 20 and abs(cy - (y + 48)) < 25  # each box on its face
    for face in faces:
        assert face.face.shape == (48, 48) and np.isfinite(face.landmarks).all()
        assert sum(face.probabilities.values()) == pytest.approx(1.0, abs=1e-5) and len(face.top()) == 3


def test_colour_and_large_photos_give_boxes_in_the_originals_pixels(predictor):
    grey = group_photo()
    colour = np.stack([grey, (grey * 0.9).astype(np.uint8), (grey * 0.8).astype(np.uint8)], axis=-1)
    large = cv2.resize(colour, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)  # 1600 px: shrunk to detect
    small_faces, large_faces = predict_image(colour, predictor=predictor), predict_image(large, predictor=predictor)
    assert len(small_faces) == len(large_faces) == 3
    for (a, b), (c, d) in zip(centres(small_faces), centres(large_faces)):
        assert abs(4 * a - c) < 40 and abs(4 * b - d) < 40


def test_exif_orientation_is_honoured(predictor, tmp_path):
    upright = Image.fromarray(group_photo())
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    upright.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, quality=95)
    assert read_image(path).shape == (170, 400)
    assert len(predict_image(path, predictor=predictor)) == 3


def test_a_folder_with_a_faceless_photo_and_an_unreadable_file(run_dir, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(group_photo()).save(folder / "group.png")
    Image.fromarray(np.full((120, 160), 90, dtype=np.uint8)).save(folder / "wall.png")
    (folder / "broken.jpg").write_text("not an image")
    out = tmp_path / "out"
    assert main([str(folder), "--run", str(run_dir), "--out", str(out)]) == 1  # one file failed
    printed = capsys.readouterr()
    assert "broken.jpg: cannot be read as an image" in printed.err
    assert "wall.png: 0 face(s) (no face found)" in printed.out and "group.png: 3 face(s)" in printed.out
    group = json.loads((out / "group.json").read_text())
    assert len(group["faces"]) == 3 and group["size"] == [400, 170]
    assert json.loads((out / "wall.json").read_text())["faces"] == []
    annotated = cv2.imread(str(out / "group.annotated.png"))
    assert annotated.shape == (170, 400, 3) and (annotated != cv2.cvtColor(group_photo(), cv2.COLOR_GRAY2BGR)).any()
    assert main([str(folder / "wall.png"), "--run", str(run_dir), "--out", str(out)]) == 0  # no face is no error


def test_a_video_gets_a_row_per_sampled_frame_and_face(predictor, tmp_path):
    frame = cv2.cvtColor(group_photo(), cv2.COLOR_GRAY2BGR)
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (400, 170))
    for _ in range(20):  # two seconds
        writer.write(frame)
    writer.release()
    result = predict_video(path, predictor, tmp_path / "out", fps=2.0)
    assert result["frames"] == 4 and result["faces"] == 12  # frames 0, 5, 10, 15; three faces each
    with open(tmp_path / "out" / "clip.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["frame"]) for r in rows[::3]] == [0, 5, 10, 15] and rows[0]["expression"] in predictor.classes
    assert (tmp_path / "out" / "clip.annotated.mp4").stat().st_size > 0


def test_annotate_draws_on_a_copy():
    image = group_photo()
    before = image.copy()
    annotate(image, [])
    assert np.array_equal(image, before)
