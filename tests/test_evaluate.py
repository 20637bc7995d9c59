"""``utils.evaluate``: a finished run on another dataset, restricted to the classes both have, written into
its record; on its own test split it gives exactly the recorded metrics; a dataset with one split (JAFFE's
``all``) is evaluated on it. ``--occlusion`` is tested in ``test_robustness_record.py``."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from utils.core import runs
from utils.core.runtime import SAMPLE_DIR
from utils.data.labels import JAFFE_TO_CANONICAL
from utils.data.sample import draw_face
from utils.evaluate import choose_split, evaluate_run, main


@pytest.fixture(scope="module")
def trained(finished_runs, tmp_path_factory):
    """The session's supervised run, copied (evaluating writes into its record), and its MoCo v2 run."""
    copy = tmp_path_factory.mktemp("evaluate") / finished_runs["supervised"].run_dir.name
    shutil.copytree(finished_runs["supervised"].run_dir, copy)
    return {"supervised": runs.load_run(copy, device="cpu"), "moco_v2": finished_runs["moco_v2"]}


def test_its_own_test_split_gives_the_recorded_metrics(trained, sample_cache):
    run = trained["supervised"]
    result = evaluate_run(run.run_dir, "fer2013", SAMPLE_DIR, "test", device="cpu", cache_dir=sample_cache)
    assert result["classes"] == list(run.method.spec.classes) and result["left_out"] == {}
    assert result["metrics"] == run.record["evaluations"]["supervised"]["test"]
    record = runs.finished(run.run_dir)  # still a finished run, with the evaluation added
    assert record["cross_dataset"]["fer2013/test"]["metrics"]["accuracy"] == result["metrics"]["accuracy"]
    assert runs.load_run(run.run_dir).record["evaluations"] == run.record["evaluations"]


def test_another_label_set_is_restricted_to_the_shared_classes(trained, sample_cache, capsys):
    run = trained["supervised"]
    argv = [str(run.run_dir), "--dataset", "ferplus", str(SAMPLE_DIR), "--split", "val", "--tta", "flip"]
    assert main([*argv, "--cache-dir", str(sample_cache)]) == 0
    out = capsys.readouterr().out
    assert "the dataset's classes the run does not know: contempt" in out
    record = json.loads((run.run_dir / "metrics.json").read_text())
    entry = record["cross_dataset"]["ferplus/val+flip"]
    assert entry["classes"] == list(run.method.spec.classes) and entry["not_in_run"] == ["contempt"]
    assert 0 <= entry["metrics"]["accuracy"] <= 1 and entry["metrics"]["n"] > 0


def test_what_cannot_be_evaluated_is_refused_clearly(trained, tmp_path, capsys):
    with pytest.raises(ValueError, match="linear probe is not kept"):
        evaluate_run(trained["moco_v2"].run_dir, "fer2013", SAMPLE_DIR)
    missing = f"fer2013 at {SAMPLE_DIR} has no 'holdout' split; it has ['test', 'train', 'val']"
    with pytest.raises(ValueError, match=re.escape(missing)):  # names the dataset, its path and its splits
        evaluate_run(trained["supervised"].run_dir, "fer2013", SAMPLE_DIR, "holdout", write=False)
    assert main([str(tmp_path), "--dataset", "fer2013", str(SAMPLE_DIR)]) == 2
    assert "no finished run" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ which split by default


def test_choose_split():
    assert choose_split("fer2013", "data/fer2013", ["train", "val", "test"]) == ("test", None)
    assert choose_split("jaffe", "data/jaffe", ["all"]) == ("all", "jaffe has one split, 'all': evaluating on it")
    assert choose_split("jaffe", "data/jaffe", ["all"], "all") == ("all", None)  # asked for: nothing to say
    assert choose_split("fer2013", "data/fer2013", ["train", "val", "test"], "val") == ("val", None)
    with pytest.raises(ValueError, match=re.escape("jaffe at data/jaffe has no 'test' split; it has ['all']")):
        choose_split("jaffe", "data/jaffe", ["all"], "test")
    with pytest.raises(ValueError, match=re.escape("no 'test' split and several others, ['train', 'val']")):
        choose_split("fer2013", "data/fer2013", ["train", "val"])


def jaffe_folder(root, per_class: int = 2):
    """A JAFFE-format folder of synthetic faces (``KA.AN1.1.tiff``...), ``per_class`` of each expression."""
    rng = np.random.default_rng(7)
    root.mkdir(parents=True, exist_ok=True)
    number = 0
    for code, label in JAFFE_TO_CANONICAL.items():
        for repeat in range(per_class):
            number += 1
            face, _ = draw_face(label, rng)
            Image.fromarray(face).save(root / f"{('KA', 'KM')[repeat % 2]}.{code}{repeat + 1}.{number}.tiff")
    return root


def test_a_dataset_with_one_split_is_evaluated_on_it(trained, tmp_path, capsys):
    run = trained["supervised"]
    root = jaffe_folder(tmp_path / "jaffe")
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert main([str(run.run_dir), "--dataset", "jaffe", str(root), *cache]) == 0
    out = capsys.readouterr().out
    assert "jaffe has one split, 'all': evaluating on it" in out and "jaffe all: 14 images" in out
    entry = runs.finished(run.run_dir)["cross_dataset"]["jaffe/all"]
    assert entry["split"] == "all" and entry["metrics"]["n"] == 14 and entry["left_out"] == {}

    # asked for explicitly, a split the dataset does not have is an error naming the dataset, path and splits
    assert main([str(run.run_dir), "--dataset", "jaffe", str(root), "--split", "test", *cache]) == 2
    assert f"jaffe at {root} has no 'test' split; it has ['all']" in capsys.readouterr().err


def test_several_splits_and_no_test_need_split(trained, tmp_path):
    flat = " ".join(["128"] * 48 * 48)
    rows = [(3, "Training"), (4, "Training"), (5, "PublicTest"), (6, "PublicTest")]
    path = tmp_path / "fer2013.csv"
    path.write_text("emotion,pixels,Usage\n" + "".join(f"{e},{flat},{u}\n" for e, u in rows))
    message = f"fer2013 at {path} has no 'test' split and several others, ['train', 'val']: choose one (--split)"
    with pytest.raises(ValueError, match=re.escape(message)):
        evaluate_run(trained["supervised"].run_dir, "fer2013", path, write=False)
