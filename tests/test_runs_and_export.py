"""Run folders and their records, the image-folder export, ImageFolder's label order, merged datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from utils.core import runs
from utils.data.base import FaceDataset
from utils.data.export import export_image_folders, imagefolder_to_canonical
from utils.data.faces import FaceConfig, PreparedFaces, merge
from utils.data.labels import EMOTIONS
from utils.evaluation import plots
from utils.evaluation import tables as results

# ----------------------------------------------------------------------------------------------- runs

VERSIONS = {"python": "3.x", "torch": "2.x"}


@pytest.fixture(autouse=True)
def fixed_versions(monkeypatch):
    """Records carry library versions; collecting the real ones imports cv2 and dlib, slow for these tests."""
    monkeypatch.setattr(runs, "versions", lambda: dict(VERSIONS))


def test_run_dir_follows_the_config(tmp_path):
    config = {"backbone": "resnet18", "lr": 0.1, "epochs": 30, "channels": "gray"}
    a = runs.run_dir("supervised", config, root=tmp_path)
    assert a.parent == tmp_path
    assert a.name.startswith("supervised-")
    assert runs.run_dir("supervised", dict(reversed(list(config.items()))), root=tmp_path) == a  # key order
    assert runs.run_dir("supervised", dict(config), root=tmp_path) == a
    assert runs.run_dir("supervised", {**config, "lr": 0.05}, root=tmp_path) != a
    assert runs.run_dir("supervised", {**config, "seed": 1}, root=tmp_path) != a
    assert runs.run_dir("moco", config, root=tmp_path) != a


def test_records_round_trip(tmp_path):
    folder = tmp_path / "supervised-0001"
    record = {"method": "supervised", "config": {"backbone": "resnet18"}, "evaluations": {"linear": {}}}
    path = runs.write_record(folder, record)
    assert path == folder / runs.METRICS_FILE
    assert sorted(p.name for p in folder.iterdir()) == [runs.METRICS_FILE]  # no temporary file left

    found = runs.finished(folder)
    assert found["status"] == "finished"
    for key, value in record.items():
        assert found[key] == value
    assert found["versions"] == VERSIONS
    assert {"machine", "written"} <= set(found)

    runs.write_record(tmp_path / "moco-0002", {"method": "moco"})
    loaded = runs.load_records(tmp_path)
    assert [r["run_dir"] for r in loaded] == ["moco-0002", "supervised-0001"]
    assert loaded[1]["config"] == {"backbone": "resnet18"}


def test_unfinished_or_broken_records_are_not_finished(tmp_path):
    running = tmp_path / "running"
    runs.write_record(running, {"status": "running", "method": "supervised"})
    assert json.loads((running / runs.METRICS_FILE).read_text())["status"] == "running"
    assert runs.finished(running) is None

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / runs.METRICS_FILE).write_text('{"status": "finished", "method":')  # cut off mid-write
    assert runs.finished(broken) is None

    assert runs.finished(tmp_path / "empty") is None
    runs.write_record(tmp_path / "done", {"method": "supervised"})
    assert [r["run_dir"] for r in runs.load_records(tmp_path)] == ["done"]
    assert runs.load_records(tmp_path / "nothing-here") == []


def metrics(acc):
    return {"accuracy": acc, "balanced_accuracy": acc - 0.05, "macro_f1": acc - 0.1, "n": 100}


def test_summary_table_has_one_row_per_run_and_protocol(tmp_path):
    runs.write_record(
        tmp_path / "a",
        {
            "method": "supervised",
            "dataset": {"name": "fer2013"},
            "config": {"model": {"backbone": "resnet18", "channels": "gray"}},
            "train_seconds": 600,
            "evaluations": {
                "plain": {"val": metrics(0.6), "test": metrics(0.61)},
                "tencrop": {"val": metrics(0.63), "test": metrics(0.64)},
            },
        },
    )
    runs.write_record(
        tmp_path / "b",
        {"method": "moco", "evaluations": {"linear": {"test": metrics(0.5)}, "knn": {"val": metrics(0.45)}}},
    )
    records = runs.load_records(tmp_path)

    val = results.summary_table(records, "val")
    assert isinstance(val, pd.DataFrame)
    assert sorted(zip(val["run"], val["protocol"])) == [("a", "plain"), ("a", "tencrop"), ("b", "knn")]
    row = val[(val["run"] == "a") & (val["protocol"] == "tencrop")].iloc[0]
    assert row["accuracy"] == pytest.approx(0.63)
    assert row["macro_f1"] == pytest.approx(0.53)
    assert row["backbone"] == "resnet18" and row["dataset"] == "fer2013"
    assert row["train_minutes"] == pytest.approx(10.0)

    test = results.summary_table(records, "test")
    assert sorted(zip(test["run"], test["protocol"])) == [("a", "plain"), ("a", "tencrop"), ("b", "linear")]
    assert len(results.summary_table(records, "train")) == 0


def pretraining_record(method, seed, minutes, linear, space=None, epochs=13, momentum=0.99):
    model = {"backbone": "resnet18", "momentum": momentum, "neighbours": {"k": 5, "space": space or "landmarks"}}
    model["neighbours"]["seed"] = seed  # breaks ties: a seed like the others
    return {
        "method": method,
        "variant": f"{space or 'landmarks'} k=5" if method == "hncl" else "",
        "seed": seed,
        "epochs_run": epochs,
        "train_seconds": 60 * minutes,
        "config": {"model": model, "train": {"epochs": epochs, "seed": seed}, "seed": seed},
        "evaluations": {"linear": {"val": metrics(linear)}, "knn": {"val": metrics(linear - 0.02)}},
    }


def test_seeds_of_one_setting_are_pooled_and_variants_kept_apart(tmp_path):
    records = [
        pretraining_record("hncl", 0, 29, 0.45, "landmarks"),
        pretraining_record("hncl", 1, 30, 0.47, "landmarks"),
        pretraining_record("hncl", 0, 9, 0.43, "landmarks", epochs=4),
        pretraining_record("hncl", 0, 29, 0.40, "centre"),
        pretraining_record("moco_v2", 0, 28, 0.44),  # carries the ignored neighbour defaults
        pretraining_record("hncl", 1, 29, 0.30, "landmarks", momentum=0.999),  # another setting: not pooled
        {"method": "raw-pixels", "config": {"seed": 0}, "evaluations": {"linear": {"val": metrics(0.455)}}},
    ]
    for i, record in enumerate(records):
        runs.write_record(tmp_path / f"run{i}", record)
    table = results.probe_table(runs.load_records(tmp_path), "val")
    assert list(table["variant"]) == ["landmarks k=5"] * 3 + ["centre k=5", "", "landmarks k=5", ""]
    assert list(table["seed"]) == [0, 1, 0, 0, 0, 1, 0]
    assert table["setting"][0] == table["setting"][1] != table["setting"][5]

    pooled = results.over_seeds(table).set_index(["method", "variant", "epochs", "setting"])
    both = pooled.loc[("hncl", "landmarks k=5", 13, table["setting"][0])]
    assert both["seeds"] == 2
    assert both["linear_accuracy"] == pytest.approx(0.46)
    assert both["linear_accuracy_std"] == pytest.approx(np.std([0.45, 0.47], ddof=1))
    assert both["pretrain_minutes"] == pytest.approx(29.5)
    pooled = pooled.droplevel("setting")
    assert pooled.loc[("hncl", "landmarks k=5", 4)]["seeds"] == 1
    assert np.isnan(pooled.loc[("hncl", "centre k=5", 13)]["linear_accuracy_std"])
    assert len(pooled) == 6  # the other momentum and the floor (no epochs) are groups of their own

    fig = plots.budget_curve(table, "linear")
    ax = fig.axes[0]
    assert sorted(line.get_label() for line in ax.get_lines()) == [
        "floor: raw-pixels",
        "hncl (centre k=5)",
        "hncl (landmarks k=5)",
        "moco_v2",
    ]
    curve = next(line for line in ax.get_lines() if line.get_label() == "hncl (landmarks k=5)")
    np.testing.assert_allclose(curve.get_xdata(), [9, 29, 29.5])  # one point per setting, at the seeds' mean
    np.testing.assert_allclose(curve.get_ydata(), [0.43, 0.30, 0.46])
    with pytest.raises(ValueError, match="finetune"):
        plots.budget_curve(table, "finetune")


# --------------------------------------------------------------------------------------------- export


def toy_dataset(root: Path, n: int = 21, seed: int = 0) -> FaceDataset:
    """FER2013-like: pixels in memory, all seven classes in train, some in test."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 7
    splits = np.where(np.arange(n) < 14, "train", "test")
    table = pd.DataFrame({"split": splits, "label": labels, "source": [f"row {i}" for i in range(n)]})
    pixels = rng.integers(0, 256, (n, 10, 10), dtype=np.uint8)
    return FaceDataset("toy", root, "csv", table, 7, pixels=pixels)


