"""Private: the maths of one chunk of the fused linear-head divergences.

Given a chunk's logits [C, V] of both heads, the divergence kernel of
:mod:`jaxpenalties._core.kernel` gives the per-position values and their
cotangents; the hard-label cross-entropy (with label smoothing) and its
gradient are formed from row statistics, so each [C, V] expression fuses into
its consumer.
"""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp
from jax import lax

from jaxpenalties._core import chunking, kernel, uld
from jaxpenalties._core.types import Array
from jaxpenalties.large_vocab import _indexing


class Spec(Protocol):
    """The static facts a chunk needs (``_fused_scan.Config`` has them)."""

    @property
    def kind(self) -> str: ...  # the kernel's kind, or "uld"
    @property
    def swap(self) -> bool: ...  # the heads exchanged (reverse directions)
    @property
    def has_t(self) -> bool: ...  # a temperature applies
    @property
    def top_k(self) -> int | None: ...  # ULD's truncation


def chunk_values(spec: Spec, z: Array, rz: Array, t: Array, beta: Array) -> Array:
    """Per-position divergence [C] from the logits [C, V] of both heads (the
    kernel normalises them, tempered by ``t`` when ``has_t``); ``swap``
    exchanges the heads (reverse KL). ULD's heads may have vocabularies of
    different sizes: each chunk is sorted (:mod:`jaxpenalties._core.uld`)."""
    a, b = (rz, z) if spec.swap else (z, rz)
    t_ = t if spec.has_t else None
    if spec.kind == "uld":
        return uld.distance(a, b, None, t_, True, spec.top_k)
    beta_ = beta if spec.kind in kernel.PARAMETRISED else None
    return kernel.divergence(spec.kind, True, a, b, None, t_, beta_)


def chunk_grads(
    spec: Spec, need_t: bool, z: Array, rz: Array, t: Array, beta: Array, g: Array
) -> tuple[Array, Array, Array, Array | None]:
    """Values [C] and the cotangents of Σ g · values w.r.t. the raw logits z, rz
    [C, V] (and t), from the kernel's analytic VJP."""
    if spec.has_t and need_t:
        values, vjp = jax.vjp(
            lambda z, rz, t: chunk_values(spec, z, rz, t, beta), z, rz, t
        )
        dz, drz, dt = vjp(chunking.like(g, values))
        return values, dz, drz, dt
    values, vjp = jax.vjp(lambda z, rz: chunk_values(spec, z, rz, t, beta), z, rz)
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
