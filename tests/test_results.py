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


def _ferplus_record(method, seed, images_per_second, shift=None, init=None, acc=0.8, occluded=0.5):
    conditions = {c: {"accuracy": occluded} for c in (*results.OCCLUSION_COLUMNS, *results.POSE_COLUMNS)}
    return {
        **({"init_run": {"run": init, "method": "byol", "train_seconds": 1800.0}} if init else {}),
        "run_dir": f"{method}-ferplus-{seed}",
        "method": method,
        "seed": seed,
        "protocol": "supervised",
        "dataset": {"name": "ferplus"},
        "config": {"model": {"backbone": "resnet18", "width": 32}, **({"init_sha1": init} if init else {})},
        "evaluations": {"supervised": {"val": {"accuracy": acc, "macro_f1": 0.7}}},
        "images_per_second": images_per_second,
        "robustness": {"ferplus/val": {"conditions": conditions, "attention_shift": shift or {}}},
    }


def test_the_ferplus_section_gives_the_cost_per_image_and_whether_a_covered_crop_loses_share():
    shift = {
        "eyes": {"most covered crop": "top-left", "covered crop, clean": 0.3, "covered crop, occluded": 0.2,
                 "face, clean": 0.25, "face, occluded": 0.2},
        "mouth": {"most covered crop": "bottom-centre", "covered crop, clean": 0.3, "covered crop, occluded": 0.4,
                  "face, clean": 0.25, "face, occluded": 0.3},
    }  # fmt: skip
    records = [_ferplus_record("supervised", 0, 600.0), _ferplus_record("ran", 0, 400.0, shift)]
    text = "\n".join(results.ferplus_section(records))
    assert "| 1.50× |" in text  # 600 / 400 images/s: RAN costs 1.5 times the plain network per image
    assert "| eyes | top-left | 0.300 | 0.200 | yes |" in text
    assert "| mouth | bottom-centre | 0.300 | 0.400 | no |" in text
    assert text.count("| 50.0 % |") >= 2  # the occluded mean beside the five occlusions


def test_a_pretrained_ran_is_costed_against_the_plain_network_from_the_same_start():
    records = [
        _ferplus_record("supervised", 0, 600.0),
        _ferplus_record("supervised", 0, 500.0, init="byol-x"),
        _ferplus_record("ran", 0, 400.0, init="byol-x"),
        _ferplus_record("ran", 0, 300.0),
    ]
    rows = [line for line in results.ferplus_section(records) if line.startswith("| ran |") and "×" in line]
    assert len(rows) == 2
    assert "byol run `byol-x` |" in rows[0] or "byol run `byol-x` |" in rows[1]
    costs = {("byol-x" in row): row.split(" | ")[8] for row in rows}
    assert costs == {True: "1.25×", False: "2.00×"}  # 500 / 400 from the same start, 600 / 300 from random weights
    assert "30.0 start" in "".join(rows)  # the start run's minutes are counted


def test_ran_is_set_against_the_plain_network_of_its_own_seed_and_start():
    records = [
        _ferplus_record("supervised", 0, 600.0, acc=0.80, occluded=0.60),
        _ferplus_record("supervised", 1, 600.0, acc=0.81, occluded=0.64),
        _ferplus_record("ran", 0, 400.0, acc=0.82, occluded=0.61),
        _ferplus_record("ran", 1, 400.0, acc=0.80, occluded=0.68),
        _ferplus_record("ran", 0, 400.0, init="byol-x", acc=0.90),  # no plain network from byol-x: no difference
    ]
    rows = [line.split(" | ") for line in results.ferplus_section(records) if " | resnet18, width 32 | " in line]
    ran, started, plain = ({row[0]: row for row in rows if row[2] == start}[model] for model, start in
                           [("| ran", "random weights"), ("| ran", "byol run `byol-x`"), ("| supervised", "random weights")])  # fmt: skip
    assert ran[3:7] == ["81.0 % (82.0 %, 80.0 %)", "64.5 % (61.0 %, 68.0 %)", "+0.5 (+2.0, -1.0)", "+2.5 (+1.0, +4.0)"]
    assert plain[5:7] == ["", ""] and plain[8] == "1.00×"  # the plain network against itself: nothing to say
    assert started[5:7] == ["", ""] and started[8] == ""


def test_a_run_made_in_a_notebook_is_recorded_with_the_command_given(finished_runs, tmp_path):
    kept = tmp_path / "results"
    (target,) = results.add([finished_runs["supervised"].run_dir], kept, command="papermill notebooks/02.ipynb o.ipynb")
    provenance = json.loads((target / "metrics.json").read_text())["provenance"]
    assert provenance["command"] == "papermill notebooks/02.ipynb o.ipynb"
    assert provenance["command_given_to"] == "results add"
    assert "`papermill notebooks/02.ipynb o.ipynb` (given when recorded)" in results.page(results.load_recorded(kept))
    assert "command_given_to" not in runs.finished(finished_runs["supervised"].run_dir).get("provenance", {})


def test_a_notebook_kernels_provenance_names_no_machine_path(monkeypatch):
    from utils.core import runtime

    monkeypatch.delenv("FER_COMMAND", raising=False)
    kernel = ["/opt/venv/lib/python3.11/site-packages/ipykernel_launcher.py", "-f", "/tmp/kernel-1.json"]
    monkeypatch.setattr("sys.argv", kernel)
    command = runtime.provenance()["command"]
    assert "notebook" in command and "/tmp" not in command and "/opt" not in command
    monkeypatch.setenv("FER_COMMAND", "papermill notebooks/02_supervised_baselines.ipynb out.ipynb")
    assert runtime.provenance()["command"] == "papermill notebooks/02_supervised_baselines.ipynb out.ipynb"


def test_probes_on_a_share_of_the_labels_and_early_stopped_epochs_are_shown():
    probe = {"fraction": 0.1, "seed": 0, "linear": {"val": {"accuracy": 0.359}}, "knn": {"val": {"accuracy": 0.298}}}
    pretrained = {"run_dir": "byol-x", "method": "byol", "seed": 0, "config": {"model": {"backbone": "resnet18"}}}
    lines = results.share_probes_section([{**pretrained, "label_efficiency": {"0.1/seed0": probe}}])
    assert "| byol | resnet18 | 10 % | 35.9 % | 29.8 % | 0 | [byol-x](byol-x/metrics.json) |" in lines
    assert results.share_probes_section([pretrained]) == []
    stopped = {"stop_reason": "early stop: no better validation score for 5 epochs", "epochs_run": 20}
    assert results._epochs({**stopped, "schedule": {"epochs": 30.0}}) == "20 (early stop)"
    assert results._epochs({"stop_reason": "schedule done", "epochs_run": 29, "schedule": {"epochs": 28.36}}) == "28.36"
