"""``utils.evaluate``: a finished run on another dataset, restricted to the classes both have, written into
its record; on its own test split it gives exactly the recorded metrics."""

from __future__ import annotations

import json
import shutil

import pytest

from utils.core import runs
from utils.core.runtime import SAMPLE_DIR
from utils.evaluate import evaluate_run, main


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
    with pytest.raises(ValueError, match="no 'holdout' split"):
        evaluate_run(trained["supervised"].run_dir, "fer2013", SAMPLE_DIR, "holdout", write=False)
    assert main([str(tmp_path), "--dataset", "fer2013", str(SAMPLE_DIR)]) == 2
    assert "no finished run" in capsys.readouterr().err
