"""Dataset readers: each dataset written in its own format and numbering, read back in canonical labels.

Canonical ids (utils.data.labels): 0 angry, 1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral, 7 contempt.
The expected labels below are written out by hand from each dataset's documentation, not computed with
the maps under test.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from PIL import Image

from utils.data import DatasetError, load_dataset, read_image
from utils.data.affectnet import read_affectnet
from utils.data.ckplus import read_ckplus
from utils.data.fer2013 import read_fer2013, read_ferplus
from utils.data.jaffe import read_jaffe
from utils.data.rafdb import read_rafdb

ANGRY, DISGUST, FEAR, HAPPY, SAD, SURPRISE, NEUTRAL, CONTEMPT = range(8)


# ------------------------------------------------------------------------------------------------ helpers


def save_image(path, value=128, size=(24, 24)):
    """A small grey image file; the format follows the suffix (jpg, png, tiff)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, dtype=np.uint8)).save(path)
    return path


def write_text(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def pixels(value):
    return " ".join([str(value)] * 2304)


def fer_csv(path, rows, header=("emotion", "pixels", "Usage"), value_prefix=""):
    """FER2013-style CSV; rows are (emotion, Usage, pixel string); columns in ``header`` order."""
    names = [h.strip() for h in header]
    lines = [",".join(header)]
    for emotion, usage, pix in rows:
        values = {"emotion": str(emotion), "Usage": usage, "pixels": pix}
        lines.append(",".join((value_prefix if i else "") + values[n] for i, n in enumerate(names)))
    return write_text(path, "\n".join(lines) + "\n")


# Seven rows covering all FER2013 labels; row i has pixel value 10 * i.
FER_ROWS = [
    (0, "Training"),
    (3, "Training"),
    (6, "Training"),
    (5, "PublicTest"),
    (1, "PublicTest"),
    (2, "PrivateTest"),
    (4, "PrivateTest"),
]


def fer_rows(rows=FER_ROWS):
    return [(e, u, pixels(10 * i)) for i, (e, u) in enumerate(rows)]


# ------------------------------------------------------------------------------------------------ FER2013


def test_fer2013_csv_usage_to_splits_and_labels(tmp_path):
    ds = read_fer2013(fer_csv(tmp_path / "fer2013.csv", fer_rows()))
    assert ds.num_classes == 7
    assert ds.split_sizes() == {"train": 3, "val": 2, "test": 2}
    assert list(ds.table["split"]) == ["train"] * 3 + ["val"] * 2 + ["test"] * 2
    assert list(ds.labels) == [ANGRY, HAPPY, NEUTRAL, SURPRISE, DISGUST, FEAR, SAD]
    assert ds.pixels.shape == (7, 48, 48) and ds.pixels.dtype == np.uint8
    assert [int(ds.pixels[i, 0, 0]) for i in range(7)] == [0, 10, 20, 30, 40, 50, 60]
    assert ds.problems == []


def test_fer2013_icml_face_data_with_spaces_in_header(tmp_path):
    path = fer_csv(
        tmp_path / "icml_face_data.csv", fer_rows(), header=("emotion", " Usage", " pixels"), value_prefix=" "
    )
    ds = read_fer2013(tmp_path)  # the folder holding it
    assert ds.split_sizes() == {"train": 3, "val": 2, "test": 2}
    assert list(ds.labels) == [ANGRY, HAPPY, NEUTRAL, SURPRISE, DISGUST, FEAR, SAD]
    assert int(ds.pixels[3, 10, 10]) == 30
    assert read_fer2013(path).split_sizes() == ds.split_sizes()


def test_fer2013_train_and_test_csv(tmp_path):
    fer_csv(tmp_path / "train.csv", [(3, "", pixels(1)), (4, "", pixels(2))], header=("emotion", "pixels"))
    fer_csv(tmp_path / "test.csv", [(5, "", pixels(3))], header=("emotion", "pixels"))
    ds = read_fer2013(tmp_path)
    assert ds.split_sizes() == {"train": 2, "test": 1}
    assert list(ds.labels) == [HAPPY, SAD, SURPRISE]


def test_fer2013_gzipped_and_in_subfolder(tmp_path):
    fer_csv(tmp_path / "a" / "fer2013.csv.gz", fer_rows())
    assert read_fer2013(tmp_path / "a").split_sizes() == {"train": 3, "val": 2, "test": 2}
    assert read_fer2013(tmp_path / "a" / "fer2013.csv.gz").split_sizes() == {"train": 3, "val": 2, "test": 2}
    fer_csv(tmp_path / "b" / "fer2013" / "fer2013.csv", fer_rows())
    ds = read_fer2013(tmp_path / "b")
    assert list(ds.labels) == [ANGRY, HAPPY, NEUTRAL, SURPRISE, DISGUST, FEAR, SAD]


def test_fer2013_without_private_test_has_no_test_split(tmp_path):
    ds = read_fer2013(fer_csv(tmp_path / "fer2013.csv", fer_rows(FER_ROWS[:5])))
    assert ds.splits == ["train", "val"]


def test_fer2013_kaggle_unlabelled_test_csv_is_a_clear_error(tmp_path):
    path = write_text(tmp_path / "test.csv", "pixels\n" + pixels(0) + "\n")
    with pytest.raises(DatasetError, match="emotion") as err:
        read_fer2013(path)
    assert "test.csv" in str(err.value) and "unlabelled" in str(err.value)
    with pytest.raises(DatasetError, match="unlabelled"):
        read_fer2013(tmp_path)  # a folder holding only Kaggle's test.csv


def test_fer2013_kaggle_folder_skips_unlabelled_test_csv(tmp_path):
    fer_csv(tmp_path / "train.csv", [(3, "", pixels(1)), (0, "", pixels(2))], header=("emotion", "pixels"))
    write_text(tmp_path / "test.csv", "pixels\n" + pixels(0) + "\n")
    with pytest.warns(UserWarning, match="test.csv"):
        ds = read_fer2013(tmp_path)
    assert ds.split_sizes() == {"train": 2}
    assert len(ds.problems) == 1 and "test.csv" in str(ds.problems[0])
    with pytest.raises(DatasetError, match="test.csv"):
        read_fer2013(tmp_path, strict=True)


def test_fer2013_landmarks_beside_csv(tmp_path):
    rows = fer_rows(FER_ROWS[:3])
    rows[1] = (9, "Training", pixels(0))  # a bad row: landmarks must stay aligned with the good rows
    fer_csv(tmp_path / "fer2013.csv", rows)
    good = " ".join(f"{i} {i + 0.5}" for i in range(68))
    write_text(tmp_path / "fer2013_landmarks.csv", f"landmarks\n{good}\n{good}\n1 2 x\n")
    with pytest.warns(UserWarning, match="1 bad rows"):
        ds = read_fer2013(tmp_path)
    assert ds.landmarks.shape == (2, 68, 2)
    np.testing.assert_allclose(ds.landmarks[0, 67], [67, 67.5])
    assert np.isnan(ds.landmarks[1]).all()  # non-numeric landmarks: NaN, not a crash


def test_registry_names(tmp_path):
    save_image(tmp_path / "DATASET" / "train" / "1" / "a.jpg")
    assert load_dataset("RAF-DB", tmp_path).name == "rafdb"
    assert load_dataset("raf", tmp_path).labels.tolist() == [SURPRISE]
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("mnist", tmp_path)


def test_fer2013_image_folders(tmp_path):
    save_image(tmp_path / "train" / "angry" / "a.jpg")
    save_image(tmp_path / "train" / "surprise" / "b.jpg")
    save_image(tmp_path / "train" / "fear" / "c.jpg")
    save_image(tmp_path / "test" / "neutral" / "d.jpg")
    save_image(tmp_path / "test" / "happy" / "e.jpg")
    ds = read_fer2013(tmp_path)
    labels = dict(zip(ds.table["path"], ds.labels))
    assert labels == {
        "train/angry/a.jpg": ANGRY,
        "train/fear/c.jpg": FEAR,
        "train/surprise/b.jpg": SURPRISE,
        "test/happy/e.jpg": HAPPY,
        "test/neutral/d.jpg": NEUTRAL,
    }
    assert ds.split_sizes() == {"train": 3, "test": 2}
    assert ds.image(0).shape == (24, 24)


def test_fer2013_bad_rows_reported_with_line_numbers(tmp_path):
    rows = fer_rows()
    rows[1] = (3, "Training", " ".join(["1"] * 2303))  # line 3: too few pixels
    rows[2] = (6, "Training", pixels(0).replace("0", "x", 1))  # line 4: non-numeric
    rows[3] = (7, "PublicTest", pixels(0))  # line 5: unknown label
    rows[4] = (1, "Validation", pixels(0))  # line 6: unknown Usage
    path = fer_csv(tmp_path / "fer2013.csv", rows)
    with pytest.warns(UserWarning, match="4 bad rows"):
        ds = read_fer2013(path)
    assert len(ds) == 3 and len(ds.problems) == 4
    text = [str(p) for p in ds.problems]
    assert "line 3" in text[0] and "2303" in text[0]
    assert "line 4" in text[1] and "integer" in text[1]
    assert "line 5" in text[2] and "label" in text[2]
    assert "line 6" in text[3] and "Usage" in text[3]
    with pytest.raises(DatasetError, match="fer2013.csv"):
        read_fer2013(path, strict=True)


def test_nothing_readable_names_path_and_layouts(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for reader, layout_word in [
        (read_fer2013, "fer2013.csv"),
        (read_rafdb, "list_patition_label.txt"),
        (read_ckplus, "CK+48"),
        (read_affectnet, "training.csv"),
        (read_jaffe, "KA.AN1.39.tiff"),
    ]:
        with pytest.raises(DatasetError) as err:
            reader(empty)
        assert str(empty) in str(err.value) and layout_word in str(err.value), reader.__name__
    with pytest.raises(DatasetError, match="does not exist"):
        read_rafdb(tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------ FERPlus

# Vote columns in fer2013new.csv order: neutral happiness surprise sadness anger disgust fear contempt unknown NF
FERPLUS_VOTES = [
    ("Training", "fer0.png", [0, 8, 1, 1, 0, 0, 0, 0, 0, 0]),  # 0: single votes dropped -> happy
    ("Training", "fer1.png", [5, 3, 0, 0, 2, 0, 0, 0, 0, 0]),  # 1: no majority (5 of 10 is not > half)
    ("Training", "fer2.png", [6, 0, 0, 0, 0, 0, 0, 0, 4, 0]),  # 2: neutral, with unknown votes
    ("Training", "fer3.png", [0, 0, 0, 0, 0, 0, 0, 0, 2, 8]),  # 3: not a face by votes
    ("Training", "fer4.png", [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]),  # 4: all single votes -> nothing left
    ("PublicTest", "fer5.png", [5, 3, 0, 0, 2, 0, 0, 0, 0, 0]),  # 5: as 1 but val: always majority
    ("PrivateTest", "fer6.png", [2, 0, 7, 0, 0, 0, 0, 1, 0, 0]),  # 6: surprise
    ("PublicTest", "fer7.png", [0, 0, 0, 0, 0, 0, 0, 9, 1, 0]),  # 7: contempt
    ("Training", "", [0, 10, 0, 0, 0, 0, 0, 0, 0, 0]),  # 8: no image name: not a face
    ("Training", "fer9.png", [4, 4, 0, 0, 2, 0, 0, 0, 0, 0]),  # 9: tie neutral/happy
    ("Training", "fer10.png", [5, 2, 2, 1, 0, 0, 0, 0, 0, 0]),  # 10: 30% threshold drops happy/surprise
]

# Expected targets by hand from the rules in ferplus_distribution's docstring, {row: {canonical id: p}}.
FERPLUS_EXPECTED = {
    "majority": {
        0: {HAPPY: 1.0},
        2: {NEUTRAL: 1.0},
        6: {SURPRISE: 1.0},
        7: {CONTEMPT: 1.0},
        10: {NEUTRAL: 1.0},
    },
    "probability": {
        0: {HAPPY: 1.0},
        1: {NEUTRAL: 5 / 8, HAPPY: 3 / 8},  # 5 + 3 = 8 >= 75% of 10
        2: {NEUTRAL: 1.0},  # stops at unknown, which is dropped
        6: {SURPRISE: 1.0},
        7: {CONTEMPT: 1.0},
        9: {NEUTRAL: 0.5, HAPPY: 0.5},
        10: {NEUTRAL: 5 / 9, HAPPY: 2 / 9, SURPRISE: 2 / 9},  # sadness's single vote dropped; total 9
    },
    "multi_target": {
        0: {HAPPY: 1.0},
        1: {NEUTRAL: 5 / 8, HAPPY: 3 / 8},  # both >= 30%
        2: {NEUTRAL: 1.0},  # unknown (40%) removed from the emotion distribution
        6: {SURPRISE: 1.0},
        7: {CONTEMPT: 1.0},
        9: {NEUTRAL: 0.5, HAPPY: 0.5},
        10: {NEUTRAL: 1.0},  # 2 of 9 < 30%
    },
}
FERPLUS_EXPECTED["crossentropy"] = FERPLUS_EXPECTED["probability"]
FERPLUS_LABELS = {0: HAPPY, 1: NEUTRAL, 2: NEUTRAL, 6: SURPRISE, 7: CONTEMPT, 9: NEUTRAL, 10: NEUTRAL}


def write_ferplus(folder):
    fer = [(3, usage, pixels(10 * i)) for i, (usage, _, _) in enumerate(FERPLUS_VOTES)]
    fer_csv(folder / "fer2013.csv", fer)
    header = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF"
    lines = [header] + [",".join([u, n] + [str(v) for v in votes]) for u, n, votes in FERPLUS_VOTES]
    write_text(folder / "fer2013new.csv", "\n".join(lines) + "\n")
    return folder


@pytest.mark.parametrize("mode", ["majority", "probability", "crossentropy", "multi_target"])
def test_ferplus_targets(tmp_path, mode):
    ds = read_ferplus(write_ferplus(tmp_path), mode=mode)
    expected = FERPLUS_EXPECTED[mode]
    rows = list(ds.table["row"])
    assert rows == sorted(expected)
    assert ds.num_classes == 8 and ds.soft_labels.shape == (len(rows), 8)
    for k, row in enumerate(rows):
        want = np.zeros(8)
        for label, p in expected[row].items():
            want[label] = p
        np.testing.assert_allclose(ds.soft_labels[k], want, atol=1e-6, err_msg=f"{mode} row {row}")
        assert ds.labels[k] == FERPLUS_LABELS[row]
        assert int(ds.pixels[k, 0, 0]) == 10 * row  # FERPlus row i is FER2013 row i
    split = dict(zip(rows, ds.table["split"]))
    assert split[6] == "test" and split[7] == "val" and split[0] == "train"
    unknown = sum(n for reason, n in ds.excluded.items() if "unknown" in reason)
    not_face = sum(n for reason, n in ds.excluded.items() if "image name" in reason)
    assert not_face == 1
    assert unknown == len(FERPLUS_VOTES) - 1 - len(expected)
    assert ds.problems == []


def test_ferplus_via_registry(tmp_path):
    ds = load_dataset("FER+", write_ferplus(tmp_path), mode="probability")
    assert ds.name == "ferplus" and ds.info["label_mode"] == "probability"


# ------------------------------------------------------------------------------------------------ RAF-DB


def write_rafdb_release(root):
    lines = [
        "train_00001.jpg 1",  # surprise
        "train_00002.jpg 4",  # happiness
        "train_00003.jpg 9",  # line 3: bad label
        "train_00004.jpg",  # line 4: malformed
        "train_00005.jpg 2",  # line 5: image missing
        "test_0001.jpg 6",  # anger
        "test_0002.jpg 7",  # neutral
        "test_0003.jpg 3",  # disgust
        "valid_0001.jpg 2",  # line 9: no train_/test_ prefix
        "train_00006.jpg 5",  # sadness
        "",
    ]
    write_text(root / "EmoLabel" / "list_patition_label.txt", "\n".join(lines))
    for name in ["train_00001", "train_00002", "train_00003", "train_00004", "train_00006"] + [
        "test_0001",
        "test_0002",
        "test_0003",
        "valid_0001",
    ]:
        save_image(root / "Image" / "aligned" / f"{name}_aligned.jpg", size=(100, 100))
    return root


def test_rafdb_release_layout(tmp_path):
    root = write_rafdb_release(tmp_path / "basic")
    with pytest.warns(UserWarning, match="4 bad lines"):
        ds = read_rafdb(root)
    assert ds.num_classes == 7
    labels = {name: (split, label) for name, split, label in zip(ds.table["source"], ds.table["split"], ds.labels)}
    assert labels == {
        "train_00001.jpg": ("train", SURPRISE),
        "train_00002.jpg": ("train", HAPPY),
        "train_00006.jpg": ("train", SAD),
        "test_0001.jpg": ("test", ANGRY),
        "test_0002.jpg": ("test", NEUTRAL),
        "test_0003.jpg": ("test", DISGUST),
    }
    assert ds.table["path"][0] == "Image/aligned/train_00001_aligned.jpg"
    assert ds.image(0).shape == (100, 100)
    problems = [str(p) for p in ds.problems]
    assert [p.split(":")[0] for p in problems] == [
        "list_patition_label.txt line 3",
        "list_patition_label.txt line 4",
        "list_patition_label.txt line 5",
        "list_patition_label.txt line 9",
    ]
    assert "label" in problems[0] and "not found" in problems[2]
    with pytest.raises(DatasetError, match="list_patition_label.txt"):
        read_rafdb(root, strict=True)
    with pytest.warns(UserWarning):
        assert len(read_rafdb(tmp_path)) == 6  # release in a basic/ subfolder


@pytest.mark.parametrize("prefix", ["DATASET", "."])
def test_rafdb_kaggle_folders(tmp_path, prefix):
    base = tmp_path / prefix
    expected = {}
    for split, folder, label in [
        ("train", "1", SURPRISE),
        ("train", "2", FEAR),
        ("train", "3", DISGUST),
        ("train", "4", HAPPY),
        ("test", "5", SAD),
        ("test", "6", ANGRY),
        ("test", "7", NEUTRAL),
    ]:
        save_image(base / split / folder / f"{split}_{folder}.jpg")
        expected[f"{split}_{folder}.jpg"] = (split, label)
    ds = read_rafdb(tmp_path)
    got = {p.rsplit("/", 1)[1]: (s, label) for p, s, label in zip(ds.table["path"], ds.table["split"], ds.labels)}
    assert got == expected
    assert (tmp_path / ds.table["path"][0]).is_file()


def test_rafdb_unknown_folder_reported(tmp_path):
    save_image(tmp_path / "DATASET" / "train" / "1" / "a.jpg")
    save_image(tmp_path / "DATASET" / "train" / "8" / "b.jpg")
    with pytest.warns(UserWarning, match="1 bad folders"):
        ds = read_rafdb(tmp_path)
    assert len(ds) == 1 and "train/8" in ds.problems[0].where
    with pytest.raises(DatasetError, match="8"):
        read_rafdb(tmp_path, strict=True)


# ------------------------------------------------------------------------------------------------ CK+


def test_ckplus48(tmp_path):
    root = tmp_path / "CK+48"
    files = {
        "anger/S010_004_00000017.png": (ANGRY, "S010"),
        "contempt/S138_008_00000007.png": (CONTEMPT, "S138"),
        "disgust/S005_001_00000009.png": (DISGUST, "S005"),
        "fear/S011_003_00000012.png": (FEAR, "S011"),
        "happy/S010_006_00000013.png": (HAPPY, "S010"),
        "sadness/S042_002_00000016.png": (SAD, "S042"),
        "surprise/S055_004_00000025.png": (SURPRISE, "S055"),
    }
    for rel in files:
        save_image(root / rel, size=(48, 48))
    save_image(root / "happy" / "face.png")  # name without subject
    with pytest.warns(UserWarning, match="1 bad files"):
        ds = read_ckplus(tmp_path)  # CK+48/ found inside
    assert ds.num_classes == 8 and ds.splits == ["all"]
    got = {p.split("/", 1)[1]: (label, s) for p, label, s in zip(ds.table["path"], ds.labels, ds.table["subject"])}
    assert got == files
    assert len(ds.problems) == 1 and "face.png" in str(ds.problems[0])
    with pytest.warns(UserWarning):
        assert read_ckplus(root).table["path"][0].startswith("anger/")
    with pytest.raises(DatasetError, match="face.png"):
        read_ckplus(root, strict=True)


# ------------------------------------------------------------------------------------------------ AffectNet

AFFECTNET_HEADER = (
    "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal"
)


def landmarks_text(value):
    """68 points: x = value + i, y = 2 * value + i."""
    return ";".join(f"{value + i:.2f};{2 * value + i:.2f}" for i in range(68))


def affectnet_line(name, expression, value=1.0, landmarks=None, box=(10, 12, 100, 110)):
    marks = landmarks_text(value) if landmarks is None else landmarks
    return f"{name},{box[0]},{box[1]},{box[2]},{box[3]},{marks},{expression},-0.5,0.25"


def test_affectnet_csv_layout(tmp_path):
    train = [
        affectnet_line("1/a.jpg", 6, value=3.0),  # line 2: anger
        affectnet_line("1/b.jpg", 7),  # line 3: contempt
        affectnet_line("2/c.jpg", 0),  # line 4: neutral
        affectnet_line("2/d.jpg", 1),  # line 5: happy
        affectnet_line("2/e.jpg", 8),  # line 6: none
        affectnet_line("2/f.jpg", 10),  # line 7: non-face
        affectnet_line("3/missing.jpg", 1),  # line 8: no image
        affectnet_line("3/g.jpg", 12),  # line 9: unknown expression
        affectnet_line("3/h.jpg", 3, landmarks="1;2;3"),  # line 10: surprise, bad landmarks
        "3/i.jpg,1,2",  # line 11: malformed
    ]
    validation = [  # validation.csv without a header line, as in some copies
        affectnet_line("4/j.jpg", 9),
        affectnet_line("4/k.jpg", 4),  # fear
        affectnet_line("4/l.jpg", 5),  # disgust
        affectnet_line("4/m.jpg", 2),  # sad
    ]
    write_text(tmp_path / "training.csv", "\n".join([AFFECTNET_HEADER] + train) + "\n")
    write_text(tmp_path / "validation.csv", "\n".join(validation) + "\n")
    for name in ["1/a", "1/b", "2/c", "2/d", "2/e", "2/f", "3/g", "3/h", "3/i", "4/j", "4/k", "4/l", "4/m"]:
        save_image(tmp_path / "Manually_Annotated_Images" / f"{name}.jpg")

    with pytest.warns(UserWarning, match="3 bad lines"):
        ds = read_affectnet(tmp_path)
    assert ds.num_classes == 8
    got = {p.split("/", 1)[1]: (s, label) for p, s, label in zip(ds.table["path"], ds.table["split"], ds.labels)}
    assert got == {
        "1/a.jpg": ("train", ANGRY),
        "1/b.jpg": ("train", CONTEMPT),
        "2/c.jpg": ("train", NEUTRAL),
        "2/d.jpg": ("train", HAPPY),
        "3/h.jpg": ("train", SURPRISE),
        "4/k.jpg": ("test", FEAR),
        "4/l.jpg": ("test", DISGUST),
        "4/m.jpg": ("test", SAD),
    }
    assert ds.excluded == {"none (expression 8)": 1, "non-face (expression 10)": 1, "uncertain (expression 9)": 1}
    where = [p.where for p in ds.problems]
    assert where == ["training.csv line 8", "training.csv line 9", "training.csv line 11"]
    assert "not found" in ds.problems[0].reason and "missing.jpg" in ds.problems[0].reason

    assert ds.landmarks.shape == (8, 68, 2) and ds.landmarks.dtype == np.float32
    a = list(ds.table["path"]).index("Manually_Annotated_Images/1/a.jpg")
    np.testing.assert_allclose(ds.landmarks[a, 0], [3.0, 6.0])
    np.testing.assert_allclose(ds.landmarks[a, 67], [70.0, 73.0])
    h = list(ds.table["path"]).index("Manually_Annotated_Images/3/h.jpg")
    assert np.isnan(ds.landmarks[h]).all()
    assert not np.isnan(np.delete(ds.landmarks, h, axis=0)).any()
    assert ds.table.loc[a, ["box_x", "box_y", "box_w", "box_h"]].tolist() == [10, 12, 100, 110]
    assert ds.image(a).shape == (24, 24)

    with pytest.raises(DatasetError, match="line 8"):
        read_affectnet(tmp_path, strict=True)


def test_affectnet_max_per_class(tmp_path):
    lines = [affectnet_line(f"1/h{i}.jpg", 1, value=i) for i in range(10)]  # 10 happy
    lines += [affectnet_line(f"1/s{i}.jpg", 2, value=100 + i) for i in range(3)]  # 3 sad
    write_text(tmp_path / "Manually_Annotated_file_lists" / "training.csv", "\n".join([AFFECTNET_HEADER] + lines))
    for i in range(10):
        save_image(tmp_path / "Manually_Annotated_Images" / "1" / f"h{i}.jpg")
    for i in range(3):
        save_image(tmp_path / "Manually_Annotated_Images" / "1" / f"s{i}.jpg")
    full = read_affectnet(tmp_path)
    assert full.split_sizes() == {"train": 13}
    ds = read_affectnet(tmp_path, max_per_class=4, seed=3)
    assert ds.counts()["train"]["happy"] == 4 and ds.counts()["train"]["sad"] == 3
    again = read_affectnet(tmp_path, max_per_class=4, seed=3)
    assert list(ds.table["path"]) == list(again.table["path"])
    # landmarks stay with their rows: x of point 0 is the row's value
    for path, marks in zip(ds.table["path"], ds.landmarks):
        name = path.rsplit("/", 1)[1]
        value = int(name[1:-4]) + (100 if name[0] == "s" else 0)
        assert marks[0, 0] == value
    others = {tuple(read_affectnet(tmp_path, max_per_class=4, seed=s).table["path"]) for s in range(5)}
    assert len(others) > 1  # the seed matters


def test_affectnet_class_folders(tmp_path):
    save_image(tmp_path / "train" / "happy" / "a.jpg")
    save_image(tmp_path / "train" / "6" / "b.jpg")  # AffectNet 6 = anger
    save_image(tmp_path / "train" / "0" / "c.jpg")  # AffectNet 0 = neutral
    save_image(tmp_path / "val" / "7" / "d.jpg")  # contempt
    save_image(tmp_path / "test" / "1" / "e.jpg")  # happy
    save_image(tmp_path / "test" / "sadness" / "f.jpg")
    save_image(tmp_path / "train" / "10" / "g.jpg")  # non-face: excluded
    ds = read_affectnet(tmp_path)
    got = {p.rsplit("/", 1)[1]: (s, label) for p, s, label in zip(ds.table["path"], ds.table["split"], ds.labels)}
    assert got == {
        "a.jpg": ("train", HAPPY),
        "b.jpg": ("train", ANGRY),
        "c.jpg": ("train", NEUTRAL),
        "d.jpg": ("val", CONTEMPT),
        "e.jpg": ("test", HAPPY),
        "f.jpg": ("test", SAD),
    }
    assert ds.excluded == {"non-face (expression 10)": 1}
    assert ds.problems == [] and ds.num_classes == 8


# ------------------------------------------------------------------------------------------------ JAFFE


def save_palette_tiff(path, index=1, grey=200):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.full((32, 32), index, dtype=np.uint8), mode="P")
    palette = [0, 0, 0] + [grey, grey, grey] + [0, 0, 0] * 254
    im.putpalette(palette)
    im.save(path)
    return path


def test_jaffe(tmp_path):
    root = tmp_path / "jaffe"
    palette = save_palette_tiff(root / "KA.AN1.39.tiff")
    save_image(root / "KA.NE2.27.tiff")
    save_image(root / "sub" / "KM.SU1.14.tiff")
    save_image(root / "YM.HA3.54.tiff")
    save_image(root / "NA.DI1.214.tiff")
    save_image(root / "TM.FE2.191.tiff")
    save_image(root / "UY.SA1.40.tiff")
    save_image(root / "KA.XX1.40.tiff")  # unknown code
    save_image(root / "photo.tiff")  # not a JAFFE name
    write_text(root / "README", "not an image")
    with pytest.warns(UserWarning, match="2 bad files"):
        ds = read_jaffe(tmp_path)
    assert ds.num_classes == 7 and ds.splits == ["all"]
    got = {p.rsplit("/", 1)[1]: (label, s) for p, label, s in zip(ds.table["path"], ds.labels, ds.table["subject"])}
    assert got == {
        "KA.AN1.39.tiff": (ANGRY, "KA"),
        "KA.NE2.27.tiff": (NEUTRAL, "KA"),
        "KM.SU1.14.tiff": (SURPRISE, "KM"),
        "YM.HA3.54.tiff": (HAPPY, "YM"),
        "NA.DI1.214.tiff": (DISGUST, "NA"),
        "TM.FE2.191.tiff": (FEAR, "TM"),
        "UY.SA1.40.tiff": (SAD, "UY"),
    }
    assert sorted(p.where.rsplit("/", 1)[1] for p in ds.problems) == ["KA.XX1.40.tiff", "photo.tiff"]
    with pytest.raises(DatasetError, match="KA.XX1.40.tiff"):
        read_jaffe(root, strict=True)

    # palette TIFF: decoded through its palette, not as raw indices
    assert Image.open(palette).mode == "P"
    gray = read_image(palette)
    assert gray.shape == (32, 32) and gray.dtype == np.uint8 and (gray == 200).all()
    rgb = read_image(palette, "rgb")
    assert rgb.shape == (32, 32, 3) and (rgb == 200).all()
    assert (ds.image(list(ds.table["path"]).index("jaffe/KA.AN1.39.tiff")) == 200).all()


# ------------------------------------------------------------------------------------------------ images


def test_unreadable_image_names_the_file(tmp_path):
    bad = write_text(tmp_path / "train" / "1" / "broken.jpg", "this is not a jpeg")
    with pytest.raises(DatasetError, match="broken.jpg"):
        read_image(bad)
    ds = read_rafdb(tmp_path)  # listed (readers do not decode), caught by read_image / check --verify-images
    with pytest.raises(DatasetError, match="broken.jpg"):
        ds.image(0)


def test_read_image_16_bit_png(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)).save(path)
    img = read_image(path)
    assert img.dtype == np.uint8 and img[1, 1] == 255 and img[0, 0] == 0