def exported_images(folder: Path) -> dict[tuple[str, str], list[bytes]]:
    """``{(split, class): sorted image bytes}`` of every PNG under ``folder``."""
    out: dict[tuple[str, str], list[bytes]] = {}
    for png in folder.glob("*/*/*.png"):
        with Image.open(png) as im:
            out.setdefault((png.parent.parent.name, png.parent.name), []).append(np.asarray(im).tobytes())
    return {k: sorted(v) for k, v in out.items()}


def expected_images(dataset: FaceDataset) -> dict[tuple[str, str], list[bytes]]:
    out: dict[tuple[str, str], list[bytes]] = {}
    for i in range(len(dataset)):
        key = (dataset.table.at[i, "split"], EMOTIONS[dataset.table.at[i, "label"]])
        out.setdefault(key, []).append(dataset.pixels[i].tobytes())
    return {k: sorted(v) for k, v in out.items()}


def test_export_writes_lossless_pngs_into_split_and_class_folders(tmp_path):
    dataset = toy_dataset(tmp_path)
    folder = export_image_folders(dataset, tmp_path / "export", progress=False)
    assert folder == tmp_path / "export"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == ["test", "train"]
    for split in ("train", "test"):
        assert sorted(p.name for p in (folder / split).iterdir()) == sorted(EMOTIONS[:7])
    with Image.open(next(folder.glob("train/angry/*.png"))) as im:
        assert im.mode == "L" and im.size == (10, 10)
    assert exported_images(folder) == expected_images(dataset)
    assert len(list(folder.rglob("*.png"))) == len(dataset)
    assert any(p.name.startswith(".") for p in folder.iterdir())  # the completion marker
    assert not (tmp_path / "export.partial").exists()


