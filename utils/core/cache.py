"""A small on-disk cache of NumPy arrays, keyed by the settings that produced them, written atomically.

Used for the preprocessed faces (:mod:`utils.data.faces`) and the heatmap-neighbour index
(:mod:`utils.methods.neighbours`). A cache file is written to a temporary name in the same folder and renamed
into place only once complete, so an interrupted run never leaves a file that a later run loads; a file
that does not load (truncated by a full disk, written by another version) is recomputed, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np

_KEY_ARRAY = "__cache_key__"
_STALE_SECONDS = 3600  # temporary files older than this are leftovers of interrupted runs


def settings_key(settings: dict) -> str:
    """A stable hex digest of a JSON-serialisable settings dict (key order does not matter)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def cache_path(folder, prefix: str, key: str) -> Path:
    return Path(folder) / f"{prefix}-{key[:16]}.npz"


def load(path, key: str) -> dict[str, np.ndarray] | None:
    """The arrays saved at ``path`` under ``key``, or None when absent, unreadable or written for another key."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            if _KEY_ARRAY not in f.files or str(f[_KEY_ARRAY]) != key:
                warnings.warn(f"{path}: cache written for other settings; recomputing", stacklevel=2)
                return None
            return {name: f[name] for name in f.files if name != _KEY_ARRAY}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        warnings.warn(f"{path}: unreadable cache ({e}); recomputing", stacklevel=2)
        return None


def save(path, key: str, arrays: dict[str, np.ndarray]) -> Path:
    """Write ``arrays`` to ``path`` atomically (temporary file, fsync, rename). Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays, **{_KEY_ARRAY: np.array(key)})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt included: never leave a partial file behind
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def cached(folder, prefix: str, settings: dict, compute, refresh: bool = False) -> tuple[dict[str, np.ndarray], bool]:
    """Load the arrays for ``settings`` from ``folder``, or ``compute()`` and save them.

    Returns:
        ``(arrays, loaded)`` where ``loaded`` says whether they came from disk.
    """
    key = settings_key(settings)
    path = cache_path(folder, prefix, key)
    if not refresh:
        arrays = load(path, key)
        if arrays is not None:
            return arrays, True
    arrays = compute()
    save(path, key, arrays)
    return arrays, False


def _remove_stale_temporaries(folder: Path) -> None:
    now = time.time()
    for tmp in folder.glob(".*.tmp"):
        try:
            if now - tmp.stat().st_mtime > _STALE_SECONDS:
                tmp.unlink()
        except OSError:
            pass
