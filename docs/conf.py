"""Sphinx configuration: the API reference from the docstrings, markdown pages
and the notebooks (jupytext percent-format ``.py`` files in ``notebooks/``,
reached through the ``docs/notebooks`` link), executed on every build.

Build: ``python -m sphinx -W --keep-going -n docs <outdir>`` (what
``tests/test_docs.py`` runs). Set ``JAXPENALTIES_DOCS_EXECUTE=off`` to skip the
notebooks' execution while editing pages.
"""

import os

import jaxpenalties

project = "jaxpenalties"
author = "jaxpenalties contributors"
copyright = "jaxpenalties contributors"
release = version = jaxpenalties.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "myst_nb",
]

root_doc = "index"
# A local jupytext-paired .ipynb is ignored (and by git): the .py is the source.
exclude_patterns = [
    "_build",
    "conf.py",
    "notebooks/*.ipynb",
    "**/.ipynb_checkpoints",
    "**/__pycache__",
]
source_suffix = {".md": "myst-nb", ".py": "myst-nb"}
# Notebooks are jupytext percent-format scripts; Markdown pages are plain MyST.
nb_custom_formats = {".py": ["jupytext.reads", {"fmt": "py:percent"}]}

# Every notebook runs on every build, in a temporary directory, and a failing
# cell fails the build.
nb_execution_mode = os.environ.get("JAXPENALTIES_DOCS_EXECUTE", "force")
nb_execution_raise_on_error = True
nb_execution_timeout = 900
nb_execution_in_temp = True
nb_merge_streams = True

myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

# The API reference documents the public names, ``jaxpenalties.<name>``.
add_module_names = True
autodoc_typehints = "none"  # signatures show the names; Args: give the types
autodoc_member_order = "bysource"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Every cross-reference must resolve, except to these types, which docstrings
# name but which are not public names of this site (JAX's checkify error).
nitpicky = True
nitpick_ignore = [
    ("py:exc", "checkify.JaxRuntimeError"),
]

html_theme = "furo"
html_title = f"jaxpenalties {release}"
