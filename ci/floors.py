"""The oldest versions pyproject.toml allows, as pip constraints.

Prints ``name==floor`` for every ``name>=floor`` requirement of the runtime
dependencies and of the ``test`` extra, so that installing with these
constraints tests the floors the package declares::

    python ci/floors.py > constraints.txt
    pip install -e ".[test]" -c constraints.txt
    python ci/floors.py --check   # the installed versions are those floors
"""

import argparse
import importlib.metadata
import pathlib
import re
import sys
import tomllib

PYPROJECT = pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"
FLOOR = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][A-Za-z0-9.]*)\s*$")


SELF = re.compile(r"^\s*jaxpenalties\[([a-z,\s]+)\]\s*$")


def floors(extras=("test",)) -> dict[str, str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    requirements = list(project["dependencies"])
    pending, seen = list(extras), set()
    while pending:  # an extra may name others: "jaxpenalties[demo]"
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in project["optional-dependencies"][extra]:
            match = SELF.match(requirement)
            if match:
                pending += [e.strip() for e in match[1].split(",")]
            else:
                requirements.append(requirement)
    pins = {}
    for requirement in requirements:
        match = FLOOR.match(requirement)
        if match is None:
            raise SystemExit(f"not of the form 'name>=version': {requirement!r}")
        pins[match[1]] = match[2]
    return pins


def _release(version: str) -> tuple[int, ...]:
    """'2.0' and '2.0.0' are the same release."""
    parts = [int(p) for p in re.findall(r"\d+", version)]
    while parts and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="compare the installed versions with the floors instead of printing",
    )
    args = parser.parse_args()
    pins = floors()
    if not args.check:
        for name, version in pins.items():
            print(f"{name}=={version}")
        return 0
    wrong = []
    for name, version in pins.items():
        installed = importlib.metadata.version(name)
        if _release(installed) != _release(version):
            wrong.append(f"{name}: installed {installed}, floor {version}")
    print("\n".join(wrong) or f"all {len(pins)} floors installed")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
