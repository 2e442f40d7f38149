r"""Private: ULD's arrangement of two distributions over vocabularies of
different sizes, before the total-variation kernel.

The Universal Logit Distillation loss (Boizard et al., 2024) is the
Wasserstein-1 distance between the two distributions once each is sorted
(optimal transport between the ranks, unit cost): with p↓, q↓ the probabilities
sorted in decreasing order and the shorter vector padded with zeros,

.. math::

    \mathrm{ULD}(P, Q) = \sum_i |p^\downarrow_i - q^\downarrow_i|
                       = 2\,\mathrm{TV}(p^\downarrow, q^\downarrow).

So :func:`arrange` sorts (or takes the top k of) each side's log-probs in
decreasing order and pads the shorter one with −inf (zero mass); the kernel's
``"tv"`` kind does the rest, and every path (dense, fused per chunk) takes
the same two steps. The gradient goes back through the sort (a gather by the
sorting permutation) and the kernel's analytic derivative.

With ``top_k = k`` each side keeps its k largest entries and one more bucket,
its remaining mass log(1 − Σ_k p) (:mod:`.tails`), so the value is the
truncated sum over the top k plus the exact remainder term
``|(1 − Σ_k p↓) − (1 − Σ_k q↓)|`` (a lower bound of the full distance, equal
to it when the tails are ordered alike). A side with at most k entries is
sorted whole; its bucket holds what its entries miss of mass 1 (−inf for a
full distribution, the teacher's missing mass for a stored top-k teacher).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import lax

from jaxpenalties._core import kernel, normalisation, numerics, tails
from jaxpenalties._core.types import Array


def _descending(x: Array, k: int | None) -> Array:
    """The k (or all) largest entries of x's last axis, in decreasing order."""
    if k is not None and k < x.shape[-1]:
        return lax.top_k(x, k)[0]
    return -jnp.sort(-x, axis=-1)


def _pad(x: Array, size: int) -> Array:
    """x padded with −inf (zero mass) to ``size`` entries on its last axis."""
    pad = [(0, 0)] * (x.ndim - 1) + [(0, size - x.shape[-1])]
    return jnp.pad(x, pad, constant_values=-jnp.inf)


def arrange(a: Array, b: Array, top_k: int | None, dtype: Any) -> tuple[Array, Array]:
    """Log-probs a [..., V_a] and b [..., V_b] (normalised, in ``dtype``) sorted
    in decreasing order and padded to one length: max(V_a, V_b), or k + 1
    (the top k and the tail bucket) with ``top_k``."""
    a, b = _descending(a, top_k), _descending(b, top_k)
    size = max(a.shape[-1], b.shape[-1])
    a, b = _pad(a, size), _pad(b, size)
    if top_k is not None:
        a, b = tails.with_tail(a, dtype), tails.with_tail(b, dtype)
    return a, b


def distance(
    p: Array,
    q: Array,
    mask: Array | None,
    t: Array | None,
    logits: bool,
    top_k: int | None,
) -> Array:
    """Per-position ULD of p [..., V_p] and q [..., V_q] (log-probs, or
    logits with ``logits``; masked rows read as zeros): each normalised, then
    :func:`arrange`, then 2 · TV by the kernel."""
    dtype = numerics.compute_dtype(p, q)
    a = normalisation.log_probs(p, mask, t, logits, dtype)[0]
    b = normalisation.log_probs(q, mask, t, logits, dtype)[0]
    a, b = arrange(a, b, top_k, dtype)
    return 2 * kernel.divergence("tv", False, a, b, mask, None, None)
