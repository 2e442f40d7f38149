"""Strict JAX configuration for the whole test suite."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
# Exactness tests compare matmul paths (fused vs materialised, chunked vs not):
# on a GPU, JAX's default float32 matmul is TF32 (≈1e-3 relative), so the suite
# asks for full float32 everywhere. bf16 matmuls are unaffected.
jax.config.update("jax_default_matmul_precision", "highest")

# Scripts run in a subprocess (they configure JAX before importing it).
collect_ignore = ["_sharding_check.py"]
