"""Private: the tail bucket of a top-k truncation, log(1 − Σ exp x), in log
space, shared by the top-k teachers (:mod:`jaxpenalties.large_vocab`) and
ULD's top-k truncation (:mod:`.uld`).

The tail is computed with ``log1mexp`` of a log-sum-exp whose largest term
enters as ``expm1(0)``, so a tail far below float32 resolution of 1 (top-1
mass 1 − 1e-9) keeps its digits; where the k entries hold all the mass (or
more, by rounding) the tail is exactly −inf, never NaN.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpenalties._core.types import Array

_LOG_HALF = float(np.log(0.5))


def log_mass(x: Array) -> Array:
    """log Σ exp(x) over the last axis, keepdims; the largest entry's term is
    ``expm1(0) = 0`` plus 1 outside, so mass near 1 keeps its digits. −inf for a
    row of −inf. Exact gradients (softmax), also at ties."""
    top = jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    some = jnp.isfinite(top)
    d = x - jnp.where(some, top, jnp.zeros((), x.dtype))
    iota = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    first = iota == jnp.argmax(x, axis=-1, keepdims=True).astype(iota.dtype)
    rest = jnp.sum(jnp.where(first, jnp.expm1(d), jnp.exp(d)), -1, keepdims=True)
    rest = jnp.where(some, rest, jnp.zeros((), x.dtype))
    return jnp.where(some, top + jnp.log1p(rest), -jnp.inf)


def with_tail(x: Array, dtype: Any) -> Array:
    """x [..., k] with the tail bucket log(1 − Σ exp x) appended: [..., k + 1]."""
    x = x.astype(dtype)
    lse = log_mass(x)
    # log1mexp, every branch evaluated only where it is finite (no NaN grads).
    small = lse < _LOG_HALF
    near = jnp.logical_and(jnp.logical_not(small), lse < 0)
    neg = jnp.full((), -1.0, dtype)
    tail = jnp.where(
        small,
        jnp.log1p(-jnp.exp(jnp.where(small, lse, neg))),
        jnp.log(-jnp.expm1(jnp.where(near, lse, neg))),
    )
    tail = jnp.where(lse < 0, tail, -jnp.inf)
    return jnp.concatenate([x, tail], axis=-1)
