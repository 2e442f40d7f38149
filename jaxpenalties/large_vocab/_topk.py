"""Private: the top-k teacher kernel of :mod:`._sparse` (also run
per chunk by :mod:`._fused_sparse`).

The student's log-probs are gathered at the teacher's k entries; with
``tail="bucket"`` each side gets one more bucket for the mass outside them,
computed in log space; the exact divergence kernel of
:mod:`jaxpenalties._core.kernel` does the rest.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpenalties._core import kernel, numerics
from jaxpenalties._core.types import Array
from jaxpenalties.large_vocab import _indexing

_LOG_HALF = float(np.log(0.5))


def _log_mass(x: Array) -> Array:
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


def _with_tail(x: Array, dtype: Any) -> Array:
    """x [..., k] with the tail bucket log(1 − Σ exp x) appended: [..., k + 1]."""
    x = x.astype(dtype)
    lse = _log_mass(x)
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


@functools.partial(jax.jit, static_argnames=("kind", "swap", "tail", "reduction"))
def divergence(
    student: Array,
    indices: Array,
    teacher: Array,
    temperature: Array | None,
    mask: Array | None,
    beta: float | Array | None,
    *,
    kind: str,
    swap: bool,
    tail: str,
    reduction: str,
) -> Array:
    """The divergence of a dense student [..., V] and a top-k teacher
    (``indices``, ``teacher``: [..., k]), reduced over the positions."""
    dtype = numerics.compute_dtype(student, teacher)
    if mask is not None:  # garbage indices at masked positions: read entry 0
        indices = numerics.sanitize(indices, mask)
    # An index outside [0, V), or one repeated, at a kept position: NaN there.
    g = _indexing.take(student, indices, keep=mask, distinct=True)
    t = None if temperature is None else jnp.asarray(temperature, dtype)
    beta = None if beta is None else jnp.asarray(beta, dtype)
    if tail == "renormalize":
        # The kernel's logits path: log_softmax(x / T) over the k entries.
        a, b, logits = g, teacher, True
    elif indices.shape[-1] == student.shape[-1]:  # k = V: no complement
        a, b, logits = g, teacher, False
    else:
        a = _with_tail(numerics.sanitize(g, mask), dtype)
        b = _with_tail(numerics.sanitize(teacher, mask), dtype)
        logits = False
    if swap:
        a, b = b, a
    values = kernel.divergence(kind, logits, a, b, mask, t, beta)
    return numerics.reduce(values, reduction, mask)