def test_a_complete_export_is_kept(tmp_path, monkeypatch):
    dataset = toy_dataset(tmp_path)
    folder = export_image_folders(dataset, tmp_path / "export", progress=False)
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*.png")}

    def no_writes(self, *args, **kwargs):
        raise AssertionError("a complete export was rewritten")

    monkeypatch.setattr(Image.Image, "save", no_writes)
    assert export_image_folders(dataset, folder, progress=False) == folder
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*.png")} == before


def failing_save_after(monkeypatch, allowed: int):
    real_save = Image.Image.save
    calls = {"n": 0}

    def save(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > allowed:
            raise OSError("No space left on device")
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)


def test_an_interrupted_export_leaves_only_the_partial_folder_which_is_redone(tmp_path, monkeypatch):
    dataset = toy_dataset(tmp_path)
    folder = tmp_path / "export"
    partial = tmp_path / "export.partial"
    failing_save_after(monkeypatch, allowed=4)
    with pytest.raises(OSError, match="No space"):
        export_image_folders(dataset, folder, progress=False)
    assert not folder.exists()
    assert partial.is_dir()
    assert len(list(partial.rglob("*.png"))) == 4

    monkeypatch.undo()
    assert export_image_folders(dataset, folder, progress=False) == folder
    assert not partial.exists()
    assert exported_images(folder) == expected_images(dataset)


