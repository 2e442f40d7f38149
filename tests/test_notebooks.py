"""Executes every tutorial notebook; an error in any cell fails the test.

The kernel is the ``python3`` kernel of the current interpreter (checked), runs
in a temporary directory (nothing is written into the repository) with the
non-interactive Agg backend, and every figure a notebook made is rendered at the
end, so plotting errors surface too.
"""

import os
import pathlib
import sys

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

# Injected first: which interpreter runs the kernel.
WHICH_PYTHON = "import sys\nprint(sys.prefix)"
# Injected last: draw every open figure (Agg keeps them open) to PNG bytes.
RENDER_FIGURES = """\
import io
import matplotlib.pyplot as plt
for number in plt.get_fignums():
    plt.figure(number).savefig(io.BytesIO(), format="png")
print(len(plt.get_fignums()))
"""


def test_there_are_notebooks():
    names = [p.name for p in NOTEBOOKS]
    assert names == [
        "01_kl_directions.ipynb",
        "02_catastrophic_forgetting.ipynb",
        "03_large_vocab_distillation.ipynb",
        "04_grpo_kl.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    repo_files_before = sorted(os.listdir(NOTEBOOK_DIR))
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(WHICH_PYTHON))
    nb.cells.append(nbformat.v4.new_code_cell(RENDER_FIGURES))
    client = NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError on the first failing cell

    def stdout(cell):
        outputs = cell.outputs
        return "".join(o.get("text", "") for o in outputs if o.get("name") == "stdout")

    # The kernel ran in this environment (the venv's prefix, not a base Python).
    assert stdout(nb.cells[0]).strip() == sys.prefix
    assert int(stdout(nb.cells[-1])) >= 1  # at least one figure was drawn
    assert sorted(os.listdir(NOTEBOOK_DIR)) == repo_files_before
