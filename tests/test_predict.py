"""``utils.predict`` on photos it has never seen: a group photo drawn with ``utils.data.sample`` (several faces,
grey and colour, small and large, rotated by its EXIF tag), a photo without a face, an unreadable file in a
folder, and a short video; a 2 x 3 montage numbered row by row, its labels off the other faces."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from utils.data.sample import draw_face
from utils.predict import (
    Face,
    Predictor,
    annotate,
    label_rectangles,
    main,
    predict_image,
    predict_video,
    read_image,
    reading_order,
)

PLACES = [(20, 30), (150, 40), (280, 25)]  # top-left corners of the three 96-px faces
# a 2 x 3 montage of 96-px faces, row by row; rows and columns jittered by a few pixels
MONTAGE = [(40, 70), (208, 78), (370, 64), (46, 238), (204, 230), (374, 244)]


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


# ------------------------------------------------------------------------------------------ reading order


def montage() -> np.ndarray:
    """Six synthetic faces in two rows of three on a 510 x 360 grey background, with room above each row."""
    rng = np.random.default_rng(5)
    canvas = np.full((360, 510), 128, dtype=np.uint8)
    for (x, y), expression in zip(MONTAGE, (3, 5, 6, 0, 4, 1)):
        canvas[y : y + 96, x : x + 96] = draw_face(expression, rng, size=96)[0]
    return canvas


def test_reading_order_groups_rows_then_reads_left_to_right():
    # a 2 x 3 grid given column by column, its rows jittered (tops 5-18 and 112-125 px, heights 76-84)
    grid = [(20, 12, 80, 80), (20, 125, 80, 76), (150, 18, 84, 84), (150, 112, 80, 80), (280, 5, 78, 78)]
    grid.append((281, 120, 80, 80))
    assert reading_order(grid) == [0, 2, 4, 1, 3, 5]
    assert reading_order(grid[::-1]) == [5, 3, 1, 4, 2, 0]  # the input's order does not matter
    # overlapping by exactly half of the smaller box is not enough: two rows, the lower one's box first in x
    assert reading_order([(100, 0, 100, 100), (0, 50, 100, 100)]) == [0, 1]
    assert reading_order([(100, 0, 100, 100), (0, 49, 100, 100)]) == [1, 0]  # 51 px: one row, left first
    # a small face beside a large one is in its row when more than half of its height overlaps the large one's
    assert reading_order([(300, 10, 200, 200), (0, 150, 40, 40), (0, 220, 40, 40)]) == [1, 0, 2]
    assert reading_order([]) == []


def test_a_montage_is_numbered_row_by_row(predictor):
    image = montage()
    faces = predict_image(image, predictor=predictor)
    assert len(faces) == 6
    for k, (face, (x, y)) in enumerate(zip(faces, MONTAGE), start=1):  # face 1 top left ... face 6 bottom right
        cx, cy = face.box[0] + face.box[2] / 2, face.box[1] + face.box[3] / 2
        assert abs(cx - (x + 48)) < 20 and abs(cy - (y + 48)) < 25, f"face {k} is not montage face {k}"


def test_labels_go_above_their_face_and_off_the_others(predictor):
    image = montage()
    faces = predict_image(image, predictor=predictor)
    rectangles = label_rectangles(faces, image.shape)
    assert len(rectangles) == len(faces) == 6
    for k, ((x0, y0, x1, y1), face) in enumerate(zip(rectangles, faces)):
        assert 0 <= x0 < x1 <= image.shape[1] and 0 <= y0 < y1 <= image.shape[0]
        assert y1 <= face.box[1], f"face {k}'s label is not above it"  # there is room above every face
        for j, other in enumerate(faces):
            if j != k:
                assert not overlaps((x0, y0, x1, y1), other.box), f"face {k}'s label covers face {j}"
    assert not (annotate(image, faces) == cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)).all()


def overlaps(rectangle, box) -> bool:
    x0, y0, x1, y1 = rectangle
    bx, by, bw, bh = box
    return x0 < bx + bw and bx < x1 and y0 < by + bh and by < y1


def face_at(box) -> Face:
    probabilities = {"happy": 0.8, "surprise": 0.15, "neutral": 0.05}
    return Face(box, "dlib", np.zeros((48, 48), np.uint8), np.zeros((68, 2), np.float32), probabilities)


def test_labels_go_below_without_room_above_and_avoid_other_faces():
    shape = (300, 400)
    # at the top edge: below; with room: above
    top, free = face_at((10.0, 2.0, 80.0, 80.0)), face_at((250.0, 150.0, 80.0, 80.0))
    (_, y0, _, _), (_, _, _, y1) = label_rectangles([top, free], shape)
    assert y0 >= 82 and y1 <= 150
    # a face close under another: its label goes below rather than over the upper face; the upper face's label
    # cannot go below (the lower face) nor fully above (the image's edge), so it stays off the lower face
    upper, lower = face_at((20.0, 10.0, 80.0, 60.0)), face_at((20.0, 80.0, 80.0, 80.0))
    first, second = label_rectangles([upper, lower], shape)
    assert second[1] >= 160 and not overlaps(second, upper.box)
    assert not overlaps(first, lower.box) and first[1] >= 0
