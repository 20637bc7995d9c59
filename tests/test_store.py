"""The face store: exact round trips, resuming after kills and a full disk, bad files, streaming batches."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from utils.core.loader import BatchLoader, MappedFaces, block_shuffle, face_tensors
from utils.data import faces, load_dataset, store
from utils.data.faces import FaceConfig, merge, prepare
from utils.data.store import FaceStore, Rows, StoreFull

CHEAP = FaceConfig(detector="haar", landmarks=False, align=False)
FIELDS = ("images", "heatmaps", "landmarks", "face_found", "ok")
REAL_PROCESS_CHUNK = faces._process_chunk


def write_fer_csv(path, n=40, seed=0):
    rng = np.random.default_rng(seed)
    rows = [(i % 7, " ".join(map(str, rng.integers(0, 256, 2304))), "Training") for i in range(n)]
    pd.DataFrame(rows, columns=["emotion", "pixels", "Usage"]).to_csv(path, index=False)
    return path


def arrays_of(prepared) -> dict:
    return {
        "images": np.asarray(prepared.images),
        "heatmaps": np.asarray(prepared.heatmaps),
        "landmarks": np.asarray(prepared.landmarks),
        "face_found": prepared.face_found,
    }


def assert_same(a, b):
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def counting(monkeypatch, fail_at=None):
    """Record the first row of every chunk prepared; raise KeyboardInterrupt at the ``fail_at``-th (0-based)."""
    seen, real = [], REAL_PROCESS_CHUNK

    def wrapped(*args):
        if fail_at is not None and len(seen) == fail_at:
            raise KeyboardInterrupt
        seen.append(args[-1])
        return real(*args)

    monkeypatch.setattr(faces, "_process_chunk", wrapped)
    return seen


@pytest.fixture
def fer(tmp_path):
    return load_dataset("fer2013", write_fer_csv(tmp_path / "fer2013.csv"))


@pytest.fixture
def reference(fer):
    return arrays_of(prepare(fer, CHEAP, cache_dir=False, workers=1, progress=False, chunk=40))


# ----------------------------------------------------------------------------------------- round trip


def test_rows_index_like_the_concatenation_they_stand_for():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 255, (7, 3, 2)), rng.integers(0, 255, (5, 3, 2))
    index = np.array([4, 0, 2])
    rows = Rows.stack([a, Rows([(b, index)])])
    whole = np.concatenate([a, b[index]])
    assert rows.shape == whole.shape and len(rows) == 10 and rows.ndim == 3
    for key in (3, -1, slice(2, 9, 3), np.array([9, 0, 7, 7]), whole[:, 0, 0] > 100, (np.array([1, 8]), 2)):
        np.testing.assert_array_equal(rows[key], whole[key])
    np.testing.assert_array_equal(np.asarray(rows), whole)
    with pytest.raises(IndexError):
        rows[np.array([10])]


def test_store_round_trips_exactly(tmp_path):
    rng = np.random.default_rng(1)
    fields = {"images": ("uint8", (4, 4)), "landmarks": ("float32", (68, 2)), "ok": ("bool", ())}
    data = {
        "images": rng.integers(0, 256, (10, 4, 4), dtype=np.uint8),
        "landmarks": rng.normal(size=(10, 68, 2)).astype(np.float32),
        "ok": rng.random(10) > 0.5,
    }
    data["landmarks"][3] = np.nan
    s = FaceStore.open(tmp_path / "s", "key", 10, 4, fields)
    for k in (2, 0, 1):  # any order, as the worker processes finish
        span = s.chunk_rows(k)
        s.write(k, {name: a[span.start : span.stop] for name, a in data.items()}, [(span.start, "x.jpg", "bad")])
    again = FaceStore.open(tmp_path / "s", "key", 10, 99, fields)  # reopened: keeps its own chunk size
    assert (
        again.complete
        and again.chunk == 4
        and again.problems() == [(0, "x.jpg", "bad"), (4, "x.jpg", "bad"), (8, "x.jpg", "bad")]
    )
    out = again.arrays()
    assert all(isinstance(a, np.memmap) for a in out.values())
    for name in data:
        np.testing.assert_array_equal(out[name], data[name])
    other = FaceStore.open(tmp_path / "s", "another key", 10, 4, fields)  # other settings: a new, empty store
    assert other.todo() == [0, 1, 2]


def test_prepared_faces_are_mapped_from_the_store_and_equal_the_in_memory_ones(fer, reference, tmp_path):
    prepared = prepare(fer, CHEAP, cache_dir=tmp_path / "cache", workers=2, progress=False, chunk=6)
    assert isinstance(prepared.images, np.memmap) and isinstance(prepared.heatmaps, np.memmap)
    assert_same(arrays_of(prepared), reference)
    np.testing.assert_array_equal(prepared.labels, fer.labels)
    again = prepare(fer, CHEAP, cache_dir=tmp_path / "cache", workers=1, progress=False, chunk=6)
    assert again.loaded_from_cache
    assert_same(arrays_of(again), reference)


# ------------------------------------------------------------------------------------------- resuming


def test_resume_after_a_kill_at_a_chunk_boundary(fer, reference, tmp_path, monkeypatch):
    counting(monkeypatch, fail_at=3)  # chunks 0-2 written, then the user stops it
    with pytest.raises(KeyboardInterrupt):
        prepare(fer, CHEAP, cache_dir=tmp_path / "c", workers=1, progress=False, chunk=6)
    seen = counting(monkeypatch)
    prepared = prepare(fer, CHEAP, cache_dir=tmp_path / "c", workers=1, progress=False, chunk=6)
    assert seen == [18, 24, 30, 36]  # only the chunks not finished: none twice, none lost
    assert not prepared.loaded_from_cache
    assert_same(arrays_of(prepared), reference)


def test_resume_after_a_kill_in_the_middle_of_a_chunk(fer, reference, tmp_path, monkeypatch):
    real, calls = os.pwrite, []

    def pwrite(fd, data, offset):
        calls.append(offset)
        if len(calls) == 2 * len(FIELDS) + 2:  # chunk 2: its images and heatmaps written, its landmarks not
            raise KeyboardInterrupt
        return real(fd, data, offset)

    monkeypatch.setattr(store.os, "pwrite", pwrite)
    with pytest.raises(KeyboardInterrupt):
        prepare(fer, CHEAP, cache_dir=tmp_path / "c", workers=1, progress=False, chunk=6)
    monkeypatch.setattr(store.os, "pwrite", real)
    (folder,) = (tmp_path / "c").glob("fer2013-faces-*")
    assert (folder / "done.log").read_text() == "0\n1\n"
    seen = counting(monkeypatch)
    prepared = prepare(fer, CHEAP, cache_dir=tmp_path / "c", workers=1, progress=False, chunk=6)
    assert seen == [12, 18, 24, 30, 36]
    assert_same(arrays_of(prepared), reference)


KILLED = """
import sys, time
from utils.data import faces, load_dataset
real = faces._process_chunk
def slow(*args):
    time.sleep(0.25)
    return real(*args)
