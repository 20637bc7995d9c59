"""Run the numbered notebooks top to bottom: ``python -m utils.notebooks [--quick [--store]] [01 03 ...]``.

Executed copies go to ``notebooks/executed/`` (the stored notebooks are left as they are). A notebook whose
dataset is missing runs on the bundled sample, and says so; ``--quick`` forces that (``FER_QUICK=1``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from utils.core.runtime import REPO_ROOT

NOTEBOOK_DIR = REPO_ROOT / "notebooks"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.notebooks", description=__doc__.splitlines()[0])
    parser.add_argument("only", nargs="*", help="notebook numbers or names to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="the bundled sample with tiny settings (FER_QUICK=1)")
    parser.add_argument(
        "--store", action="store_true", help="also copy each executed notebook over the stored one (with --quick)"
    )
    parser.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="set a parameter in every notebook that has it (papermill -p)",
    )
    args = parser.parse_args(argv)

    import papermill

    if args.store and not args.quick:
        parser.error(
            "--store keeps quick-mode runs only (the stored notebooks are executed on the sample): add --quick"
        )
    if args.quick:
        os.environ["FER_QUICK"] = "1"
    # the executed copies are read after the run: progress bars would be stored where they stopped (often at
    # 0 %, as text, without the widget that drew them); each notebook's time is printed here instead
    os.environ.setdefault("TQDM_DISABLE", "1")
    notebooks = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if args.only:
        notebooks = [nb for nb in notebooks if any(nb.name.startswith(o) or nb.stem == o for o in args.only)]
    if not notebooks:
        print(f"no notebook matches {args.only}", file=sys.stderr)
        return 2
    out_dir = NOTEBOOK_DIR / "executed"
    out_dir.mkdir(exist_ok=True)
    # kernels talk over a local socket file rather than TCP ports, of which ipykernel 7 warns, per notebook, that
    # they are unencrypted; Windows has no such sockets and keeps TCP
    kernel = {}
    if os.name == "posix":
        from traitlets.config import Config

        kernel["config"] = Config({"KernelManager": {"transport": "ipc"}})
    for nb in notebooks:
        params = {}
        for name, value in args.parameter:
            params[name] = _parse(value)
        tic = time.perf_counter()
        print(f"running {nb.name} ...", flush=True)
        papermill.execute_notebook(
            str(nb), str(out_dir / nb.name), parameters=params, cwd=str(NOTEBOOK_DIR), progress_bar=False, **kernel
        )
        print(f"  done in {time.perf_counter() - tic:.0f} s -> {out_dir.relative_to(REPO_ROOT) / nb.name}", flush=True)
        if args.store:
            store(out_dir / nb.name, nb)
    return 0


def store(executed, stored) -> None:
    """Copy an executed notebook over the stored one without what only the executing machine knows
    (papermill's paths and timings, per-cell execution times): the repository keeps its notebooks executed in
    quick mode, and nbval compares their deterministic outputs."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        for key in ("papermill", "execution"):
            cell.metadata.pop(key, None)
        if cell.metadata.get("tags") == []:
            del cell.metadata["tags"]
    nbformat.write(nb, stored)


def _parse(value: str):
    """papermill-style values: numbers, booleans, None and JSON lists stay typed; anything else is a string."""
    import json

    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return {"True": True, "False": False, "None": None}.get(value, value)


if __name__ == "__main__":
    sys.exit(main())
