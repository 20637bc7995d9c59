"""``python -m utils.data check``, run as a user would run it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent


def check(*args):
    return subprocess.run(
        [sys.executable, "-m", "utils.data", "check", *map(str, args)],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def fer_csv(path, rows):
    lines = ["emotion,pixels,Usage"] + [f"{e},{' '.join([str(v)] * 2304)},{u}" for e, v, u in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_check_json_counts_with_canonical_names(tmp_path):
    path = fer_csv(tmp_path / "fer2013.csv", [(0, 1, "Training"), (0, 2, "Training"), (6, 3, "PublicTest")])
    result = check("fer2013", path, "--json")
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    names = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    assert counts == {
        "train": dict.fromkeys(names, 0) | {"angry": 2},
        "val": dict.fromkeys(names, 0) | {"neutral": 1},
    }


def test_check_empty_folder_fails_naming_the_path(tmp_path):
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    result = check("rafdb", empty)
    assert result.returncode != 0
    assert str(empty) in result.stderr and "list_patition_label.txt" in result.stderr


def test_check_strict_fails_on_bad_row(tmp_path):
    path = fer_csv(tmp_path / "fer2013.csv", [(0, 1, "Training"), (9, 2, "Training")])
    lenient = check("fer2013", path)
    assert lenient.returncode == 0 and "line 3" in lenient.stderr
    strict = check("fer2013", path, "--strict")
    assert strict.returncode != 0 and "line 3" in strict.stderr


def test_check_verify_images_names_unreadable_file(tmp_path):
    folder = tmp_path / "DATASET" / "train" / "4"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(folder / "good.jpg")
    (folder / "broken.jpg").write_bytes(b"\x00garbage, not a jpeg")
    result = check("rafdb", tmp_path, "--verify-images", "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout)["train"]["happy"] == 2  # RAF-DB folder 4 = happiness
    assert "broken.jpg" in result.stderr and "good.jpg" not in result.stderr
    strict = check("rafdb", tmp_path, "--verify-images", "--strict")
    assert strict.returncode != 0 and "broken.jpg" in strict.stderr
