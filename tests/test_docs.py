"""The documentation site builds strictly, executing every notebook once; the API
reference documents every public name; the pages' python blocks run.

The build is ``python -m sphinx -W --keep-going -n``: any warning (a broken
reference, an unknown name in nitpicky mode, a docstring that does not parse) or
an error in any notebook cell fails it. It writes only into a temporary
directory, and the notebooks run in temporary directories too.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

import jaxpenalties as jp

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))
PAGES = sorted(DOCS.glob("*.md"))


def _python_blocks(path: pathlib.Path) -> list[str]:
    return re.findall(r"(?m)^```python\n(.*?)^```", path.read_text(), re.S)


def _tree(*dirs: pathlib.Path) -> list[tuple[str, int]]:
    """Every file under ``dirs`` (symlinks not followed) with its size."""
    files = []
    for d in dirs:
        for root, _, names in os.walk(d):
            for name in names:
                path = pathlib.Path(root, name)
                files.append((str(path.relative_to(ROOT)), path.lstat().st_size))
    return sorted(files)


def test_api_reference_documents_every_public_name():
    text = (DOCS / "api.md").read_text()
    documented = re.findall(
        r"(?m)^\.\. auto(?:function|class):: jaxpenalties\.(\w+)$", text
    )
    assert len(documented) == len(set(documented)), "a name is documented twice"
    assert sorted(documented) == sorted(jp.__all__)


@pytest.mark.parametrize(
    "page", [p for p in PAGES if _python_blocks(p)], ids=lambda p: p.stem
)
def test_page_python_blocks_run(page, tmp_path):
    """A page's python blocks run in order, in one fresh interpreter with 8
    simulated CPU devices (the mesh examples need them)."""
    code = "\n\n".join(_python_blocks(page))
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        MPLBACKEND="Agg",
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_activity_regularisation_recipe():
    """The recipe on the regularize page defines ``model`` and ``loss``: the
    total is the loss plus each term's contribution, and both terms are live."""
    import jax
    import numpy as np

    (code,) = [
        block
        for block in _python_blocks(DOCS / "regularize.md")
        if "class MLP" in block
    ]
    namespace: dict = {"__name__": "docs_recipe"}
    exec(compile(code, "docs/regularize.md (recipe)", "exec"), namespace)
    x = jax.random.normal(jax.random.key(0), (4, 8))
    params = namespace["model"].init(jax.random.key(1), x)["params"]
    batch = {"x": x, "y": np.arange(4)}
    total, aux = jax.jit(namespace["loss"])(params, batch)
    terms = aux["penalties"]
    assert set(terms) == {"act_l1", "act_l2"}
    # Recomputed by hand from the activations the model returns.
    _, hidden = namespace["model"].apply({"params": params}, x)
    h1, h2 = (np.asarray(hidden[k], np.float64) for k in ("hidden1", "hidden2"))
    np.testing.assert_allclose(terms["act_l1"]["value"], np.abs(h1).mean(), rtol=1e-5)
    np.testing.assert_allclose(terms["act_l2"]["value"], (h2**2).mean(), rtol=1e-5)
    expected = aux["loss"] + 1e-3 * (np.abs(h1).mean() + (h2**2).mean())
    np.testing.assert_allclose(total, expected, rtol=1e-5)
    assert all(float(t["value"]) > 0 for t in terms.values())


def test_docs_build_strictly(tmp_path):
    from jupyter_client.kernelspec import KernelSpecManager

    # The notebooks' "python3" kernel must be this interpreter (one that has
    # jaxpenalties installed), not a kernel registered by another Python.
    argv = KernelSpecManager().get_kernel_spec("python3").argv
    assert argv[0] in {"python", "python3", sys.executable}, argv

    before = _tree(ROOT / "docs", ROOT / "notebooks")
    out, doctrees = tmp_path / "html", tmp_path / "doctrees"
    env = dict(os.environ, MPLBACKEND="module://matplotlib_inline.backend_inline")
    env.pop("JAXPENALTIES_DOCS_EXECUTE", None)  # always execute the notebooks
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q"]
        + ["-d", str(doctrees), str(DOCS), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert _tree(ROOT / "docs", ROOT / "notebooks") == before  # nothing written

    # Every public name has its entry, under its public name.
    api = (out / "api.html").read_text()
    for name in jp.__all__:
        assert f'id="jaxpenalties.{name}"' in api, name

    # Every notebook was executed and rendered, with its figures.
    for path in NOTEBOOKS:
        page = out / "notebooks" / f"{path.stem}.html"
        assert page.exists(), page
        assert "<img" in page.read_text(), f"{path.stem}: no figure rendered"
        (executed,) = list(tmp_path.rglob(f"{path.stem}.ipynb"))
        cells = json.loads(executed.read_text())["cells"]
        code_cells = [c for c in cells if c["cell_type"] == "code"]
        assert code_cells and all(c["execution_count"] for c in code_cells)
        outputs = [o for c in code_cells for o in c["outputs"]]
        assert not [o for o in outputs if o["output_type"] == "error"]
