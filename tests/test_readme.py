"""The README is the front door: it starts with the two commands, stays short,
its links resolve, and its quickstart runs as written."""

import pathlib
import re

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

DEMO_COMMAND = (
    'python3 -m venv .venv && .venv/bin/pip install -q -e ".[demo]" '
    "&& .venv/bin/python -m jaxpenalties.demo"
)
TEST_COMMAND = (
    'python3 -m venv .venv && .venv/bin/pip install -q -e ".[test]" '
    "&& .venv/bin/python -m pytest -n 2"
)


def _first_python_block_under(heading: str) -> str:
    text = README.read_text()
    start = text.index(heading)
    match = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert match, f"no python block under {heading!r}"
    return match.group(1)


def test_readme_starts_with_the_two_commands():
    lines = README.read_text().splitlines()
    assert lines[:5] == ["# jaxpenalties", "", "```bash", DEMO_COMMAND, TEST_COMMAND]
    assert lines[5] == "```"
    # CI runs exactly the README's test command.
    assert TEST_COMMAND in (ROOT / ".ci" / "run").read_text()


def test_readme_is_short_and_its_links_resolve():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert any(t.startswith("docs/") for t in targets)
    for target in targets:
        assert (ROOT / target).exists(), target
    # Every docs page is linked from the README.
    for page in (ROOT / "docs").glob("*.md"):
        if page.stem != "index":
            assert f"(docs/{page.name})" in text, page.name


# The quickstart is user code under JAX's default promotion (optax's Adam
# computes `decay ** count`; the loss multiplies by a boolean mask).
@pytest.mark.standard_promotion
def test_quickstart_runs(capsys):
    code = _first_python_block_under("## Quickstart: a regularised, jitted train step")
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, "README.md (quickstart)", "exec"), namespace)
    out = capsys.readouterr().out
    steps = re.findall(
        r"^step (\d+): loss (\S+)  kl (\S+) \(weight (\S+)\)$", out, re.M
    )
    assert [int(s[0]) for s in steps] == [0, 50, 100, 150]  # the loop ran to the end
    # The KL weight follows its schedule, linear from 0 to 0.1 over 100 steps.
    assert [float(s[3]) for s in steps] == [0.0, 0.05, 0.1, 0.1]
    losses = [float(s[1]) for s in steps]
    assert losses[-1] < losses[0]  # the regularised step trains
    # The step donates params and optimiser state, as users do at scale; the
    # L2-SP centre (the frozen base model) survives it.
    assert "donate_argnums=(0, 1)" in code
    base = namespace["base_params"]
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(base))
