"""Strict JAX configuration for the whole test suite."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")

# Scripts run in a subprocess (they configure JAX before importing it).
collect_ignore = ["_sharding_check.py"]
