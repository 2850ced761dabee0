"""docs/tutorial.ipynb runs from top to bottom in a fresh kernel, its own asserts included."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "docs" / "tutorial.ipynb"
CELL_TIMEOUT = 120  # seconds per cell; the whole notebook takes about 10 s on 2 cores

# Appended in memory only: which interpreter and which purenn the kernel ran.
WHERE = "import sys, purenn\nprint(sys.executable)\nprint(purenn.__file__)"


def test_tutorial_notebook_is_stored_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code_cells)


def test_tutorial_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # The kernel starts in tmp_path, so it finds this checkout's purenn through PYTHONPATH.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(WHERE))
    # kernel_name "python3" is ipykernel's spec, argv ["python", ...]: jupyter_client starts
    # sys.executable for it (checked below, since an installed spec could point elsewhere).
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError with the failing cell and its traceback

    printed = notebook.cells[-1].outputs[0]["text"].split("\n")
    assert printed[:2] == [sys.executable, str(REPO / "purenn" / "__init__.py")]
    assert list(tmp_path.iterdir()) == []  # the notebook writes no file
