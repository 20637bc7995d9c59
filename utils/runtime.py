"""Where the suite runs: repository paths, quick mode, device, seeds and versions.

Every notebook's first code cell calls :func:`setup`, which prints what a bug report needs (versions,
device) and returns the paths the notebook uses.
"""

from __future__ import annotations

import os
import platform
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
CHECKPOINT_DIR = REPO_ROOT / "checkpoints"
SAMPLE_DIR = DATA_DIR / "sample"


def quick_mode() -> bool:
    """True when ``FER_QUICK`` is set to a true value: notebooks then run on the bundled sample, tiny."""
    return os.environ.get("FER_QUICK", "").strip().lower() not in ("", "0", "false", "no")


def pick_device(preferred: str | None = None):
    """The training device: ``preferred`` if given, else CUDA, then Apple's MPS, then the CPU."""
    import torch

    if preferred:
        return torch.device(preferred)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and PyTorch; with ``deterministic`` also ask PyTorch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (seeds code that uses the global generator)
    try:
        import torch
    except ImportError:  # data preparation does not need torch
        return
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def versions() -> dict[str, str]:
    """Versions of Python and of the libraries whose behaviour changes results."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("numpy", "pandas", "torch", "torchvision", "cv2", "dlib", "sklearn"):
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name)
            except ImportError:
                continue
        out[name] = getattr(module, "__version__", "unknown")
    return out


@dataclass
class Session:
    """What :func:`setup` found: the repository paths, the device and whether quick mode is on."""

    root: Path
    data_dir: Path
    checkpoint_dir: Path
    device: object
    quick: bool
    seed: int


def setup(seed: int = 0, device: str | None = None, verbose: bool = True) -> Session:
    """Seed everything, pick the device and print versions; the first call of every notebook."""
    seed_everything(seed)
    dev = pick_device(device)
    session = Session(REPO_ROOT, DATA_DIR, CHECKPOINT_DIR, dev, quick_mode(), seed)
    if verbose:
        info = versions()
        print("  ".join(f"{k} {v}" for k, v in info.items() if k != "platform"))
        mode = "QUICK (bundled sample, tiny settings)" if session.quick else "full"
        print(f"device: {dev}   mode: {mode}   repo: {REPO_ROOT}")
    return session
