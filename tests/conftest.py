"""Make the repository importable (``import utils``) however pytest is started, and share the prepared sample."""

import sys
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parent.parent)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


@pytest.fixture(scope="session")
def sample_cache(tmp_path_factory):
    """The face cache the shared sample is prepared into (a fresh process can load it from there)."""
    return tmp_path_factory.mktemp("sample-cache")


@pytest.fixture(scope="session")
def sample(sample_cache):
    """The bundled sample (720 synthetic faces in the FER2013 format), prepared once per test session."""
    from utils.data import load_dataset_or_sample
    from utils.faces import FaceConfig, prepare

    ds, _ = load_dataset_or_sample("fer2013", "x", quick=True)
    return prepare(ds, FaceConfig(), cache_dir=sample_cache, workers=1, progress=False)
