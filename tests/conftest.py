"""Strict JAX configuration for the whole test suite."""

import jax
import pytest

# Eight simulated CPU devices for the sharding tests (test_sharding.py), set
# before any backend starts; the other tests run on the default device as before.
jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")
# Mixing dtypes without a cast (float32 with bfloat16, a float array with an int
# array, int32 with int64 under x64) raises instead of promoting silently: the
# library casts explicitly wherever it mixes dtypes, and so do the tests.
jax.config.update("jax_numpy_dtype_promotion", "strict")
# Exactness tests compare matmul paths (fused vs materialised, chunked vs not):
# on a GPU, JAX's default float32 matmul is TF32 (≈1e-3 relative), so the suite
# asks for full float32 everywhere. bf16 matmuls are unaffected.
jax.config.update("jax_default_matmul_precision", "highest")


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "standard_promotion: run the test under JAX's standard dtype promotion, "
        "for third-party code that mixes dtypes (optax.adam computes "
        "`decay ** count`, a Python float to an int32 power, which strict "
        "promotion rejects).",
    )


@pytest.fixture(autouse=True)
def _dtype_promotion(request):
    if request.node.get_closest_marker("standard_promotion") is None:
        yield
    else:
        with jax.numpy_dtype_promotion("standard"):
            yield
