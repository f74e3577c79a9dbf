"""Keep the tutorial notebooks and their jupytext twins in sync.

The ``NN_name.py`` files (jupytext percent format) are the source; edit them, then run::

    python notebooks/sync_notebooks.py            # .py -> .ipynb, keeping the expected outputs
    python notebooks/sync_notebooks.py --execute  # also re-run (CI=true) and store expected outputs

The ``.ipynb`` files are committed without outputs, except for the cells marked
``# NBVAL_CHECK_OUTPUT``: those keep the output of a small-mode (``CI`` set) run,
which ``pytest --nbval-lax notebooks/`` compares against (nbval only compares
cells that have a stored execution count).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import jupytext
import nbformat

HERE = Path(__file__).resolve().parent
MARK = "# NBVAL_CHECK_OUTPUT"


def sources() -> list[Path]:
    return sorted(p for p in HERE.glob("[0-9][0-9]_*.py"))


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop outputs, execution counts and run metadata, except the outputs of checked cells; stable cell ids."""
    for key in ("widgets", "language_info"):
        nb.metadata.pop(key, None)
    seen: set[str] = set()
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.id = hashlib.sha1((cell.cell_type + cell.source).encode()).hexdigest()[:8]
        while cell.id in seen:  # identical cells
            cell.id = hashlib.sha1(cell.id.encode()).hexdigest()[:8]
        seen.add(cell.id)
        if cell.cell_type != "code":
            continue
        if MARK in cell.source and cell.get("outputs"):
            cell.outputs = [o for o in cell.outputs if o.get("output_type") == "stream" and o.get("name") == "stdout"]
            cell.execution_count = cell.execution_count or 1
            for o in cell.outputs:
                o.pop("metadata", None)
        else:
            cell.outputs, cell.execution_count = [], None
    return nb


def to_notebook(py: Path) -> Path:
    """Write ``py``'s notebook, carrying over the stored outputs of unchanged checked cells."""
    ipynb = py.with_suffix(".ipynb")
    nb = jupytext.read(py)
    if ipynb.exists():
        old = {c.source: c for c in nbformat.read(ipynb, as_version=4).cells if c.cell_type == "code"}
        for cell in nb.cells:
            if cell.cell_type == "code" and MARK in cell.source and cell.source in old:
                cell.outputs = old[cell.source].get("outputs", [])
                cell.execution_count = old[cell.source].get("execution_count")
    nbformat.write(strip(nb), ipynb)
    return ipynb


def execute(ipynb: Path, timeout: int = 600) -> None:
    from nbclient import NotebookClient

    os.environ["CI"] = os.environ.get("CI") or "true"
    nb = nbformat.read(ipynb, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}).execute()
    nbformat.write(strip(nb), ipynb)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--execute", action="store_true", help="re-run each notebook (CI=true) to refresh expected outputs")
    ap.add_argument("names", nargs="*", help="only these notebooks (e.g. 01_quickstart)")
    args = ap.parse_args(argv)
    for py in sources():
        if args.names and py.stem not in args.names:
            continue
        ipynb = to_notebook(py)
        if args.execute:
            execute(ipynb)
        print(f"{py.name} -> {ipynb.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
