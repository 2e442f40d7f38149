"""Private: the top-k teacher kernel of :mod:`._sparse` (also run
per chunk by :mod:`._fused_sparse`).

The student's log-probs are gathered at the teacher's k entries; with
``tail="bucket"`` each side gets one more bucket for the mass outside them,
computed in log space; the exact divergence kernel of
:mod:`jaxpenalties._core.kernel` does the rest.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxpenalties._core import kernel, numerics, tails
from jaxpenalties._core.types import Array
from jaxpenalties.large_vocab import _indexing


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
        a = tails.with_tail(numerics.sanitize(g, mask), dtype)
        b = tails.with_tail(numerics.sanitize(teacher, mask), dtype)
        logits = False
    if swap:
        a, b = b, a
    values = kernel.divergence(kind, logits, a, b, mask, t, beta)
    return numerics.reduce(values, reduction, mask)
