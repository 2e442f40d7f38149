"""The package layout is the map in docs/development.md, and it holds: every
module listed and every listed module present, imports only in the directions
the map names, no import cycle, no module past ~300 lines, and the public
namespaces are the flat API grouped by family."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

import jaxpenalties as jp

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxpenalties"
MAX_LINES = 320  # "about 300"
PUBLIC_FAMILIES = ("divergences", "large_vocab", "rl", "penalties", "training")


def _layout_map() -> tuple[set[str], dict[str, set[str]]]:
    """(listed files relative to the package, folder -> folders it may import)."""
    text = (ROOT / "docs" / "development.md").read_text()
    section = text[text.index("## Layout") :]
    block = re.search(r"```text\n(.*?)```", section, re.S)
    assert block, "docs/development.md: no ```text block under ## Layout"
    lines = block.group(1).splitlines()
    assert lines[0].strip() == "jaxpenalties/", lines[0]
    files: set[str] = set()
    allowed: dict[str, set[str]] = {}
    folder = ""
    for line in lines[1:]:
        indent = len(line) - len(line.lstrip())
        name = line.split()[0]
        if name.endswith("/"):
            assert indent == 2, f"a folder sits at the top level: {line!r}"
            folder = name[:-1]
            imports = re.search(r"\(imports: ([^)]*)\)", line)
            assert imports, f"folder line without '(imports: ...)': {line!r}"
            names = {n.strip() for n in imports.group(1).split(",")}
            allowed[folder] = set() if names == {"none"} else names
        else:
            assert name.endswith(".py"), f"not a module or folder: {line!r}"
            files.add(name if indent == 2 else f"{folder}/{name}")
    return files, allowed


def _modules() -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
    """The package modules ``path`` imports (anywhere in the file, including
    ``TYPE_CHECKING`` blocks and function bodies)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(
                a.name for a in node.names if a.name.startswith("jaxpenalties")
            )
        elif isinstance(node, ast.ImportFrom) and node.module:
            if not node.module.startswith("jaxpenalties"):
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return found


def _folder(module: str) -> str:
    """The family folder of a dotted module name ('' for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_is_in_the_map_and_every_listed_module_exists():
    listed, _ = _layout_map()
    present = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")}
    assert present - listed == set(), "modules missing from docs/development.md"
    assert listed - present == set(), "listed in docs/development.md, not present"


def test_imports_run_only_in_the_directions_the_map_names():
    _, allowed = _layout_map()
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        own = _folder(name)
        if own == "":  # the package's __init__: the public names
            continue
        for target in _imports(path, modules):
            other = _folder(target)
            if other == own:
                continue
            # "jaxpenalties" in a line: the package's public names only.
            ok = other in allowed[own] or (
                other == "" and "jaxpenalties" in allowed[own]
            )
            if not ok:
                wrong.append(f"{name} imports {target}")
    assert wrong == []


def test_the_core_imports_no_family_and_the_families_import_no_demo():
    modules = _modules()
    for name, path in modules.items():
        targets = {_folder(t) for t in _imports(path, modules)}
        if _folder(name) == "_core":
            assert targets <= {"_core"}, name
        if _folder(name) != "demo":
            assert "demo" not in targets, name


def test_no_import_cycle():
    modules = _modules()
    graph = {
        name: _imports(path, modules) & modules.keys() for name, path in modules.items()
    }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_no_module_passes_about_300_lines():
    long = {
        p.relative_to(ROOT).as_posix(): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these (at most {MAX_LINES} lines)"


def test_private_modules_are_underscored_or_in_the_core():
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "_core" or len(rel.parts) == 1:
            continue
        assert rel.name in ("__init__.py", "__main__.py") or rel.name.startswith("_"), (
            rel
        )


@pytest.mark.parametrize("family", PUBLIC_FAMILIES)
def test_each_namespace_is_the_flat_api_of_its_family(family):
    namespace = getattr(jp, family)
    assert namespace.__all__, family
    for name in namespace.__all__:
        assert getattr(namespace, name) is getattr(jp, name), f"jp.{family}.{name}"


def test_the_namespaces_partition_the_flat_api():
    grouped = [n for f in PUBLIC_FAMILIES for n in getattr(jp, f).__all__]
    assert sorted(grouped) == sorted(jp.__all__)
    assert len(grouped) == len(set(grouped)), "a name in two namespaces"
