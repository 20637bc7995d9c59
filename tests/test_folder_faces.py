"""The unlabelled-faces reader (:func:`utils.data.folder.read_faces`) on real image files built in ``tmp_path``:
a plain tree, AffectNet's automatically annotated part and VGGFace2."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from PIL import Image

from utils.data.base import UNLABELLED, DatasetError
from utils.data.folder import read_faces

HEADER = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"


def save_image(path, size=(48, 48), mode="L", value=100):
    """A real image file of ``size`` (width, height); the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = size[::-1] if mode == "L" else (*size[::-1], 3)
    Image.fromarray(np.full(shape, value, dtype=np.uint8), mode).save(path)
    return path


def landmarks_text(value):
    """68 points: x = value + i, y = 2 * value + i."""
    return ";".join(f"{value + i:.2f};{2 * value + i:.2f}" for i in range(68))


def automatic_line(name, expression, marks, box=(10, 12, 100, 110)):
    return f"{name},{box[0]},{box[1]},{box[2]},{box[3]},{marks},{expression},-0.5,0.25"


@pytest.fixture
def tree(tmp_path):
    """A nested folder of JPEG and PNG faces of several sizes, grey and RGB, with files that are not faces."""
    save_image(tmp_path / "b" / "deep" / "er" / "face3.PNG", (300, 300), "RGB")
    save_image(tmp_path / "a" / "face1.jpg", (48, 48))
    save_image(tmp_path / "a" / "face2.jpeg", (120, 90), "RGB")
    save_image(tmp_path / "top.png", (64, 32))
    (tmp_path / "a" / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not a face")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"\0\1")
    save_image(tmp_path / ".thumbnails" / "hidden.jpg")  # hidden folder: not looked at
    save_image(tmp_path / "b" / "._face3.png")  # macOS resource file: hidden
    return tmp_path


def test_plain_tree_lists_images_sorted_and_reports_empty_file(tree):
    with pytest.warns(UserWarning, match="empty.jpg"):
        ds = read_faces(tree)
    assert ds.name == "faces" and ds.layout == "folder" and ds.num_classes == 7
    assert list(ds.table["path"]) == ["a/face1.jpg", "a/face2.jpeg", "b/deep/er/face3.PNG", "top.png"]
    assert list(ds.table.columns) == ["split", "label", "source", "path"]
    assert set(ds.table["split"]) == {"unlabelled"} and (ds.labels == UNLABELLED).all()
    assert [(p.where, p.reason) for p in ds.problems] == [("a/empty.jpg", "empty file (0 bytes)")]
    assert ds.landmarks is None and ds.root == tree
    shapes = [ds.image(i).shape for i in range(len(ds))]
    assert shapes == [(48, 48), (90, 120), (300, 300), (32, 64)]
    assert ds.image(1, "rgb").shape == (90, 120, 3)
    counts = ds.counts()
    assert list(counts) == ["unlabelled"] and counts["unlabelled"]["unlabelled"] == 4
    assert sum(v for k, v in counts["unlabelled"].items() if k != "unlabelled") == 0  # no class counted

    with pytest.warns(UserWarning):
        again = read_faces(str(tree))
    assert again.table.equals(ds.table)  # deterministic


def test_max_images_keeps_first_in_path_order(tree):
    with pytest.warns(UserWarning, match="empty.jpg"):  # a/empty.jpg sorts first, is skipped, not counted
        ds = read_faces(tree, max_images=2)
    assert list(ds.table["path"]) == ["a/face1.jpg", "a/face2.jpeg"]
    with pytest.raises(ValueError, match="max_images"):
        read_faces(tree, max_images=0)


def test_strict_raises_on_empty_file(tree):
    with pytest.raises(DatasetError, match=r"a/empty\.jpg: empty file \(0 bytes\).*strict"):
        read_faces(tree, strict=True)


def test_nothing_readable_names_path_and_what_is_expected(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match="does not exist") as e:
        read_faces(missing)
    assert str(missing) in str(e.value) and ".jpg" in str(e.value)

    file = tmp_path / "faces.jpg"
    save_image(file)
    with pytest.raises(DatasetError, match="is not a folder"):
        read_faces(file)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no image file found") as e:
        read_faces(empty)
    assert str(empty) in str(e.value) and "any depth" in str(e.value) and "VGGFace2" in str(e.value)

    texts = tmp_path / "texts"
    (texts / "sub").mkdir(parents=True)
    (texts / "a.txt").write_text("x")
    (texts / "sub" / "b.csv").write_text("y")
    with pytest.raises(DatasetError, match="no image file found") as e:
        read_faces(texts)
    assert str(texts) in str(e.value)


@pytest.mark.parametrize("gzipped", [False, True])
def test_affectnet_automatic_part(tmp_path, gzipped):
    lines = [
        HEADER,
        automatic_line("10/a.jpg", 1, landmarks_text(3.0)),  # line 2
        automatic_line("10/b.jpg", 10, "1;2;3"),  # line 3: malformed landmarks
        automatic_line("11/missing.jpg", 4, landmarks_text(1.0)),  # line 4: no image
    ]
    text = "\n".join(lines) + "\n"
    if gzipped:
        with gzip.open(tmp_path / "automatically_annotated.csv.gz", "wt") as f:
            f.write(text)
    else:
        (tmp_path / "automatically_annotated.csv").write_text(text)
    save_image(tmp_path / "Automatically_Annotated_Images" / "10" / "a.jpg", (120, 90), "RGB")
    save_image(tmp_path / "Automatically_Annotated_Images" / "10" / "b.jpg")
    save_image(tmp_path / "Automatically_Annotated_Images" / "12" / "unlisted.jpg")  # not in the CSV: not read

    with pytest.warns(UserWarning, match="1 bad lines"):
        ds = read_faces(tmp_path)
    assert ds.layout == "affectnet-automatic" and ds.name == "faces"
    assert list(ds.table["path"]) == [
        "Automatically_Annotated_Images/10/a.jpg",
        "Automatically_Annotated_Images/10/b.jpg",
    ]
    assert (ds.labels == UNLABELLED).all() and set(ds.table["split"]) == {"unlabelled"}
    assert list(ds.table["auto_expression"]) == [1, 10]  # AffectNet's numbers, kept for information only
    assert ds.table.loc[0, ["box_x", "box_y", "box_w", "box_h"]].tolist() == [10, 12, 100, 110]
    csv_name = "automatically_annotated.csv" + (".gz" if gzipped else "")
    assert list(ds.table["source"]) == [f"{csv_name} line 2", f"{csv_name} line 3"]
    assert [p.where for p in ds.problems] == [f"{csv_name} line 4"]
    assert "missing.jpg" in ds.problems[0].reason and "not found" in ds.problems[0].reason

    assert ds.landmarks.shape == (2, 68, 2) and ds.landmarks.dtype == np.float32
    np.testing.assert_allclose(ds.landmarks[0, 0], [3.0, 6.0])
    np.testing.assert_allclose(ds.landmarks[0, 67], [70.0, 73.0])
    assert np.isnan(ds.landmarks[1]).all() and ds.info["landmarks_missing"] == 1
    assert ds.image(0).shape == (90, 120)
    assert ds.counts()["unlabelled"]["unlabelled"] == 2

    with pytest.raises(DatasetError, match="line 4.*strict"):
        read_faces(tmp_path, strict=True)


def test_affectnet_automatic_images_relative_to_root(tmp_path):
    lines = [HEADER, automatic_line("10/a.jpg", 0, landmarks_text(0.0))]
    (tmp_path / "automatically_annotated.csv").write_text("\n".join(lines))
    save_image(tmp_path / "10" / "a.jpg")
    ds = read_faces(tmp_path)
    assert list(ds.table["path"]) == ["10/a.jpg"] and not ds.problems


def test_vggface2_layout_has_subjects(tmp_path):
    save_image(tmp_path / "train" / "n000001" / "0001_01.jpg", (120, 90), "RGB")
    save_image(tmp_path / "train" / "n000001" / "0002_01.jpg", (80, 100), "RGB")
    save_image(tmp_path / "train" / "n000002" / "0001_01.jpg", (60, 60), "RGB")
    save_image(tmp_path / "test" / "n000003" / "0001_02.jpg", (50, 70), "RGB")
    (tmp_path / "bb_landmark").mkdir()
    (tmp_path / "bb_landmark" / "loose_bb_train.csv").write_text("NAME_ID,X,Y,W,H\n")
    (tmp_path / "train_list.txt").write_text("n000001/0001_01.jpg\n")

    ds = read_faces(tmp_path)
    assert ds.layout == "vggface2" and not ds.problems
    assert list(ds.table["path"]) == [
        "test/n000003/0001_02.jpg",
        "train/n000001/0001_01.jpg",
        "train/n000001/0002_01.jpg",
        "train/n000002/0001_01.jpg",
    ]
    assert list(ds.table["subject"]) == ["n000003", "n000001", "n000001", "n000002"]
    assert set(ds.table["split"]) == {"unlabelled"} and (ds.labels == UNLABELLED).all()
    assert ds.counts() == {"unlabelled": {**dict.fromkeys(ds.classes, 0), "unlabelled": 4}}
    assert ds.image(3, "rgb").shape == (60, 60, 3)


def test_linked_folders_are_listed_once(tmp_path):
    save_image(tmp_path / "a" / "x.jpg")
    try:
        (tmp_path / "a" / "up").symlink_to(tmp_path, target_is_directory=True)  # a loop
        (tmp_path / "b").symlink_to(tmp_path / "a", target_is_directory=True)  # a second name for a/
    except OSError:
        pytest.skip("no symbolic links here")
    assert list(read_faces(tmp_path).table["path"]) == ["a/x.jpg"]
