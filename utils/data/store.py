"""The face store: prepared faces on disk as memory-mapped ``.npy`` arrays, written chunk by chunk, resumable.

:func:`utils.data.faces.prepare` writes every prepared dataset into a store, a folder
``data/cache/<dataset>-faces-<key>/`` (the key names the dataset's content and the preprocessing settings):

==================  ==================================================================================
``store.json``      the settings key, the number of rows, the chunk size, each array's dtype and shape
``images.npy``      ``(N, S, S)`` or ``(N, S, S, 3)`` uint8 faces
``heatmaps.npy``    ``(N, S, S)`` uint8 landmark heatmaps
``landmarks.npy``   ``(N, 68, 2)`` float32 landmarks in output pixels (NaN: none)
``face_found.npy``  ``(N,)`` bool, a face was detected
``ok.npy``          ``(N,)`` bool, the image could be read (the others are listed in ``problems.jsonl``)
``done.log``        the finished chunks, one number per line
==================  ==================================================================================

The arrays are created at their full size with the store (sparse files: no disk space is used until rows
are written), so a finished store opens with ``np.load(mmap_mode="r")``, as nanoGPT reads its tokens: no
row is read until it is indexed, and the OS may drop the pages again. A million 48-px faces are about
5 GB on disk and nothing in memory.

Rows are written with ``os.pwrite`` and ``fsync``; only then is the chunk's number appended to ``done.log``.
An interrupted preparation (killed, Ctrl-C, a full disk) therefore resumes from the chunks in the log: a
chunk missing from it is prepared again from its first row, and one in it never is. A full disk is an
``OSError`` from ``pwrite`` (never a crash inside a mapped page); :class:`StoreFull` says how many chunks are
finished and kept. Two processes preparing the same store at once (notebooks run side by side) share it: the
store is created by an atomic rename, and a chunk both write holds the same bytes either way.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

META = "store.json"
DONE = "done.log"
PROBLEMS = "problems.jsonl"
VERSION = 1


class StoreFull(OSError):
    """The disk filled up while a store was written; the finished chunks are kept and the next run resumes."""


@dataclass
class FaceStore:
    """One store folder (see the module docstring). Create or reopen it with :meth:`open`."""

    folder: Path
    meta: dict

    # ---------------------------------------------------------------------------------------- opening

    @classmethod
    def open(cls, folder, key: str, rows: int, chunk: int, fields: dict[str, tuple[str, tuple]]) -> FaceStore:
        """Reopen the store at ``folder`` written for ``key``, or create it (atomically) when there is none.

        Args:
            key: the settings key; a folder holding another key's store is replaced.
            rows: number of rows (images) the store holds when complete.
            chunk: rows per chunk, for a new store (a reopened one keeps its own).
            fields: ``{array name: (dtype, shape of one row)}``.
        """
        folder = Path(folder)
        meta_path = folder / META
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
                if meta.get("key") == key and meta.get("rows") == rows and meta.get("version") == VERSION:
                    return cls(folder, meta)
            except (OSError, ValueError):
                pass
            shutil.rmtree(folder)  # another key's or a damaged store: its name is ours now
        elif folder.exists():
            shutil.rmtree(folder)
        meta = {
            "version": VERSION,
            "key": key,
            "rows": int(rows),
            "chunk": int(max(1, chunk)),
            "fields": {
                name: {"dtype": np.dtype(dtype).str, "shape": list(shape)} for name, (dtype, shape) in fields.items()
            },
        }
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.parent / f".{folder.name}-{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            for name, spec in meta["fields"].items():
                shape = (int(rows), *spec["shape"])
                with open(tmp / f"{name}.npy", "wb") as f:  # the header, then a sparse body of the full size
                    header = {"descr": spec["dtype"], "fortran_order": False, "shape": shape}
                    np.lib.format.write_array_header_1_0(f, header)
                    body = int(np.prod(shape, dtype=np.int64)) * np.dtype(spec["dtype"]).itemsize
                    f.truncate(f.tell() + body)
            (tmp / DONE).touch()
            (tmp / META).write_text(json.dumps(meta, indent=1))
            os.replace(tmp, folder)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if (folder / META).is_file():  # another process (a notebook, a test worker) created it first: share it
                return cls(folder, json.loads((folder / META).read_text()))
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(folder, meta)

    # ----------------------------------------------------------------------------------------- layout

    @property
    def rows(self) -> int:
        return self.meta["rows"]

    @property
    def chunk(self) -> int:
        return self.meta["chunk"]

    @property
    def chunks(self) -> int:
        return -(-self.rows // self.chunk)

    def chunk_rows(self, k: int) -> range:
        return range(k * self.chunk, min(self.rows, (k + 1) * self.chunk))

    def done(self) -> set[int]:
        """The finished chunks (a line cut short by a kill is not one)."""
        text = (self.folder / DONE).read_text() if (self.folder / DONE).is_file() else ""
        lines = text.split("\n")
        return {int(line) for line in lines[:-1] if line.strip().isdigit()}  # the last piece has no newline yet

    def todo(self) -> list[int]:
        done = self.done()
        return [k for k in range(self.chunks) if k not in done]

    @property
    def complete(self) -> bool:
        return not self.todo()

    def _offset(self, name: str) -> int:
        with open(self.folder / f"{name}.npy", "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            read(f)
            return f.tell()

    # ---------------------------------------------------------------------------------------- writing

    def write(self, k: int, arrays: dict[str, np.ndarray], problems=()) -> None:
        """Write chunk ``k``'s rows of every array, then record the chunk as finished.

        Args:
            problems: ``(row, file, reason)`` for the chunk's unreadable images (``row`` within the store).

        Raises:
            StoreFull: the disk is full; the chunks finished before this one are kept.
        """
        span = self.chunk_rows(k)
        try:
            for name, spec in self.meta["fields"].items():
                data = np.ascontiguousarray(arrays[name], dtype=np.dtype(spec["dtype"]))
                if data.shape != (len(span), *spec["shape"]):
                    raise ValueError(f"chunk {k} of {name}: shape {data.shape}, expected {(len(span), *spec['shape'])}")
                offset = self._offset(name) + span.start * (data.nbytes // max(1, len(span)))
                fd = os.open(self.folder / f"{name}.npy", os.O_WRONLY)
                try:
                    view, written = memoryview(data).cast("B"), 0
                    while written < len(view):
                        written += os.pwrite(fd, view[written:], offset + written)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            if problems:
                line = json.dumps({"chunk": k, "problems": [[int(r), str(f), str(why)] for r, f, why in problems]})
                _append(self.folder / PROBLEMS, line)
            _append(self.folder / DONE, str(k))
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                finished = len(self.done())
                raise StoreFull(
                    e.errno,
                    f"{self.folder}: disk full while writing chunk {k}; the {finished} finished chunks of "
                    f"{self.chunks} ({finished * self.chunk:,} of {self.rows:,} faces at most) are kept and usable: "
                    "free some space and prepare again to resume from them",
                ) from e
            raise

    # ---------------------------------------------------------------------------------------- reading

    def arrays(self, mmap: bool = True) -> dict[str, np.ndarray]:
        """Every array, memory-mapped read-only (or read into memory with ``mmap=False``)."""
        out = {}
        for name in self.meta["fields"]:
            path = self.folder / f"{name}.npy"
            if self.rows == 0 or not mmap:
                out[name] = np.load(path)
            else:
                out[name] = np.load(path, mmap_mode="r")
        return out

    def finished_rows(self) -> np.ndarray:
        """The rows of the finished chunks, in order (all rows when the store is complete)."""
        done = sorted(self.done())
        if not done:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([np.arange(r.start, r.stop) for r in map(self.chunk_rows, done)]).astype(np.int64)

    def problems(self) -> list[tuple[int, str, str]]:
        """``(row, file, reason)`` of every unreadable image in a finished chunk."""
        path = self.folder / PROBLEMS
        if not path.is_file():
            return []
        done, out = self.done(), []
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:  # cut short by a kill: its chunk is not finished either
                continue
            if entry["chunk"] in done:
                out += [tuple(p) for p in entry["problems"]]
        return sorted(set(out))  # two processes preparing one store at once both log a chunk's problems


def _append(path: Path, line: str) -> None:
    with open(path, "a+b") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
            line = "#\n" + line  # a line cut short by a kill ("1" of "12") is spoiled, never read as a chunk
        f.write((line + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


class Rows:
    """Rows of one or more arrays (memory-mapped ones, typically), seen as one array and read only when indexed.

    ``Rows([(a, None), (b, index)])`` is ``np.concatenate([a, b[index]])`` without reading either: indexing
    it with an integer, a slice, an index or a boolean array reads those rows (in storage order, for
    locality) into a new array. :func:`utils.data.faces.merge` joins a million-face store with a labelled
    set this way.
    """

    def __init__(self, parts):
        self.parts = [(array, None if index is None else np.asarray(index, dtype=np.int64)) for array, index in parts]
        if not self.parts:
            raise ValueError("Rows needs at least one array")
        lengths = [len(a) if i is None else len(i) for a, i in self.parts]
        tails = {tuple(a.shape[1:]) for a, _ in self.parts}
        if len(tails) != 1:
            raise ValueError(f"cannot stack rows of different shapes {sorted(tails)}")
        self.starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.dtype = np.result_type(*[a.dtype for a, _ in self.parts])
        self.shape = (int(self.starts[-1]), *tails.pop())

    @classmethod
    def stack(cls, arrays) -> Rows:
        parts = []
        for a in arrays:
            parts += a.parts if isinstance(a, Rows) else [(a, None)]
        return cls(parts)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"Rows({self.shape}, {self.dtype}, {len(self.parts)} parts)"

    def __array__(self, dtype=None, copy=None):
        out = self.take(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            head, rest = key[0], key[1:]
            out = self[head]
            return out[rest] if isinstance(head, (int, np.integer)) else out[(slice(None), *rest)]
        if isinstance(key, (int, np.integer)):
            return self.take(np.array([int(key)]))[0]
        if isinstance(key, slice):
            return self.take(np.arange(*key.indices(len(self))))
        key = np.asarray(key)
        if key.dtype == bool:
            if key.shape != (len(self),):
                raise IndexError(f"boolean index of shape {key.shape} for {len(self)} rows")
            key = np.flatnonzero(key)
        return self.take(key)

    def take(self, rows) -> np.ndarray:
        """The rows ``rows`` (ints, negative from the end) as a new array."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        rows = np.where(rows < 0, rows + len(self), rows)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        part = np.searchsorted(self.starts, rows, side="right") - 1
        for p in np.unique(part):
            where = np.flatnonzero(part == p)
            array, index = self.parts[p]
            local = rows[where] - self.starts[p]
            if index is not None:
                local = index[local]
            order = np.argsort(local, kind="stable")
            out[where[order]] = array[local[order]]
        return out
