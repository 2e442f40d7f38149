"""The tutorial notebooks, found by file name: jupytext percent-format scripts
that parse as valid notebooks, each with a title, code and assertions, and each
described on the docs' examples page.

They are executed once, by the strict documentation build in
``tests/test_docs.py`` (myst-nb runs every cell, and an error in any cell fails
the build); this file only checks how they are kept.
"""

import pathlib
import re

import jupytext
import nbformat
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))


def test_notebooks_are_found_and_linked_into_the_docs():
    assert NOTEBOOKS, "no notebooks found"
    # The docs reach them through a link, not a copy.
    link = ROOT / "docs" / "notebooks"
    assert link.is_symlink() and link.resolve() == (ROOT / "notebooks")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_parses(path):
    nb = jupytext.read(path)
    assert nb.metadata["jupytext"]["text_representation"]["format_name"] == "percent"
    assert nb.metadata["kernelspec"]["name"] == "python3"
    nbformat.validate(nbformat.from_dict(nb))
    kinds = [cell.cell_type for cell in nb.cells]
    # A Markdown title (the page title in the docs), then code and prose.
    assert kinds[0] == "markdown" and re.match(r"# \S", nb.cells[0].source)
    assert kinds.count("code") >= 2 and kinds.count("markdown") >= 2
    # It checks what it shows: the last code cell asserts.
    last_code = [cell.source for cell in nb.cells if cell.cell_type == "code"][-1]
    assert re.search(r"(?m)^\s*assert ", last_code), path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_described_in_the_docs(path):
    examples = (ROOT / "docs" / "examples.md").read_text()
    assert f"<notebooks/{path.stem}>" in examples, path.stem
