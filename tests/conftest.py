"""Strict JAX configuration for the whole test suite."""

import jax

# Eight simulated CPU devices for the sharding tests (test_sharding.py), set
# before any backend starts; the other tests run on the default device as before.
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")
# Exactness tests compare matmul paths (fused vs materialised, chunked vs not):
# on a GPU, JAX's default float32 matmul is TF32 (≈1e-3 relative), so the suite
# asks for full float32 everywhere. bf16 matmuls are unaffected.
jax.config.update("jax_default_matmul_precision", "highest")