def test_a_failed_overwrite_keeps_the_previous_complete_export(tmp_path, monkeypatch):
    old = toy_dataset(tmp_path, seed=0)
    folder = export_image_folders(old, tmp_path / "export", progress=False)
    failing_save_after(monkeypatch, allowed=2)
    with pytest.raises(OSError):
        export_image_folders(toy_dataset(tmp_path, seed=1), folder, overwrite=True, progress=False)
    assert exported_images(folder) == expected_images(old)

    monkeypatch.undo()
    new = toy_dataset(tmp_path, seed=1)
    export_image_folders(new, folder, overwrite=True, progress=False)
    assert exported_images(folder) == expected_images(new)
    assert not (tmp_path / "export.partial").exists()


def test_imagefolder_order_maps_to_canonical_ids():
    alphabetical = sorted(["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"])
    mapping = imagefolder_to_canonical(alphabetical)
    assert mapping == {0: 0, 1: 1, 2: 2, 3: 3, 4: 6, 5: 4, 6: 5}
    assert [EMOTIONS[mapping[i]] for i in range(7)] == alphabetical
    assert imagefolder_to_canonical(["Contempt", "Happiness"]) == {0: 7, 1: 3}
    with pytest.raises(ValueError, match="cats"):
        imagefolder_to_canonical(["angry", "cats"])


def test_torchvision_imagefolder_on_an_export_gets_the_labels_back(tmp_path):
    from torchvision.datasets import ImageFolder

    dataset = toy_dataset(tmp_path)
    folder = export_image_folders(dataset, tmp_path / "export", progress=False)
    images = ImageFolder(str(folder / "train"))
    mapping = imagefolder_to_canonical(images.classes)
    got = sorted(
        (mapping[target], np.asarray(images.loader(path).convert("L")).tobytes()) for path, target in images.samples
    )
    train = dataset.split_indices("train")
    want = sorted((int(dataset.labels[i]), dataset.pixels[i].tobytes()) for i in train)
    assert got == want


# ---------------------------------------------------------------------------------------------- merge


def prepared(name, labels, splits, size=8, seed=0) -> PreparedFaces:
    rng = np.random.default_rng(seed)
    n = len(labels)
    num_classes = 8 if max(labels) == 7 else 7
    return PreparedFaces(
        name=name,
        classes=EMOTIONS[:num_classes],
        images=rng.integers(0, 256, (n, size, size), dtype=np.uint8),
        landmarks=np.full((n, 68, 2), np.nan, dtype=np.float32),
        heatmaps=rng.integers(0, 256, (n, size, size), dtype=np.uint8),
        labels=np.asarray(labels, dtype=np.int64),
        splits=np.asarray(splits),
        face_found=np.zeros(n, dtype=bool),
        rows=np.arange(n),
        sources=np.full(n, name),
        config=FaceConfig(detector="none", landmarks=False, size=size),
    )


