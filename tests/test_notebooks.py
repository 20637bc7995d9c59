"""The notebooks' parameters cells, as papermill reads them (``papermill -p NAME VALUE`` is how the README and
the closing notes run every real-data figure)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import papermill
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
ASSIGNMENT = re.compile(r"^([A-Z][A-Z0-9_]*)\s*=")


def parameters_cell(path: Path) -> list[str]:
    cells = [c for c in json.loads(path.read_text())["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(cells) == 1, f"{path.name}: expected one cell tagged 'parameters', found {len(cells)}"
    return "".join(cells[0]["source"]).splitlines()


def test_there_are_notebooks():
    assert len(NOTEBOOKS) >= 8


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_reads_every_parameter(path):
    """A line papermill cannot parse (e.g. a comment holding ``=``) is dropped with a warning, and ``-p`` on
    that name is then reported as unknown: every assignment in the cell must come back as a parameter."""
    written = [m.group(1) for line in parameters_cell(path) if (m := ASSIGNMENT.match(line))]
    assert written, f"{path.name}: the parameters cell assigns nothing"
    read = list(papermill.inspect_notebook(str(path)))
    assert read == written, f"{path.name}: papermill reads {read}, the cell assigns {written}"


def test_the_runner_stores_no_progress_bars_and_keeps_a_users_choice(monkeypatch, tmp_path):
    """``python -m utils.notebooks`` executes copies that are read afterwards: bars drawn by tqdm would be
    stored where they stopped. It turns them off unless TQDM_DISABLE is already set."""
    import utils.notebooks

    seen = []
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: seen.append(os.environ.get("TQDM_DISABLE")))
    monkeypatch.setattr(utils.notebooks, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(utils.notebooks, "NOTEBOOK_DIR", tmp_path / "notebooks")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_a.ipynb").write_text("{}")
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert utils.notebooks.main(["01"]) == 0
    monkeypatch.setenv("TQDM_DISABLE", "0")
    assert utils.notebooks.main(["01"]) == 0
    assert seen == ["1", "0"]


@pytest.mark.skipif(os.name != "posix", reason="local socket transport is POSIX only")
def test_the_runner_executes_a_notebook_and_its_kernel_prints_no_transport_warning(monkeypatch, tmp_path, capfd):
    """The kernels of ``python -m utils.notebooks`` talk over a local socket file: ipykernel 7 prints, on every
    start over TCP, a warning that the channel is unencrypted, which a user would see once per notebook."""
    import nbformat

    import utils.notebooks

    monkeypatch.setattr(utils.notebooks, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(utils.notebooks, "NOTEBOOK_DIR", tmp_path / "notebooks")
    (tmp_path / "notebooks").mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "notebooks" / "01_a.ipynb")
    assert utils.notebooks.main(["01"]) == 0
    executed = nbformat.read(tmp_path / "notebooks" / "executed" / "01_a.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["text"] == "42\n"
    assert "without encryption" not in capfd.readouterr().err
