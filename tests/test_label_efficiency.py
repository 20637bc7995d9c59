"""The label-efficiency protocol: stratified, nested, seeded label subsets; fine-tuning and probes on them
recorded as their own runs and entries; the table the results notebook draws."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from utils.core import runs
from utils.core.engine import TrainConfig
from utils.evaluation import label_efficiency as le
from utils.methods.floors import RandomInitConfig
from utils.methods.supervised import SupervisedConfig


def test_subset_is_stratified_and_keeps_every_other_split_whole(sample):
    subset = le.labelled_subset(sample, 0.1, seed=0)
    train = sample.split_indices("train")
    for c in np.unique(sample.labels[train]):
        n = int((sample.labels[train] == c).sum())
        assert int((subset.labels[subset.splits == "train"] == c).sum()) == max(1, round(0.1 * n))
    for split in ("val", "test"):
        np.testing.assert_array_equal(subset.rows[subset.splits == split], sample.rows[sample.splits == split])
        np.testing.assert_array_equal(subset.images[subset.splits == split], sample.images[sample.splits == split])
    assert subset.labelled == {"fraction": 0.1, "seed": 0, "train_rows": int((subset.splits == "train").sum())}


def test_subsets_are_nested_for_a_seed_and_differ_between_seeds(sample):
    def train_rows(fraction, seed):
        s = le.labelled_subset(sample, fraction, seed)
        return set(s.rows[s.splits == "train"].tolist())

    assert train_rows(0.05, 0) < train_rows(0.2, 0) < train_rows(0.6, 0)
    assert train_rows(0.2, 0) != train_rows(0.2, 1)
    assert train_rows(0.2, 1) == train_rows(0.2, 1)


def test_every_class_keeps_one_image_at_the_smallest_fraction(sample):
    subset = le.labelled_subset(sample, 1e-6, seed=3)
    kept = subset.labels[subset.splits == "train"]
    assert sorted(kept.tolist()) == sorted(np.unique(sample.labels[sample.splits == "train"]).tolist())


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, float("nan")])
def test_bad_fractions_are_refused(sample, fraction):
    with pytest.raises(ValueError, match="label fraction must be in"):
        le.labelled_subset(sample, fraction)


def test_all_labels_is_the_same_data_marked_and_a_subset_is_not_subset_again(sample):
    whole = le.labelled_subset(sample, 1.0, seed=2)
    assert whole.images is sample.images and whole.splits is sample.splits
    assert whole.labelled == {"fraction": 1.0, "seed": 2, "train_rows": int((sample.splits == "train").sum())}
    with pytest.raises(ValueError, match="already a labelled subset"):
        le.labelled_subset(le.labelled_subset(sample, 0.5), 0.5)


def test_the_label_share_is_part_of_a_runs_identity(sample):
    plain = runs.data_record(sample)
    whole = runs.data_record(le.labelled_subset(sample, 1.0, 0))
    tenth = runs.data_record(le.labelled_subset(sample, 0.1, 0))
    other_seed = runs.data_record(le.labelled_subset(sample, 0.1, 1))
    assert "labelled" not in plain  # every other run keeps the folder it had
    assert tenth["labelled"]["fraction"] == 0.1 and whole["labelled"]["fraction"] == 1.0
    folders = {runs.run_dir("x", {"data": d}).name for d in (plain, whole, tenth, other_seed)}
    assert len(folders) == 4


def test_a_small_subset_is_repeated_whole_up_to_the_epoch_share(sample):
    subset = le.labelled_subset(sample, 0.05, seed=0)
    kept = subset.rows[subset.splits == "train"]
    out = le.repeated(subset, 0.5, 500)  # 25 images, repeated to at least 250
    rows, counts = np.unique(out.rows[out.splits == "train"], return_counts=True)
    np.testing.assert_array_equal(rows, np.sort(kept))
    assert set(counts) == {out.labelled["repeats"]} and out.labelled["repeats"] == int(np.ceil(250 / len(kept)))
    assert out.labelled["train_rows"] == len(kept)  # distinct images
    np.testing.assert_array_equal(out.rows[out.splits == "val"], sample.rows[sample.splits == "val"])
    assert le.repeated(subset, 0.01, 500) is subset  # already long enough


@pytest.fixture(scope="module")
def protocol(sample, tmp_path_factory):
    """A random-init backbone, fine-tuned with half and all of the labels, and probed with a quarter."""
    root = tmp_path_factory.mktemp("label-efficiency")
    backbone = runs.run(
        RandomInitConfig(stem_stride=4), sample, TrainConfig(seed=0), checkpoint_dir=root, progress=False
    )
    train = TrainConfig(epochs=1, batch_size=32, lr=0.02, warmup_epochs=0, seed=0)
    tuned = {
        f: le.finetune_with_labels(backbone, sample, f, train, min_epoch_share=0.4, checkpoint_dir=root, progress=False)
        for f in (0.25, 0.5, 1.0)
    }
    return root, backbone, tuned


def test_finetuning_trains_on_the_subset_only_and_is_loaded_when_finished(sample, protocol):
    root, backbone, tuned = protocol
    half, whole = tuned[0.5], tuned[1.0]
    assert half.run_dir != whole.run_dir
    expected = int((le.labelled_subset(sample, 0.5, 0).splits == "train").sum())
    assert half.record["dataset"]["split_sizes"]["train"] == expected
    assert half.record["dataset"]["labelled"] == {"fraction": 0.5, "seed": 0, "train_rows": expected}
    assert whole.record["dataset"]["split_sizes"]["train"] == int((sample.splits == "train").sum())
    assert le.label_fraction(half.record) == 0.5 and le.label_fraction(whole.record) == 1.0
    quarter = tuned[0.25].record["dataset"]  # 125 images, repeated twice to reach 0.4 x 500
    assert (
        quarter["labelled"]["repeats"] == 2 and quarter["split_sizes"]["train"] == 2 * quarter["labelled"]["train_rows"]
    )
    train = TrainConfig(epochs=1, batch_size=32, lr=0.02, warmup_epochs=0, seed=0)
    again = le.finetune_with_labels(
        backbone, sample, 0.5, train, min_epoch_share=0.4, checkpoint_dir=root, progress=False
    )
    assert again.loaded and again.run_dir == half.run_dir


def test_a_probe_on_a_subset_holding_every_image_reproduces_the_runs_own_probe(sample, protocol):
    _, backbone, _ = protocol
    assert (sample.splits == "train").sum() < 5000  # so that 0.9999 of each class rounds to all of it
    entry = le.probe_with_labels(backbone, sample, 0.9999, seed=0, device="cpu")
    assert entry["train_rows"] == int((sample.splits == "train").sum())
    for name in ("linear", "knn"):
        assert entry[name]["val"] == backbone.record["evaluations"][name]["val"]
    assert le.probe_with_labels(backbone, sample, 1.0)["linear"] == backbone.record["evaluations"]["linear"]


def test_a_probe_is_recorded_in_the_run_and_reused(sample, protocol, monkeypatch):
    _, backbone, _ = protocol
    path = backbone.run_dir / "metrics.json"
    trained_on = {"cpu": "the machine it was trained on", "cpus": 64}  # not this one
    path.write_text(json.dumps({**json.loads(path.read_text()), "machine": trained_on}))
    entry = le.probe_with_labels(backbone, sample, 0.25, seed=0, device="cpu")
    assert entry["train_rows"] == int((le.labelled_subset(sample, 0.25, 0).splits == "train").sum())
    record = runs.finished(backbone.run_dir)
    assert record["label_efficiency"]["0.25/seed0"]["linear"]["val"]["accuracy"] == entry["linear"]["val"]["accuracy"]
    assert record["machine"] == trained_on  # where the run was trained, not where it was probed
    assert runs.load_run(backbone.run_dir).record["label_efficiency"].keys() >= {"0.25/seed0"}

    def recompute(*args, **kwargs):
        raise AssertionError("a recorded probe was computed again")

    monkeypatch.setattr("utils.evaluation.probes.representation_metrics", recompute)
    assert le.probe_with_labels(backbone, sample, 0.25, seed=0, device="cpu") == entry


def test_probes_refuse_classifiers_and_other_data(sample, protocol, tmp_path):
    _, backbone, tuned = protocol
    with pytest.raises(ValueError, match="is a classifier"):
        le.probe_with_labels(tuned[0.5], sample, 0.5)
    other = dataclasses.replace(sample, name="rafdb")
    with pytest.raises(ValueError, match="was trained on sample, not rafdb"):
        le.probe_with_labels(backbone, other, 0.5)


def test_the_table_has_a_row_per_protocol_fraction_and_seed(sample, protocol):
    root, backbone, tuned = protocol
    le.probe_with_labels(backbone, sample, 0.25, seed=0, device="cpu")
    smoke = runs.run(
        SupervisedConfig(stem_stride=4, tta=None),
        sample,
        TrainConfig(epochs=1, batch_size=32, seed=0),
        checkpoint_dir=root,
        progress=False,
        steps_per_epoch=1,
    )
    other = runs.finetune(
        backbone, sample, TrainConfig(epochs=1, batch_size=32, seed=0), checkpoint_dir=root, progress=False
    )
    table = le.label_efficiency_table(runs.load_records(root), sample.name)
    assert smoke.run_dir.name not in set(table["run"])  # smoke tests are not results
    assert other.run_dir.name not in set(table["run"])  # a fine-tune of another protocol (notebooks 03-05)
    finetunes = table[table["protocol"] == "fine-tune"].set_index("fraction")
    assert set(finetunes.index) == {0.25, 0.5, 1.0}
    assert finetunes.loc[0.25, "train_rows"] == tuned[0.25].record["dataset"]["labelled"]["train_rows"]
    assert finetunes.loc[0.5, "accuracy"] == tuned[0.5].record["evaluations"]["finetune"]["val"]["accuracy"]
    assert set(finetunes["init"]) == {"random-init"}
    linear = table[table["protocol"] == "linear"]
    assert sorted(linear["fraction"]) == [0.25, 0.9999, 1.0]
    pooled = le.pooled(table)
    assert (pooled["seeds"] == 1).all() and len(pooled) == len(table)
    assert le.label_efficiency_table([], "fer2013").empty


def test_the_newest_start_point_matches_backbone_stem_width_and_seed():
    def record(method, written, seed=0, **model):
        model = {"backbone": "resnet18", "channels": "gray", "stem_stride": 2, **model}
        return {
            "method": method,
            "protocol": "floor" if method == "random-init" else "pretrain",
            "dataset": {"name": "fer2013"},
            "config": {"model": model},
            "seed": seed,
            "written": written,
            "run_dir": f"{method}-{written}",
        }

    raw = {**record("raw-pixels", "1", seed=None), "config": {"model": {"channels": "gray"}}}
    records = [
        record("hncl", "1"),  # written before widths existed: the default width
        record("hncl", "2", width=32),
        record("hncl", "3", width=32, seed=1),
        record("hncl", "4", stem_stride=4),
        record("random-init", "1", width=32),
        {**record("hncl", "5", width=32), "steps_per_epoch_cap": 2},  # a smoke test
        raw,
    ]
    inits = ["random-init", "raw-pixels", "hncl", "moco_v2"]

    def chosen(**kwargs):
        picked = le.newest_pretrained(records, "fer2013", inits, "resnet18", "gray", **kwargs)
        return {m: r["run_dir"] for m, r in picked.items()}

    assert chosen(seed=0, stem_stride=2, width=32) == {
        "random-init": "random-init-1",
        "raw-pixels": "raw-pixels-1",
        "hncl": "hncl-2",
    }
    assert chosen(seed=0, stem_stride=2, width=64) == {"raw-pixels": "raw-pixels-1", "hncl": "hncl-1"}
    assert chosen(seed=0, stem_stride=None)["hncl"] == "hncl-4"  # any stem and width: the newest
    assert chosen(seed=1, stem_stride=2, width=32) == {"raw-pixels": "raw-pixels-1", "hncl": "hncl-3"}


def test_subset_counts_has_a_row_per_fraction_and_a_column_per_class(sample):
    counts = le.subset_counts(sample, [0.25, 1.0], seed=0)
    assert list(counts.index) == ["25 %", "100 %"]
    assert list(counts.columns) == [*sample.classes, "total"]
    assert counts.loc["100 %", "total"] == int((sample.splits == "train").sum())
    quarter = le.labelled_subset(sample, 0.25, 0)
    assert counts.loc["25 %", "total"] == int((quarter.splits == "train").sum())
    assert (counts.drop(columns="total").sum(axis=1) == counts["total"]).all()


def test_start_points_are_the_floors_the_newest_runs_and_the_named_ones(sample, protocol):
    from utils.methods import EncoderConfig

    root, backbone, _ = protocol
    encoder = EncoderConfig(stem_stride=4)
    inits = ["random-init", "raw-pixels", "moco_v2"]
    start = le.start_points(sample, inits, encoder, seed=0, checkpoint_dir=root, progress=False)
    assert list(start) == ["random-init", "raw-pixels"]  # no MoCo v2 run: missing
    assert start["random-init"].run_dir == backbone.run_dir  # the same settings: the finished run is found
    assert start["raw-pixels"].method.kind != "classifier"
    named = le.start_points(sample, inits, encoder, 0, {"moco_v2": backbone.run_dir.name}, root, progress=False)
    assert list(named) == inits and named["moco_v2"].run_dir == backbone.run_dir
    table = le.start_point_table(start)
    assert list(table["init"]) == ["random-init", "raw-pixels"]
    assert table.loc[0, "linear, all labels"] == backbone.record["evaluations"]["linear"]["val"]["accuracy"]


def test_the_protocol_probes_every_fraction_and_smoke_tests_one_finetune(sample, protocol):
    from utils.methods import EncoderConfig

    root, backbone, _ = protocol
    start = le.start_points(
        sample, ["random-init", "raw-pixels"], EncoderConfig(stem_stride=4), 0, None, root, progress=False
    )
    train = TrainConfig(epochs=1, batch_size=32, lr=0.02, warmup_epochs=0, seed=0)
    fractions = [0.25, 0.5]
    used = le.probe_and_finetune(
        start, sample, fractions, 0, train, min_epoch_share=0.4, smoke=True, checkpoint_dir=root, progress=False
    )
    tuned = [runs.finished(root / folder) for folder in used - {r.run_dir.name for r in start.values()}]
    assert len(tuned) == 1  # random-init at the first fraction only; raw pixels have no backbone
    assert tuned[0]["steps_per_epoch_cap"] == 2 and le.label_fraction(tuned[0]) == 0.25
    for run in start.values():
        assert {"0.25/seed0", "0.5/seed0"} <= set(runs.finished(run.run_dir)["label_efficiency"])
    table = le.shown(runs.load_records(root), sample.name, used, fractions, seed=0)
    assert set(table["protocol"]) == {"linear", "knn"}  # the smoke fine-tune is not a result
    assert set(table["fraction"]) == set(fractions) and set(table["run"]) <= used
    grid = le.accuracy_grid(table)
    assert set(grid.index.get_level_values("init")) == {"random-init", "raw-pixels"}
    assert set(grid.columns) == {(p, f) for p in ("knn", "linear") for f in fractions}
    probes_only = le.probe_and_finetune(start, sample, fractions, 0, None, checkpoint_dir=root, progress=False)
    assert probes_only == {r.run_dir.name for r in start.values()}
