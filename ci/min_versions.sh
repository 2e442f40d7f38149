#!/usr/bin/env bash
# Installs the oldest versions pyproject.toml declares (the runtime dependencies
# and the test extra, each pinned to its `>=` floor) in a second virtualenv,
# .venv-min, checks that those exact versions are installed, and runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-min
python3 ci/floors.py > .venv-min/constraints.txt
.venv-min/bin/pip install -q -e ".[test]" -c .venv-min/constraints.txt
.venv-min/bin/python ci/floors.py --check
.venv-min/bin/python -m pytest -n 2 "$@"
