"""Private: the maths of one chunk of the fused linear-head divergences.

Given a chunk's logits [C, V] of both heads, the divergence kernel of
:mod:`jaxpenalties._core.kernel` gives the per-position values and their
cotangents; the hard-label cross-entropy (with label smoothing) and its
gradient are formed from row statistics, so each [C, V] expression fuses into
its consumer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxpenalties._core import chunking, kernel
from jaxpenalties._core.types import Array
from jaxpenalties.large_vocab import _indexing


def chunk_values(
    kind: str, swap: bool, has_t: bool, z: Array, rz: Array, t: Array, beta: Array
) -> Array:
    """Per-position divergence [C] from the logits [C, V] of both heads (the
    kernel normalises them, tempered by ``t`` when ``has_t``); ``swap``
    exchanges the heads (reverse KL)."""
    a, b = (rz, z) if swap else (z, rz)
    return kernel.divergence(
        kind,
        True,
        a,
        b,
        None,
        t if has_t else None,
        beta if kind in kernel.PARAMETRISED else None,
    )


def chunk_grads(
    kind: str,
    swap: bool,
    has_t: bool,
    need_t: bool,
    z: Array,
    rz: Array,
    t: Array,
    beta: Array,
    g: Array,
) -> tuple[Array, Array, Array, Array | None]:
    """Values [C] and the cotangents of Σ g · values w.r.t. the raw logits z, rz
    [C, V] (and t), from the kernel's analytic VJP."""
    if has_t and need_t:
        values, vjp = jax.vjp(
            lambda z, rz, t: chunk_values(kind, swap, True, z, rz, t, beta), z, rz, t
        )
        dz, drz, dt = vjp(chunking.like(g, values))
        return values, dz, drz, dt
    values, vjp = jax.vjp(
        lambda z, rz: chunk_values(kind, swap, has_t, z, rz, t, beta), z, rz
    )
    dz, drz = vjp(chunking.like(g, values))
    return values, dz, drz, None


def cross_entropy(z: Array, labels: Array, smoothing: float) -> tuple[Array, Array]:
    """Per-row cross-entropy of the logits z [C, V] at ``labels`` [C] with label
    smoothing ε, and its gradient w.r.t. z but for the label term:
    CE = (1 − ε)(lse − z_y) + ε (lse − mean_v z),  ∂/∂z = p − ε / V − (1 − ε) e_y.
    A label outside [0, V) gives NaN in the row's value and gradient (the
    rule of :mod:`._indexing`).
    """
    # Row statistics only ([C, 1]); every [C, V] expression below reads z
    # directly, so each fuses into its consumer instead of being stored.
    top = lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    lse = top + jnp.log(jnp.sum(jnp.exp(z - top), axis=-1, keepdims=True))
    lse = lse * _indexing.factor(labels[:, None], z.shape[-1], z.dtype)
    z_y = _indexing.take(z, labels[:, None])
    ce = (1 - smoothing) * (lse - z_y) + smoothing * (
        lse - jnp.mean(z, axis=-1, keepdims=True)
    )
    # ∂/∂z without the label term, which the caller scatters in (no [C, V]
    # one-hot: a compare-and-select over the chunk costs XLA:CPU its fusion).
    return ce[:, 0], jnp.exp(z - lse) - smoothing / z.shape[-1]


def add_label_term(dz: Array, labels: Array, scale: Array) -> Array:
    """dz − scale · e_y per row: the one-hot part of ∂ CE / ∂z, in place."""
    return _indexing.add_at(dz, labels, -scale)