def test_merge_adds_extra_images_to_train_and_drops_contempt():
    base = prepared("fer2013", [0, 1, 2, 3, 4, 5, 6, 3], ["train"] * 4 + ["val"] * 2 + ["test"] * 2)
    extra = prepared("ckplus", [3, 7, 6, 7, 0], ["all", "all", "all", "train", "test"], seed=1)
    merged = merge(base, extra)

    assert merged.name == "fer2013+ckplus"
    assert merged.classes == EMOTIONS[:7]
    assert 7 not in merged.labels
    for split in ("val", "test"):  # base's evaluation splits, untouched
        rows = merged.split_indices(split)
        np.testing.assert_array_equal(merged.images[rows], base.images[base.split_indices(split)])
        np.testing.assert_array_equal(merged.labels[rows], base.labels[base.split_indices(split)])
        assert set(merged.sources[rows]) == {"fer2013"}

    added = np.flatnonzero(merged.sources == "ckplus")
    kept = np.flatnonzero(extra.labels < 7)
    assert len(merged) == len(base) + len(kept)
    assert set(merged.splits[added]) == {"train"}  # whatever their own split
    np.testing.assert_array_equal(merged.images[added], extra.images[kept])
    np.testing.assert_array_equal(merged.heatmaps[added], extra.heatmaps[kept])
    np.testing.assert_array_equal(merged.labels[added], extra.labels[kept])
    np.testing.assert_array_equal(merged.rows[added], extra.rows[kept])
    assert len(merged.split_indices("train")) == 4 + len(kept)


def test_merge_can_keep_contempt_as_an_eighth_class():
    base = prepared("fer2013", [0, 1, 2, 3, 4, 5, 6], ["train"] * 5 + ["val", "test"])
    extra = prepared("ckplus", [7, 7, 3], ["all"] * 3, seed=1)
    merged = merge(base, extra, drop_extra_classes=False)
    assert merged.num_classes == 8
    assert int((merged.labels == 7).sum()) == 2


def test_merge_refuses_images_of_different_sizes():
    base = prepared("fer2013", [0, 1], ["train", "val"], size=8)
    extra = prepared("rafdb", [0, 1], ["train", "test"], size=12)
    with pytest.raises(ValueError, match="shapes"):
        merge(base, extra)


def test_runs_pooled_by_protocol_and_the_cross_dataset_matrix(tmp_path):
    def run(method, seed, acc, cross=None, dataset="fer2013"):
        record = {
            "method": method,
            "seed": seed,
            "epochs_run": 10,
            "dataset": {"name": dataset},
            "config": {"model": {"backbone": "resnet18"}, "train": {"seed": seed}},
            "evaluations": {"supervised": {"val": metrics(acc), "test": metrics(acc - 0.01)}},
        }
        if cross:
            record["cross_dataset"] = {k: {"metrics": metrics(v)} for k, v in cross.items()}
        return record

    records = [
        run("supervised", 0, 0.60, {"ferplus/test": 0.50}),
        run("supervised", 1, 0.62, {"ferplus/test": 0.54}),
        run("ran", 0, 0.64, dataset="ferplus"),
        {
            "method": "byol",
            "seed": 0,
            "config": {"seed": 0},
            "evaluations": {"linear": {"val": metrics(0.4)}, "knn": {"val": metrics(0.35)}},
        },
    ]
    for i, record in enumerate(records):
        runs.write_record(tmp_path / f"r{i}", record)
    loaded = runs.load_records(tmp_path)
    pooled = results.by_protocol(loaded).set_index(["method", "protocol"])
    assert pooled.loc[("supervised", "supervised"), "seeds"] == 2
    assert pooled.loc[("supervised", "supervised"), "accuracy"] == pytest.approx(0.61)
    assert pooled.loc[("byol", "kNN"), "accuracy"] == pytest.approx(0.35)
    matrix = results.cross_dataset_matrix(loaded)
    assert list(matrix.index) == ["supervised (fer2013)"]  # only runs evaluated elsewhere
    assert matrix.loc["supervised (fer2013)", "ferplus/test"] == pytest.approx(0.52)
    assert matrix.loc["supervised (fer2013)", "fer2013/test"] == pytest.approx(0.60)
    reference = results.reference_table()
    assert set(reference["source"].str.endswith("seed report")) == {True}  # labelled, kept apart


