"""``runs.run`` for every method on the sample, and ``runs.load_run`` rebuilding each finished run from its
folder alone, in a fresh process, with exactly the recorded validation metrics."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import RUN_STEPS, RUN_TRAIN, run_configs

from utils import methods
from utils.core import runs

ROOT = Path(__file__).resolve().parent.parent

FRESH_PROCESS = r"""
import json, sys
from utils.core import runs
from utils.data import load_dataset_or_sample
from utils.data.faces import FaceConfig, prepare

cache, *folders = sys.argv[1:]
ds, _ = load_dataset_or_sample("fer2013", "x", quick=True)
prepared = prepare(ds, FaceConfig(), cache_dir=cache, workers=1, progress=False)
out = {}
for folder in folders:
    run = runs.load_run(folder, device="cpu")
    out[folder] = {"method": type(run.method).__name__, "evaluations": run.evaluate(prepared, device="cpu")}
print(json.dumps(out))
"""


def test_every_method_file_registers_its_method():
    assert {"supervised", "moco_v2", "hncl", "byol", "fra", "ran", "random-init", "raw-pixels"} <= set(methods.names())
    for name in methods.names():
        cls = methods.get(name)
        assert cls.name == name and methods.for_config(cls.Config()) is cls
    with pytest.raises(ValueError, match="unknown method"):
        methods.get("simclr")


def test_every_run_writes_one_record_by_its_kind(finished_runs):
    for name, run in finished_runs.items():
        record = json.loads((run.run_dir / "metrics.json").read_text())
        assert record["status"] == "finished" and record["protocol"]
        assert record["spec"]["classes"] == list(run.method.spec.classes)
        evaluations = record["evaluations"]
        if run.method.kind == "classifier":
            protocol = "finetune" if name == "finetune" else "supervised"
            assert set(evaluations) == {protocol, f"{protocol}+flip"}
            assert record["epochs_run"] == RUN_TRAIN.epochs and record["images_per_second"] > 0
        else:
            assert set(evaluations) == {"knn", "linear"}
        for by_split in evaluations.values():
            assert 0 <= by_split["val"]["accuracy"] <= 1
    tuned = finished_runs["finetune"].record
    assert tuned["method"] == "moco_v2" and tuned["protocol"] == "finetune"
    assert tuned["config"]["init_sha1"] and tuned["init"].endswith("backbone.pt")
    assert finished_runs["hncl"].record["variant"] == "landmarks k=3"
    assert finished_runs["hncl"].record["neighbours"]["label_agreement"] is not None
    assert finished_runs["raw-pixels"].record["seed"] is None


def test_a_finished_run_is_loaded_not_trained_again(sample, finished_runs, monkeypatch):
    first = finished_runs["moco_v2"]
    monkeypatch.setattr(runs, "fit", lambda *a, **k: pytest.fail("trained again"))
    again = runs.run(
        run_configs()["moco_v2"], sample, RUN_TRAIN, checkpoint_dir=first.run_dir.parent, device="cpu",
        progress=False, steps_per_epoch=RUN_STEPS,
    )  # fmt: skip
    assert again.loaded and again.run_dir == first.run_dir and again.record == first.record
    for (name, a), b in zip(first.method.state_dict().items(), again.method.state_dict().values()):
        assert a.equal(b), name


@pytest.mark.slow
def test_load_run_in_a_fresh_process_reproduces_the_recorded_metrics(sample_cache, finished_runs):
    folders = {name: str(run.run_dir) for name, run in finished_runs.items()}
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, str(sample_cache), *folders.values()],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    for name, folder in folders.items():
        recorded = finished_runs[name].record["evaluations"]
        assert loaded[folder]["method"] == type(finished_runs[name].method).__name__
        assert loaded[folder]["evaluations"] == json.loads(json.dumps(recorded)), name  # every metric, exactly


def test_load_run_refuses_a_folder_without_a_finished_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="no finished run"):
        runs.load_run(tmp_path)
    runs.write_record(tmp_path, {"method": "moco_v2", "config": {}})  # an older record: no input description
    with pytest.raises(ValueError, match="older version"):
        runs.load_run(tmp_path)
