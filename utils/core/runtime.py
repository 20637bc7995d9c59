"""Where the suite runs: repository paths, quick mode, device, seeds and versions.

Every notebook's first code cell finds the repository and calls :func:`enter_repository` (on Colab it also
installs what Colab lacks); its imports cell calls :func:`setup`, which prints what a bug report needs
(versions, device) and returns the paths the notebook uses; in quick mode :func:`quick_settings` swaps in
tiny settings and prints each one it changes.
"""

from __future__ import annotations

import os
import platform
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "data"
# where runs are kept; FER_CHECKPOINTS moves them (the tests' notebooks train into a folder of their own)
CHECKPOINT_DIR = Path(os.environ.get("FER_CHECKPOINTS") or REPO_ROOT / "checkpoints")
SAMPLE_DIR = DATA_DIR / "sample"


def quick_mode() -> bool:
    """True when ``FER_QUICK`` is set to a true value: notebooks then run on the bundled sample, tiny."""
    return os.environ.get("FER_QUICK", "").strip().lower() not in ("", "0", "false", "no")


def banner(text: str) -> None:
    """Print ``text`` between two rules, for what a reader must not miss (e.g. results on the synthetic sample)."""
    rule = "=" * 100
    print(f"{rule}\n{text}\n{rule}")


def show_progress(requested: bool = True) -> bool:
    """Whether to draw progress bars: as ``requested``, unless ``TQDM_DISABLE`` is set (stored notebooks are
    executed with it, so that a reader does not see bars frozen where the executing machine left them)."""
    return requested and os.environ.get("TQDM_DISABLE", "").strip().lower() in ("", "0", "false", "no")


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


COLAB_PACKAGES = {"dlib": "dlib-bin", "face_recognition_models": "face-recognition-models"}
"""What Colab lacks (it has torch, OpenCV, scikit-learn, pandas): dlib and its 68-point landmark model."""


def enter_repository() -> Path:
    """Make the repository the working folder and importable, and on Colab install what it lacks. Safe to
    call again. Returns the repository root."""
    import importlib.util
    import subprocess

    os.chdir(REPO_ROOT)
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    if "google.colab" in sys.modules:
        missing = [pkg for module, pkg in COLAB_PACKAGES.items() if importlib.util.find_spec(module) is None]
        if missing:
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
    return REPO_ROOT


def quick_settings(namespace: dict, **values) -> dict:
    """Quick mode: set each ``NAME=value`` in ``namespace`` (a notebook's ``globals()``) and print what changed,
    so that a reader sees which parameters the run did not use. Returns ``{name: (old, new)}``."""
    changed = {}
    for name, new in values.items():
        if name not in namespace:
            raise KeyError(f"{name} is not a parameter of this notebook")
        old = namespace[name]
        if old != new:
            changed[name] = (old, new)
        namespace[name] = new
    if changed:
        print(
            "quick mode (bundled sample, tiny settings) changes: "
            + ", ".join(f"{k} {o!r} -> {n!r}" for k, (o, n) in changed.items())
        )
    return changed


def machine() -> dict:
    """What a run ran on, for its record: CPU model and count, whether the CPU computes bfloat16 natively
    (AMX or AVX512-BF16: mixed precision is fast there, and emulated, slow, elsewhere), and the GPU."""
    import torch

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    bf16 = (
        "amx"
        if torch.cpu._is_amx_tile_supported()
        else "avx512_bf16"
        if torch.cpu._is_avx512_bf16_supported()
        else None
    )
    return {
        "node": platform.node(),
        "cpu": model,
        "cpus": os.cpu_count(),
        "cpu_bf16": bf16,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def provenance() -> dict:
    """Where a run came from, for its record: the repository's commit (and whether files differed from it) and
    the command that started the process (``python -m utils.train ...``, or the notebook kernel's)."""
    import subprocess

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    argv = list(sys.argv)
    if argv and Path(argv[0]).name == "ipykernel_launcher.py":  # a notebook: the kernel cannot know which one
        argv = ["a Jupyter notebook's kernel (set FER_COMMAND to record the notebook and its parameters)"]
    elif argv and argv[0].endswith(".py") and Path(argv[0]).resolve().is_relative_to(REPO_ROOT / "utils"):
        module = Path(argv[0]).resolve().relative_to(REPO_ROOT).with_suffix("")
        argv = ["python", "-m", ".".join(module.parts), *argv[1:]]
    return {
        "commit": commit,
        "uncommitted_changes": bool(status) if status is not None else None,
        "command": os.environ.get("FER_COMMAND") or " ".join(argv),
    }


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
        print(f"device: {dev}   mode: {mode}")
    return session