faces._process_chunk = slow
config = faces.FaceConfig(detector="haar", landmarks=False, align=False)
faces.prepare(load_dataset("fer2013", sys.argv[1]), config, cache_dir=sys.argv[2], workers=1, progress=False, chunk=4)
"""


def test_resume_after_a_real_kill(fer, reference, tmp_path, monkeypatch):
    script = tmp_path / "prepare.py"
    script.write_text(textwrap.dedent(KILLED))
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    child = subprocess.Popen([sys.executable, str(script), str(fer.root), str(tmp_path / "c")], env=env)
    deadline = time.time() + 60
    log = None
    while time.time() < deadline and child.poll() is None:
        logs = list((tmp_path / "c").glob("fer2013-faces-*/done.log"))
        if logs and logs[0].read_text().count("\n") >= 3:
            log = logs[0]
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert log is not None, "the preparation never got three chunks done"
    done = {int(line) for line in log.read_text().split()}
    assert 3 <= len(done) < 10
    seen = counting(monkeypatch)
    prepared = prepare(fer, CHEAP, cache_dir=tmp_path / "c", workers=1, progress=False, chunk=4)
    assert sorted(seen) == [4 * k for k in range(10) if k not in done]  # the others, each once
    assert_same(arrays_of(prepared), reference)


def test_a_full_disk_keeps_the_finished_chunks_and_says_so(fer, reference, tmp_path, monkeypatch):
    real, calls = os.pwrite, []

    def pwrite(fd, data, offset):
        calls.append(offset)
        if len(calls) > 2 * len(FIELDS):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(store.os, "pwrite", pwrite)
    with pytest.raises(StoreFull, match=r"disk full while writing chunk 2; the 2 finished chunks of 7") as caught:
        prepare(fer, CHEAP, cache_dir=tmp_path / "c", workers=1, progress=False, chunk=6)
    (folder,) = (tmp_path / "c").glob("fer2013-faces-*")
    assert str(folder) in str(caught.value)
    monkeypatch.setattr(store.os, "pwrite", real)
    seen = counting(monkeypatch)
    prepared = prepare(fer, CHEAP, cache_dir=tmp_path / "c", workers=1, progress=False, chunk=6)
    assert seen == [12, 18, 24, 30, 36]
    assert_same(arrays_of(prepared), reference)


# ------------------------------------------------------------------------------------------ bad files


def face_folder(tmp_path):
    """A folder of face images as a user has them: a real face crop, a blank picture, a corrupt and an empty file."""
    from utils.data.sample import draw_face

    folder = tmp_path / "faces"
    (folder / "a").mkdir(parents=True)
    Image.fromarray(draw_face(3, np.random.default_rng(0), size=96)[0]).save(folder / "a" / "face.jpg")
    Image.fromarray(np.full((64, 80), 128, np.uint8)).save(folder / "a" / "blank.png")
    (folder / "a" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "empty.jpg").write_bytes(b"")
    return folder


def test_bad_files_are_counted_and_listed_never_fatal(tmp_path, capsys):
    from utils.data.__main__ import main

    folder = face_folder(tmp_path)
    assert main(["prepare", "faces", str(folder), "--cache-dir", str(tmp_path / "c"), "--workers", "1"]) == 0
    out, err = capsys.readouterr()
    assert "2 unreadable or empty files skipped" in out
    assert "empty.jpg: empty file" in out and "a/corrupt.jpg: cannot read image" in out
    assert "images with no face found" in out and "a/blank.png" in out
    with pytest.warns(UserWarning, match="1 unreadable images skipped"):
        prepared = prepare(load_dataset("faces", folder), cache_dir=tmp_path / "c", progress=False)
    assert prepared.loaded_from_cache and len(prepared) == 2
    assert set(prepared.splits) == {"unlabelled"} and set(prepared.labels) == {-1}
    assert isinstance(prepared.images, Rows)  # the readable rows of the store, unread until indexed
    assert not prepared.face_found[0]  # a/blank.png: kept, counted as without a face


def test_prepare_command_names_a_missing_path(tmp_path, capsys):
    from utils.data.__main__ import main

    assert main(["prepare", "faces", str(tmp_path / "nowhere")]) == 2
    assert str(tmp_path / "nowhere") in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ streaming


@pytest.fixture
def stored(fer, tmp_path):
    return prepare(fer, CHEAP, cache_dir=tmp_path / "cache", workers=1, progress=False, chunk=6)


def test_streamed_rows_are_the_in_memory_rows(stored):
    memory = face_tensors(stored, "train", "gray+heatmap", stream=False)
    mapped = face_tensors(stored, "train", "gray+heatmap", stream=True)
    assert isinstance(mapped.x, MappedFaces) and mapped.x.shape == tuple(memory.x.shape)
    rows = torch.tensor([5, 0, 33, 5])
    torch.testing.assert_close(mapped.x[rows], memory.x[rows])
    torch.testing.assert_close(mapped.x[2:9], memory.x[2:9])
    torch.testing.assert_close(mapped.y, memory.y)


@pytest.mark.parametrize("n, block, window", [(40, 6, 2), (1, 4, 3), (0, 4, 2), (37, 100, 8)])
def test_block_shuffle_visits_every_row_once(n, block, window):
    order = block_shuffle(n, block, window, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(n))


def test_streaming_loader_visits_every_face_once_per_epoch_in_blocks(stored):
    data = face_tensors(stored, "train", "gray", stream=True)
    loader = BatchLoader(data, 16, shuffle=True, seed=3)
    loader.block, loader.window = 8, 2
    seen = []
    for x, _, rows in loader:  # 40 faces: batches of 16, 16 and a last one of 8
        assert len(x) == len(rows) <= 16
        torch.testing.assert_close(x, data.x[rows].float() / 255)
        seen += rows.tolist()
    assert sorted(seen) == list(range(40)) and seen != list(range(40))
    loader.set_epoch(1)
    assert [r.tolist() for *_, r in loader] != [seen[:16], seen[16:32], seen[32:]]


def test_two_processes_read_disjoint_shares(stored, monkeypatch):
    data = face_tensors(stored, "train", "gray", stream=True)
    read = {0: [], 1: []}
    real = MappedFaces.__getitem__
    for rank in (0, 1):

        def recording(self, index, rank=rank):
            read[rank] += torch.as_tensor(index).tolist()
            return real(self, index)

        monkeypatch.setattr(MappedFaces, "__getitem__", recording)
        for _ in BatchLoader(data, 16, shuffle=True, drop_last=True, seed=1, shard=(rank, 2)):
            pass
        monkeypatch.setattr(MappedFaces, "__getitem__", real)
    assert len(read[0]) == len(read[1]) == 16 and not set(read[0]) & set(read[1])


@pytest.mark.parametrize("method", ["hncl"])  # the others share the path; HNCL also indexes the unlabelled faces
def test_self_supervised_methods_pretrain_on_labelled_and_unlabelled_faces_streamed(method, tmp_path, monkeypatch):
    from helpers import RUN_STEPS, RUN_TRAIN, run_configs

    from utils.core import runs
    from utils.core.runtime import SAMPLE_DIR
    from utils.data import ensure_val_split

    sample = ensure_val_split(load_dataset("fer2013", SAMPLE_DIR))
    labelled = prepare(sample, cache_dir=tmp_path / "c", progress=False)
    unlabelled = prepare(load_dataset("faces", face_folder(tmp_path)), cache_dir=tmp_path / "c", progress=False)
    both = merge(labelled, unlabelled)
    assert (both.splits == "unlabelled").sum() == 2 and (both.splits == "train").sum() == (
        labelled.splits == "train"
    ).sum()
    monkeypatch.setenv("FER_STREAM", "1")
    run = runs.run(
        run_configs()[method],
        both,
        RUN_TRAIN,
        checkpoint_dir=tmp_path / "runs",
        progress=False,
        steps_per_epoch=RUN_STEPS,
    )
    record = run.record
    assert record["dataset"]["split_sizes"]["unlabelled"] == 2
    assert "linear" in record["evaluations"] or "knn" in record["evaluations"]


def test_a_cache_written_before_the_store_is_taken_over_without_preparing_again(fer, reference, tmp_path, monkeypatch):
    from dataclasses import asdict

    from utils.core import cache

    settings = {"version": faces.CACHE_VERSION, "dataset": faces._fingerprint(fer), "config": asdict(CHEAP)}
    key = cache.settings_key(settings)
    keep = np.arange(1, 40)  # row 0 was unreadable, as the old format recorded it
    old = {
        "images": reference["images"][keep],
        "landmarks": reference["landmarks"][keep],
        "heatmaps": reference["heatmaps"][keep],
        "face_found": reference["face_found"][keep],
        "rows": keep,
        "bad_rows": np.array([0]),
        "bad_reasons": np.array(["0.png: cannot read image (broken)"]),
    }
    cache.save(cache.cache_path(tmp_path / "c", "fer2013-faces", key), key, old)
    seen = counting(monkeypatch)
    with pytest.warns(UserWarning, match="1 unreadable images skipped"):
        prepared = prepare(fer, CHEAP, cache_dir=tmp_path / "c", workers=1, progress=False, chunk=6)
    assert seen == [] and prepared.loaded_from_cache
    np.testing.assert_array_equal(prepared.rows, keep)
    np.testing.assert_array_equal(np.asarray(prepared.images), reference["images"][keep])
    assert [str(p) for p in prepared.problems] == ["0.png: cannot read image (broken)"]


def test_two_processes_creating_one_store_share_it(tmp_path, monkeypatch):
    fields = {"images": ("uint8", (2, 2))}
    first = FaceStore.open(tmp_path / "s", "key", 4, 2, fields)
    first.write(0, {"images": np.ones((2, 2, 2), np.uint8)})
    # the second process looked before the first had renamed its store into place, and renames after it
    real_is_file, calls = store.Path.is_file, []

    def not_there_yet(self):
        calls.append(self)
        return False if len(calls) == 1 else real_is_file(self)

    monkeypatch.setattr(store.Path, "is_file", not_there_yet)
    monkeypatch.setattr(store.Path, "exists", lambda self: False)
    second = FaceStore.open(tmp_path / "s", "key", 4, 2, fields)
    monkeypatch.undo()
    assert second.done() == {0} and not list(tmp_path.glob(".*.tmp"))


def test_a_done_line_cut_short_by_a_kill_is_no_chunk_and_no_later_line_runs_into_it(tmp_path):
    s = FaceStore.open(tmp_path / "s", "key", 8, 2, {"images": ("uint8", (1,))})
    with open(s.folder / "done.log", "a") as f:
        f.write("0\n1")  # killed while writing "1\n"... or "12\n"
    assert s.done() == {0}
    s.write(3, {"images": np.zeros((2, 1), np.uint8)})
    assert s.done() == {0, 3} and (s.folder / "done.log").read_text() == "0\n1#\n3\n"
