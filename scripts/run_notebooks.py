#!/usr/bin/env python
"""Run the tutorial notebooks top to bottom (`make notebooks`), or strip their outputs for committing.

    python scripts/run_notebooks.py                    # run every notebooks/*.ipynb, executed copies in runs/notebooks/
    python scripts/run_notebooks.py notebooks/01_inside_gpt2.ipynb
    python scripts/run_notebooks.py --strip            # remove outputs and execution counts in place
    python scripts/run_notebooks.py --check            # exit 1 if any notebook holds outputs

Notebooks run in a fresh `python3` kernel with `notebooks/` as the working directory; a cell that raises
(an `assert` included) stops the run with the cell's error. Files they write go to
`$GPT2SCRATCH_NOTEBOOK_DIR` (default `runs/notebooks/`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def execute(path: Path, timeout: int = 600) -> nbformat.NotebookNode:
    """Run ``path`` in a new kernel (cwd: its folder) and return the executed notebook; raises
    ``nbclient.exceptions.CellExecutionError`` naming the failing cell."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    client.execute()
    return nb


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Remove outputs, execution counts and per-cell execution metadata (what git should not hold)."""
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    return nb


def has_outputs(nb: nbformat.NotebookNode) -> bool:
    return any(
        cell.cell_type == "code"
        and (cell.outputs or cell.execution_count is not None or "execution" in cell.metadata)
        for cell in nb.cells
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/*.ipynb")
    parser.add_argument("--strip", action="store_true", help="strip outputs in place instead of running")
    parser.add_argument("--check", action="store_true", help="exit 1 if a notebook holds outputs")
    parser.add_argument(
        "--out", type=Path, default=REPO / "runs" / "notebooks", help="executed copies go here"
    )
    args = parser.parse_args(argv)
    paths = args.notebooks or notebook_paths()
    if args.strip or args.check:
        dirty = [p for p in paths if has_outputs(nbformat.read(p, as_version=4))]
        if args.strip:
            for p in dirty:
                nbformat.write(strip(nbformat.read(p, as_version=4)), p)
                print(f"stripped {p}")
        elif dirty:
            print("notebooks with outputs (run scripts/run_notebooks.py --strip):", *dirty, sep="\n  ")
            return 1
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        start = time.perf_counter()
        nb = execute(path.resolve())
        nbformat.write(nb, args.out / path.name)
        print(f"{path.name}: ok in {time.perf_counter() - start:.0f} s → {args.out / path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
