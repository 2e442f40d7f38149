r"""Private: the forward-KL value of two normalised rows, term by term ≥ 0.

With shifted tempered logits s_x, s_y (each ≤ 0, see :mod:`.normalisation`),
S = Σ e^s and p = e^{s_x} / S_x, q = e^{s_y} / S_y,

.. math::

    \mathrm{KL}(P \| Q) = \sum_v p_v\, \varphi(d_v), \qquad
    \varphi(d) = e^{-d} - 1 + d \ \ge 0, \qquad
    d_v = \log p_v - \log q_v = (s_{x,v} - s_{y,v}) - c,

because Σ p e^{−d} = Σ q = 1. Each term is ≥ 0, so the sum is ≥ 0 and
close to the float64 value also where KL ≈ 0. The plain Σ p (log p − log q)
is not: its terms cancel, and the difference of the two log-normalisers
log S_x − log S_y, each rounded to ~1e-7 of log V, shifts every d by that
much (a KL of 1e-12 came out as −2.6e-7). Here

* the gap s_x − s_y is formed from x − y, exact where x ≈ y (s_x − s_y,
  each rounded after its own shift, is not);
* c = log S_x − log S_y = log1p((S_x − S_y) / S_y), with S_x − S_y summed
  from elementwise differences e^{s_x} − e^{s_y} that are each exact to
  rounding (written with ``expm1`` of the non-positive side of the gap), and
* φ(d) is its Taylor series near 0 (|d| ≤ ¼) and p d + q − p elsewhere.

An error ε in c changes the sum only by ε² / 2 (c is where the sum is least).
A term with p = 0 is q (the limit of p φ(d)): the terms sum to the KL only
with every entry included, which they are.
Kullback & Leibler (1951); φ is the Bregman form of the generalised KL.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from jax import lax

from jaxpenalties._core import normalisation, numerics
from jaxpenalties._core.types import Array

_RADIUS = 0.25  # |d| below which φ is its Taylor series


def _phi_near_zero(d: Array) -> Array:
    """e^{−d} − 1 + d = Σ_{k≥2} (−d)^k / k! for |d| ≤ ¼, to the dtype's rounding
    (Horner; 7 terms for float32, 12 for float64)."""
    order = 8 if jnp.finfo(d.dtype).bits <= 32 else 13
    coefficients = [(-1.0) ** k / math.factorial(k) for k in range(2, order + 1)]
    acc = jnp.full_like(d, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        acc = acc * d + c
    return d * d * acc


Shift = Callable[[Array, Array], Array]
"""(x, top) ↦ (x − top) / T: the shifted tempered logits."""


def log_normaliser_gap(
    x: Array,
    y: Array,
    top_x: Array,
    top_y: Array,
    shift: Shift,
    sum_y: Array,
    guarded: bool = False,
) -> tuple[Array, Array]:
    """(log S_x, c = log S_x − log S_y), each [..., 1], c exact to rounding;
    ``sum_y``: S_y = Σ e^{s_y} [..., 1] (its own reduction: XLA:CPU runs one
    fusion of several row sums 2× slower than the sums apart).

    With δ = s_x − s_y = ((x − y) − (top_x − top_y)) / T (x − y is exact where
    x ≈ y, unlike s_x − s_y), e^{s_x} − e^{s_y} = e^{s_y} expm1(min(δ, 0)) −
    e^{s_x} expm1(min(−δ, 0)): one of the two products is 0, the other has no
    cancellation and cannot overflow (its ``expm1`` lies in [−1, 0]). A −inf
    shared by x and y makes c NaN; ``guarded`` reads −inf as the most negative
    finite number, so that such an entry adds 0."""
    if guarded:
        x, y = numerics.finite(x), numerics.finite(y)
    ex, ey = jnp.exp(shift(x, top_x)), jnp.exp(shift(y, top_y))
    delta = shift(x - y, top_x - top_y)
    zero = jnp.zeros((), delta.dtype)
    diff = ey * jnp.expm1(jnp.minimum(delta, zero)) - ex * jnp.expm1(
        jnp.minimum(-delta, zero)
    )
    diff_sum = jnp.sum(diff, axis=-1, keepdims=True)
    return jnp.log(sum_y + diff_sum), jnp.log1p(diff_sum / sum_y)


def terms(
    x: Array,
    y: Array,
    top_x: Array,
    top_y: Array,
    shift: Shift,
    stats: tuple[Array, Array],
    guarded: bool = False,
) -> Array:
    """p φ(d) per element; a term where p = 0 is q (the limit of p φ(d)).

    As given, a −inf in y under p > 0 gives +inf (the true value); a −inf in
    x, or a d that overflows, gives NaN, and the caller recomputes such rows
    with ``guarded``: −inf read as the most negative finite number and d as
    finite, then the conventions where y = −inf: 0 where x is −inf too
    (p = q = 0), +inf under a finite x (q = 0 < p), even if p underflows."""
    log_sum_x, gap = stats
    if guarded:
        x_in, y_in = x, y
        x, y = numerics.finite(x), numerics.finite(y)
    s_x, s_y = shift(x, top_x), shift(y, top_y)
    d = shift(x - y, top_x - top_y) - gap
    if guarded:
        d = jnp.clip(d, jnp.finfo(d.dtype).min, jnp.finfo(d.dtype).max)
    p = jnp.exp(s_x - log_sum_x)
    q = jnp.exp(s_y - (log_sum_x - gap))
    # Arithmetic, not a select or a clamp (XLA:CPU vectorises neither, 4× slower
    # here): r = min(1, ¼ / |d|) is 1 exactly inside the radius, so floor(r) is
    # the indicator of |d| ≤ ¼ and d · r is d clamped to the radius.
    r = jnp.minimum(1, _RADIUS / jnp.abs(d))
    inside = jnp.floor(r)
    t = inside * p * _phi_near_zero(d * r) + (1 - inside) * (p * d + q - p)
    if not guarded:
        return t
    inf = jnp.where(x_in == -jnp.inf, jnp.zeros((), t.dtype), jnp.inf)
    return jnp.where(y_in == -jnp.inf, inf, t)


def _apart(a: Array, b: Array, top_a: Array, top_b: Array) -> list[Array]:
    """The same arrays behind an optimisation barrier, so that no element-wise
    expression of them is shared with one of the originals: on the CPU all
    four (a reduction of them is then not fused with one of the originals'),
    elsewhere the row maxima only (free: the [..., 1] maxima are tiny). A
    shared e^{s_y} feeding two row sums is stored at [N, V] float32 when the
    GPU's fusion cost model declines to duplicate it (it does on an H200); the
    same device as :func:`.normalisation.independent`, whose CPU branch is the
    identity where this one's keeps the row sums apart."""

    def cpu(*xs: Array) -> list[Array]:
        return list(lax.optimization_barrier(xs))

    def default(a: Array, b: Array, top_a: Array, top_b: Array) -> list[Array]:
        return [a, b, *lax.optimization_barrier((top_a, top_b))]

    return lax.platform_dependent(a, b, top_a, top_b, cpu=cpu, default=default)


def normalised_kl(
    a: Array, b: Array, *, mask: Array | None, t: Array | None, dtype: Any
) -> Array:
    """KL(P‖Q) per row of P = softmax(a / T), Q = softmax(b / T), term by term
    ≥ 0 (:func:`terms`). When a row comes out non-finite (a −inf entry,
    as the plain KL formula does), every row is recomputed with the guarded
    terms (from the user's arrays, which the ``lax.cond`` takes without a
    copy)."""

    def shift(x: Array, top: Array) -> Array:
        return normalisation.shift(x, top, t)

    def inputs(a: Array, b: Array) -> tuple[Array, Array, Array, Array]:
        a, b = normalisation.read(a, mask, dtype), normalisation.read(b, mask, dtype)
        return a, b, normalisation.row_max(a), normalisation.row_max(b)

    xs = inputs(a, b)
    sum_y = jnp.sum(jnp.exp(shift(xs[1], xs[3])), axis=-1, keepdims=True)
    # The gap's row sum apart from S_y's (see log_normaliser_gap), from the
    # user's arrays.
    a_, b_, top_a, top_b = _apart(a, b, xs[2], xs[3])
    apart = (
        normalisation.read(a_, mask, dtype),
        normalisation.read(b_, mask, dtype),
        top_a,
        top_b,
    )
    stats = log_normaliser_gap(*apart, shift, sum_y)
    rows = normalisation.row_sum(terms(*xs, shift, stats))

    def exact(a: Array, b: Array, sum_y: Array) -> Array:
        xs = inputs(a, b)
        stats = log_normaliser_gap(*xs, shift, sum_y, guarded=True)
        return normalisation.row_sum(terms(*xs, shift, stats, guarded=True))

    return numerics.unless_all_finite(rows, exact, a, b, sum_y)
