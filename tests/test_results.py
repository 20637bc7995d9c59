"""results/: records copied without weights, the page generated from them, and the check CI runs."""

from __future__ import annotations

import json
import shutil

import pytest

from utils import results
from utils.core import runs


def test_the_repositorys_results_page_is_up_to_date():
    assert results.main(["page", "--check"]) == 0, "run: python -m utils.results page"


def test_add_copies_the_record_and_log_but_no_weights(finished_runs, tmp_path):
    source = tmp_path / "checkpoints" / finished_runs["supervised"].run_dir.name
    shutil.copytree(finished_runs["supervised"].run_dir, source)
    (source / "model.pt").write_bytes(b"weights")
    kept = tmp_path / "results"
    (target,) = results.add([source], kept)
    assert sorted(p.name for p in target.iterdir()) == ["log.csv", "metrics.json"]
    assert json.loads((target / "metrics.json").read_text())["run"] == source.name


def test_add_refuses_a_folder_without_a_finished_run_and_copies_nothing(finished_runs, tmp_path):
    good = finished_runs["supervised"].run_dir
    with pytest.raises(FileNotFoundError, match="no finished run"):
        results.add([good, tmp_path / "nothing"], tmp_path / "results")
    assert not (tmp_path / "results").exists()


def test_the_page_names_every_run_its_figures_and_how_it_was_made(finished_runs, tmp_path):
    kept = tmp_path / "results"
    results.add([finished_runs[m].run_dir for m in ("supervised", "byol", "random-init")], kept)
    text = results.page(results.load_recorded(kept))
    assert text.startswith("# Results")
    for m in ("supervised", "byol", "random-init"):
        name = finished_runs[m].run_dir.name
        assert f"[{name}]({name}/metrics.json)" in text
    record = runs.finished(finished_runs["byol"].run_dir)
    assert f"{100 * record['evaluations']['linear']['val']['accuracy']:.1f} %" in text
    assert "## How each run was made" in text


def test_page_check_fails_when_out_of_date(finished_runs, tmp_path, capsys):
    kept = tmp_path / "results"
    results.add([finished_runs["supervised"].run_dir], kept)
    assert results.main(["--results-dir", str(kept), "page"]) == 0
    assert results.main(["--results-dir", str(kept), "page", "--check"]) == 0
    results.add([finished_runs["byol"].run_dir], kept)
    assert results.main(["--results-dir", str(kept), "page", "--check"]) == 1
    assert "out of date" in capsys.readouterr().err