def test_not_above_chance_flags_a_constant_guess_and_skips_smoke_tests(tmp_path):
    """Quick mode's check (notebook 09): a model that always says the largest class, or guesses at random,
    is flagged; one that learned is not; a smoke test (capped steps) is not judged."""
    from utils.evaluation.metrics import classification_metrics

    rng = np.random.default_rng(0)
    classes = [f"c{i}" for i in range(7)]
    y = np.r_[np.zeros(40, int), rng.integers(1, 7, 70)]  # class 0 is the largest: 40 of 110

    def evaluated(pred):
        return {"val": classification_metrics(y, np.eye(7)[pred], classes)}

    learned = np.where(rng.random(len(y)) < 0.7, y, rng.integers(0, 7, len(y)))
    records = [
        {"method": "constant", "run": "c", "evaluations": {"supervised": evaluated(np.zeros_like(y))}},
        {"method": "random", "run": "r", "evaluations": {"knn": evaluated(rng.integers(0, 7, len(y)))}},
        {"method": "learned", "run": "l", "evaluations": {"linear": evaluated(learned)}},
        {"method": "smoke", "run": "s", "steps_per_epoch_cap": 2, "evaluations": {"supervised": evaluated(y * 0)}},
    ]
    weak = results.not_above_chance(records, "val", skip=())
    assert sorted(weak["method"]) == ["constant", "random"]
    assert sorted(results.not_above_chance(records, "val")["method"]) == ["constant"]  # kNN skipped by default
    constant = weak[weak["method"] == "constant"].iloc[0]
    assert constant["accuracy"] == pytest.approx(40 / 110) == constant["largest_class_share"]
    assert constant["balanced_floor"] == pytest.approx(1.5 / 7)
    assert results.not_above_chance(records[2:], "val").empty


def test_the_results_show_the_sample_when_the_notebooks_fell_back_to_it(capsys):
    """The README's first command on a machine without FER2013 trains on the bundled sample: the results
    notebook then shows those runs, loudly marked, instead of an empty table; real runs win when there are any."""
    on = [{"run": "s", "dataset": {"name": "sample"}}, {"run": "p", "dataset": {"name": "sample-ferplus"}}]
    real = [{"run": "f", "dataset": {"name": "fer2013"}}]
    shown, name = results.records_to_show(on, "fer2013")
    assert (name, [r["run"] for r in shown]) == ("sample", ["s"])
    assert "SYNTHETIC sample" in capsys.readouterr().out
    shown, name = results.records_to_show(on + real, "fer2013")
    assert (name, [r["run"] for r in shown]) == ("fer2013", ["f"])
    assert capsys.readouterr().out == ""  # nothing to announce
    shown, name = results.records_to_show(on + real, "fer2013", quick=True)  # FER_QUICK=1: the sample's runs
    assert (name, [r["run"] for r in shown]) == ("sample", ["s"]) and "QUICK MODE" in capsys.readouterr().out
    assert results.records_to_show(real, "rafdb") == ([], "rafdb")  # no runs anywhere: an empty table, no banner
    assert capsys.readouterr().out == ""


def test_a_capped_run_is_another_run_and_says_so(tmp_path, sample):
    """steps_per_epoch (a smoke test) is part of a run's identity and record, and tables mark it."""
    from utils.core.engine import TrainConfig
    from utils.methods.supervised import SupervisedConfig

    config = SupervisedConfig(stem_stride=4, tta=None)
    train = TrainConfig(epochs=1, batch_size=32, amp=False)
    kwargs = {"device": "cpu", "progress": False, "checkpoint_dir": tmp_path}
    capped = runs.run(config, sample, train, steps_per_epoch=1, **kwargs)
    assert capped.record["steps_per_epoch_cap"] == 1
    assert sum(h["steps"] for h in capped.record["history"]) == 1
    again = runs.run(config, sample, train, steps_per_epoch=2, **kwargs)
    assert again.run_dir != capped.run_dir and not again.loaded
    assert "smoke test: 1 step per epoch" in results.summary_table([capped.record])["variant"].iloc[0]
