"""Checkpoints of a training run: written atomically, loaded with ``weights_only=True``.

``last.pt`` holds everything a resumed run needs to end with the same weights as an uninterrupted one: the
method, optimizer, gradient scaler and weight average, the step and epoch, the schedule fitted to a time
budget, the history and the random states. ``best.pt`` holds the weights of the best epoch so far; ``log.csv``
one row per epoch. Checkpoints hold only tensors and plain Python values.
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

import numpy as np
import torch


def save_atomic(obj, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves a half-written checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)


def rng_state() -> dict:
    """The states of Python's, NumPy's and PyTorch's global generators (and CUDA's), as plain values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (global state, saved for resume)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_resume_point(path: Path, parts: dict, progress: dict) -> None:
    """Write ``last.pt``: the ``state_dict()`` of each of ``parts`` (method, optimizer, scaler, ema; None is
    skipped), the ``progress`` values (epoch, step, history, ...) and the random states."""
    state = {name: part.state_dict() for name, part in parts.items() if part is not None}
    save_atomic({**state, **progress, "rng": rng_state()}, path)


def resume(path: Path, parts: dict, device) -> dict:
    """Load ``last.pt`` into ``parts`` (as saved by :func:`save_resume_point`) and the random states; returns
    the rest of what was saved (epoch, step, history, ...)."""
    state = load_checkpoint(path, map_location=device)
    for name, part in parts.items():
        if part is not None:
            part.load_state_dict(state.pop(name))
    set_rng_state(state.pop("rng"))
    return state


def write_log(path: Path, history: list[dict]) -> None:
    """``log.csv``: one row per epoch, every key any epoch logged as a column; written atomically."""
    keys = list(dict.fromkeys(k for row in history for k in row))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)
