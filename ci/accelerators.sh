#!/usr/bin/env bash
# The GPU and TPU memory budgets (tests/test_accelerator_memory.py), compiled
# deviceless for an H100, an H200, a TPU v5e and a TPU v6e chip on this machine:
# installs the `aot` extra (jax pinned with the CUDA plugin and libtpu) in a
# third virtualenv, .venv-aot, and runs that module there with every target
# required, so that a missing backend fails instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-aot
.venv-aot/bin/pip install -q -e ".[aot]"
# JAX_PLATFORMS=cpu before JAX starts: the CUDA plugin then neither looks for a
# GPU nor checks the CUDA libraries; both backends only compile.
JAX_PLATFORMS=cpu JAXPENALTIES_REQUIRE_ACCELERATOR_TARGETS=1 \
    .venv-aot/bin/python -m pytest -n 2 -rs tests/test_accelerator_memory.py "$@"
