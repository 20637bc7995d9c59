"""The face store's measuring commands, on a tiny generated folder (the figures themselves come from real runs)."""

from __future__ import annotations

import json
import sys

from utils.core.runtime import SAMPLE_DIR
from utils.scale import main


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_generated_folder_is_prepared_pretrained_on_and_indexed(tmp_path, capsys):
    faces, cache = tmp_path / "faces", tmp_path / "cache"
    assert (
        main(["face-folder", "--data", str(SAMPLE_DIR), "--out", str(faces), "--count", "1200", "--workers", "1"]) == 0
    )
    made = last_json(capsys)
    assert made["written_now"] == 1200 and len(list(faces.glob("*/*.jpg"))) == 1200  # folders of 1,000
    assert main(["face-folder", "--data", str(SAMPLE_DIR), "--out", str(faces), "--count", "1200"]) == 0
    assert last_json(capsys)["written_now"] == 0  # written already: skipped
    common = ["--faces", str(faces), "--cache-dir", str(cache), "--max-images", "600"]
    assert main(["epoch", *common, "--method", "moco_v2:width=8,stem_stride=4,queue_size=64"]) == 0
    epoch = last_json(capsys)
    assert epoch["faces"] == 600 and epoch["images_seen"] == 600 // 256 * 256 and epoch["images_per_s"] > 0
    assert main(["neighbours", *common]) == 0
    index = last_json(capsys)
    assert index["faces"] == 600 and index["search"] == "exact" and index["k"] == 5


def test_peak_memory_runs_the_command_after_the_dashes(capsys):
    code = "import numpy as np; a = np.ones(50_000_000, dtype=np.uint8); import time; time.sleep(0.6)"
    assert main(["peak-memory", "--", sys.executable, "-c", code]) == 0
    out = last_json(capsys)
    assert out["returncode"] == 0 and out["peak_anon_mb"] >= 45 and out["peak_anon_pss_mb"] >= 45
