"""``python -m utils.evaluate RUN --occlusion`` (:func:`utils.evaluate.evaluate_robustness`): a finished run
clean and under every synthetic occlusion, recorded in its ``metrics.json`` under ``robustness`` (a RAN run
with its attention shift), the record still a finished run's."""

from __future__ import annotations

import shutil

import pytest

from utils.core import runs
from utils.core.runtime import SAMPLE_DIR
from utils.evaluate import evaluate_robustness, main
from utils.evaluation.robustness import OCCLUSIONS

CONDITIONS = {"clean", *OCCLUSIONS, "frontal", "strong yaw"}  # robustness.evaluate's rows


@pytest.fixture(scope="module")
def copies(finished_runs, tmp_path_factory):
    """The session's supervised and RAN runs, copied: evaluating writes into their records."""
    root = tmp_path_factory.mktemp("robustness")
    out = {}
    for name in ("supervised", "ran"):
        out[name] = root / finished_runs[name].run_dir.name
        shutil.copytree(finished_runs[name].run_dir, out[name])
    return out


def check_conditions(conditions: dict) -> None:
    assert set(conditions) == CONDITIONS
    for name, m in conditions.items():
        assert set(m) == {"accuracy", "balanced_accuracy", "macro_f1", "n"}
        if name in ("clean", *OCCLUSIONS):
            assert m["n"] > 0, name  # every sample face has landmarks
        if m["n"] == 0:  # a pose subset without faces: nothing measured
            assert m["accuracy"] is m["balanced_accuracy"] is m["macro_f1"] is None
            continue
        for key in ("accuracy", "balanced_accuracy", "macro_f1"):
            assert 0 <= m[key] <= 1, (name, key)


def test_a_supervised_run_gains_its_robustness_entry(copies, sample_cache):
    folder = copies["supervised"]
    before = runs.finished(folder)
    result = evaluate_robustness(folder, "fer2013", SAMPLE_DIR, device="cpu", cache_dir=sample_cache)
    assert result["split"] == "test" and result["tta"] is None and "attention_shift" not in result

    record = runs.finished(folder)  # still a finished run, that loads
    assert record is not None and runs.load_run(folder, device="cpu").record["evaluations"] == before["evaluations"]
    entry = record["robustness"]["fer2013/test"]
    assert entry == result and "attention_shift" not in entry
    check_conditions(entry["conditions"])
    clean, recorded = entry["conditions"]["clean"], before["evaluations"]["supervised"]["test"]
    assert clean["n"] == recorded["n"] and clean["accuracy"] == pytest.approx(recorded["accuracy"])
    assert sum(entry["conditions"][c]["n"] for c in ("frontal", "strong yaw")) <= clean["n"]

    # another dataset's classes: only the shared ones are scored; write=False leaves the record as it is
    other = evaluate_robustness(folder, "ferplus", SAMPLE_DIR, "val", device="cpu", write=False, cache_dir=sample_cache)
    assert other["classes"] == list(record["spec"]["classes"]) and "contempt" not in other["classes"]
    check_conditions(other["conditions"])
    assert set(runs.finished(folder)["robustness"]) == {"fer2013/test"}


def test_a_ran_run_from_the_command_line_with_its_attention_shift(copies, sample_cache, capsys):
    folder = copies["ran"]
    argv = [str(folder), "--dataset", "fer2013", str(SAMPLE_DIR), "--split", "val", "--occlusion"]
    assert main([*argv, "--cache-dir", str(sample_cache)]) == 0
    out = capsys.readouterr().out
    assert "fer2013 val: robustness" in out and "RAN's attention" in out
    for name in CONDITIONS:
        assert f"\n{name} " in out  # a line per condition
    assert "under robustness['fer2013/val']" in out

    record = runs.finished(folder)  # still a finished run, that loads
    assert record is not None
    crops = runs.load_run(folder, device="cpu").method.crop_names
    entry = record["robustness"]["fer2013/val"]
    check_conditions(entry["conditions"])
    shift = entry["attention_shift"]
    assert set(shift) == set(OCCLUSIONS)
    for occlusion, row in shift.items():
        assert row["most covered crop"] in crops[1:], occlusion  # a crop, not the whole face
        shares = {k: v for k, v in row.items() if k != "most covered crop"}
        assert len(shares) == 6 and all(0 <= v <= 1 for v in shares.values()), occlusion
