"""The tutorial notebooks: committed without outputs, and each runs top to bottom without an error.

Every notebook asserts the facts it teaches (parity with transformers, loss falls, accuracy above the
majority class, ...), so running it is the test. They run one at a time (one xdist group), each in a
fresh kernel, writing into a temporary folder.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
EXPECTED = [
    "01_inside_gpt2.ipynb",
    "02_openai_checkpoint_to_text.ipynb",
    "03_sms_spam_lora.ipynb",
    "04_instruction_tuning.ipynb",
    "05_architecture_variants.ipynb",
]


def _runner():
    """scripts/run_notebooks.py as a module (what `make notebooks` runs)."""
    spec = importlib.util.spec_from_file_location("run_notebooks", REPO / "scripts" / "run_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("run_notebooks", module)
    spec.loader.exec_module(module)
    return module


runner = _runner()
NOTEBOOKS = [p.name for p in runner.notebook_paths()]


def test_the_tutorials_are_there():
    assert set(EXPECTED) <= set(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs(name):
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    nbformat.validate(nb)
    assert not runner.has_outputs(nb), (
        f"run `python scripts/run_notebooks.py --strip` before committing {name}"
    )
    assert all(c.cell_type != "code" or c.execution_count is None for c in nb.cells)


def test_strip_removes_what_a_run_adds():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
    nb.cells[0].outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "2"}, execution_count=1)]
    nb.cells[0].execution_count = 1
    nb.cells[0].metadata["execution"] = {"iopub.status.idle": "2026-01-01T00:00:00Z"}
    assert runner.has_outputs(nb)
    assert not runner.has_outputs(runner.strip(nb))


@pytest.mark.slow
@pytest.mark.xdist_group("notebooks")
def test_a_failing_cell_fails_the_run(tmp_path):
    from nbclient.exceptions import CellExecutionError

    path = tmp_path / "broken.ipynb"
    cells = [
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("assert x == 2, 'taught fact broken'"),
    ]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    with pytest.raises(CellExecutionError, match="taught fact broken"):
        runner.execute(path, timeout=120)


@pytest.mark.slow
@pytest.mark.xdist_group("notebooks")
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2SCRATCH_NOTEBOOK_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = runner.execute(REPO / "notebooks" / name, timeout=600)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == []
    assert any(p.is_dir() for p in tmp_path.iterdir())  # its files went to the folder it was given
