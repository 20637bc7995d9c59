"""Make the repository importable (``import utils``) however pytest is started, share the prepared sample, and
split the work between two pytest-xdist workers (``-n 2``): one runs the notebooks (and the torchrun test),
the other the unit tests."""

import os
import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Under pytest-xdist every worker, and every notebook kernel it starts, gets an equal share of the cores, set
# here before torch is imported: PyTorch's OpenMP threads wait for each other at every operation, so two
# workers of two threads each on two cores run several times slower than one worker alone.
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(name, str(max(1, cores // workers)))


def pytest_configure(config):
    """The notebooks under test train into a folder of their own, never reloading the runs the README's first
    command left in checkpoints/ (a change that breaks training must fail here). Set before utils is imported,
    and inherited by every notebook kernel this process starts."""
    if not os.environ.get("FER_CHECKPOINTS"):
        import tempfile

        os.environ["FER_CHECKPOINTS"] = config._fer_checkpoints = tempfile.mkdtemp(prefix="fer-test-checkpoints-")


def pytest_unconfigure(config):
    """Remove the notebooks' checkpoint folder this session made (the process that made it does)."""
    made = getattr(config, "_fer_checkpoints", None)
    if made:
        import shutil

        shutil.rmtree(made, ignore_errors=True)


# unit-test modules that run beside the notebooks, not the other unit tests: the two units of work then take
# about as long (the torchrun test starts three processes of its own for about 25 s)
BESIDE_NOTEBOOKS = ("tests/test_distributed.py",)


def pytest_xdist_make_scheduler(config, log):
    """With ``-n``: two units of work, the notebooks (their cells share one kernel, and they read each other's
    runs: 07 needs 02's, 08 03-05's, 09 all) in their order on one worker with ``BESIDE_NOTEBOOKS``, the unit
    tests (whose module-scoped fixtures train once) on another. Scopes are told apart by node id: pytest 9.2
    ignores the node-id suffix with which ``--dist loadgroup`` groups marked tests (pytest-xdist issue 1386)."""
    if config.getvalue("dist") != "load":  # another --dist asked for explicitly
        return None
    from xdist.scheduler import LoadScopeScheduling

    class NotebooksApart(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::")[0]
            beside = "ipynb" in nodeid.split("[")[0] or path in BESIDE_NOTEBOOKS  # not a test parametrized by one
            return "notebooks" if beside else "unit"

    return NotebooksApart(config, log)


@pytest.fixture(scope="session")
def sample_cache(tmp_path_factory):
    """The face cache the shared sample is prepared into (a fresh process can load it from there)."""
    return tmp_path_factory.mktemp("sample-cache")


@pytest.fixture(scope="session")
def sample(sample_cache):
    """The bundled sample (720 synthetic faces in the FER2013 format), prepared once per test session."""
    from utils.data import load_dataset_or_sample
    from utils.data.faces import FaceConfig, prepare

    ds, _ = load_dataset_or_sample("fer2013", "x", quick=True)
    return prepare(ds, FaceConfig(), cache_dir=sample_cache, workers=1, progress=False)


@pytest.fixture(scope="session")
def finished_runs(sample, tmp_path_factory):
    """One finished run of every method on the sample (``helpers.run_configs``), plus a fine-tuned MoCo v2
    backbone, trained once per session: tests read them; a test that writes into a run copies it first."""
    from helpers import RUN_STEPS, RUN_TRAIN, run_configs

    from utils.core import runs

    root = tmp_path_factory.mktemp("checkpoints")
    kwargs = {"checkpoint_dir": root, "device": "cpu", "progress": False, "steps_per_epoch": RUN_STEPS}
    out = {name: runs.run(config, sample, RUN_TRAIN, **kwargs) for name, config in run_configs().items()}
    out["finetune"] = runs.finetune(out["moco_v2"], sample, RUN_TRAIN, **kwargs)
    return out
