"""Exact per-position divergence kernels over the last axis, with analytic JVPs.

Private, and the centre of the library: every divergence, dense
(:mod:`jaxpenalties.divergences`), top-k or fused through a linear head
(:mod:`jaxpenalties.large_vocab`), calls :func:`divergence` per position or per
chunk of positions. :func:`divergence` takes the inputs as the user gave them (any float
dtype, with a position mask and an optional temperature) and returns the
per-position value ``[...]`` in the compute dtype (float32, or float64). The
upcast, the mask and the temperature are applied *inside* every fusion that
reads the inputs, never as a separate float32 copy: for bf16 inputs the value
reads each input once, and the gradient re-reads the inputs and writes the
input-dtype gradient once. That is the memory floor. The derivative is a custom
JVP rule, Σ_v (∂/∂a · da + ∂/∂b · db) per row, whose coefficients are
elementwise in the inputs: reverse mode transposes it into the gradient, which
XLA fuses with the coefficients under ``jit`` instead of storing them, and
forward mode (``jax.jvp``) works as well.

With ``a = log p``, ``b = log q`` the kernels and their gradients are

* forward KL  ``Σ p (a − b)``:          ∂/∂a = p (a − b + 1),   ∂/∂b = −p
* symmetric   ``½ Σ (p − q)(a − b)``:   ∂/∂a = ½ [p (a − b) + p − q]
* JS_β        ``β Σ p (a − m) + (1−β) Σ q (b − m)``, m = log(β p + (1−β) q):
  ∂/∂a = β p (a − m),  ∂/∂b = (1 − β) q (b − m)
* ``Σ p a`` (= −H):                    ∂/∂a = p (a + 1)
* total variation, Amari's α-divergence and skew KL: per-element terms and
  derivatives from :mod:`.f_divergences` (each term ≥ 0, exact near p = q)

and, for logits or under a temperature, through the normalisation
(:mod:`.normalisation`).

Conventions (exact, no clamps): a term with p = 0 (a = −inf) is exactly 0, also
when b = −inf; a term with p > 0 and q = 0 is +inf, even when p underflows.
Entries at −inf pass no derivative on (also not to T).

Speed: selects in the hot loop stop XLA:CPU from vectorising the ``exp`` (seen
here: 3× slower), so no kernel selects per element on its fast path:

* ``−inf`` is read as the most negative finite number, ``lo = finfo.min``
  (``max(a, lo)``: no finite input changes). Every term that this touches is
  multiplied by p = exp(−inf) = 0 exactly, so it becomes the exact 0 instead of
  ``0 · ∞ = NaN``. Gradients, JS and entropy use this form and are exact.
* KL values need one more case, p > 0 with q = 0, whose true value is +inf.
  They evaluate the plain formula, which is exact whenever no ``0 · ∞`` occurs
  and is non-finite (never silently wrong) when one does; only then does a
  ``lax.cond`` recompute the rows with the guarded formula. Its operands are the
  user's arrays, so it costs no copy.
* Forward-KL values of normalised inputs (logits, a temperature) are summed
  term by term ≥ 0 instead (:mod:`.kl_values`), exact also where KL ≈ 0.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxpenalties._core import f_divergences, kl_values, normalisation, numerics
from jaxpenalties._core.types import Array

KINDS = ("forward", "symmetric", "js", "entropy", "tv", "alpha", "skew")

#: The kinds that take a scalar parameter: JS's β, α, skew λ.
PARAMETRISED = ("js", "alpha", "skew")

# The f-divergence kinds of :mod:`.f_divergences`: (terms, derivatives), each
# a function of (a, b, param); TV takes no parameter.
_F_KINDS: dict[str, tuple[Callable[..., Array], Callable[..., tuple[Array, Array]]]] = {
    "js": (f_divergences.js_terms, f_divergences.js_grads),
    "tv": (
        lambda a, b, _: f_divergences.tv_terms(a, b),
        lambda a, b, _: f_divergences.tv_grads(a, b),
    ),
    "alpha": (f_divergences.alpha_terms, f_divergences.alpha_grads),
    "skew": (f_divergences.skew_terms, f_divergences.skew_grads),
}


_NEG_INF = -jnp.inf


def _fast_values(kind: str, a: Array, b: Array | None, beta: Array | None) -> Array:
    """Per-position values; exact unless a KL row comes out non-finite."""
    if kind == "entropy":
        return neg_entropy(a)
    assert b is not None  # every other kind compares two distributions
    if kind == "forward":
        return normalisation.row_sum(jnp.exp(a) * (a - b))
    if kind == "symmetric":
        return 0.5 * normalisation.row_sum((jnp.exp(a) - jnp.exp(b)) * (a - b))
    if kind in _F_KINDS:
        assert b is not None  # every f-divergence compares two distributions
        return normalisation.row_sum(_F_KINDS[kind][0](a, b, beta))
    raise ValueError(f"Unknown kernel kind {kind!r}.")


def neg_entropy(a: Array) -> Array:
    """Σ p log p per row (= −H ≤ 0). A positive finite sum comes only from
    rounding or log-probs above 0 (rounding in a log_softmax): the row is
    floored at 0. A non-finite sum (a +inf or NaN log-prob) stays non-finite."""
    rows = normalisation.row_sum(jnp.exp(a) * numerics.finite(a))
    return jnp.where(jnp.isfinite(rows), jnp.minimum(rows, 0), rows)


def _exact_values(kind: str, a: Array, b: Array) -> Array:
    """The guarded KL formulas (only run when a fast row is not finite)."""
    d = a - b
    if kind == "forward":
        # b = −inf under a > −inf: the true term is +inf even if p underflowed.
        t = jnp.where(d == jnp.inf, jnp.inf, jnp.exp(a) * d)
        return normalisation.row_sum(
            jnp.where(a == _NEG_INF, jnp.zeros((), t.dtype), t)
        )
    # |d| = inf with one side −inf: the true term is +inf even if both underflow.
    t = jnp.where(jnp.abs(d) == jnp.inf, jnp.inf, (jnp.exp(a) - jnp.exp(b)) * d)
    return 0.5 * normalisation.row_sum(jnp.where(a == b, jnp.zeros((), t.dtype), t))


def _grads(
    kind: str, a: Array, b: Array | None, beta: Array | None
) -> tuple[Array, Array | None]:
    """∂ value / ∂a and ∂ value / ∂b (None for entropy) per element."""
    p = jnp.exp(a)
    if kind == "entropy":
        return p * (numerics.finite(a) + 1), None
    assert b is not None  # every other kind compares two distributions
    if kind == "forward":
        return p * (numerics.finite(a) - numerics.finite(b) + 1), -p
    if kind == "symmetric":
        q = jnp.exp(b)
        d = numerics.finite(a) - numerics.finite(b)
        return 0.5 * (p * d + p - q), 0.5 * (q - p - q * d)
    if kind in _F_KINDS:
        return _F_KINDS[kind][1](a, b, beta)
    raise ValueError(f"Unknown kernel kind {kind!r}.")


def _parameter(kind: str, beta: Array | None) -> Array | None:
    """α and λ, NaN outside [0, 1] (a traced value cannot be checked)."""
    if kind in ("alpha", "skew"):
        assert beta is not None  # both kinds take their parameter
        return f_divergences.checked(beta)
    return beta


def _values(
    kind: str,
    logits: bool,
    a: Array,
    b: Array | None,
    mask: Array | None,
    t: Array | None,
    beta: Array | None,
) -> Array:
    dtype = numerics.compute_dtype(*(x for x in (a, b) if x is not None))
    beta = _parameter(kind, beta)
    if kind == "forward" and normalisation.normalises(logits, t):
        assert b is not None  # KL compares two distributions
        normalised = functools.partial(
            kl_values.normalised_kl, mask=mask, t=t, dtype=dtype
        )
        if logits:
            return normalised(a, b)

        # Log-probs under a temperature are used as given at T = 1.
        def given(a: Array, b: Array) -> Array:
            return _values(kind, False, a, b, mask, None, beta)

        return lax.cond(t == 1, given, normalised, a, b)
    lp_a = normalisation.log_probs(a, mask, t, logits, dtype)[0]
    lp_b = None if b is None else normalisation.log_probs(b, mask, t, logits, dtype)[0]
    rows = _fast_values(kind, lp_a, lp_b, beta)
    if kind not in ("forward", "symmetric"):
        return rows

    def exact(a: Array, b: Array, mask: Array | None, t: Array | None) -> Array:
        return _exact_values(
            kind,
            normalisation.log_probs(a, mask, t, logits, dtype)[0],
            normalisation.log_probs(b, mask, t, logits, dtype)[0],
        )

    return numerics.unless_all_finite(rows, exact, a, b, mask, t)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def divergence(
    kind: str,
    logits: bool,
    a: Array,
    b: Array | None,
    mask: Array | None,
    t: Array | None,
    beta: Array | None,
) -> Array:
    """Per-position ``kind`` divergence of the distributions given by ``a`` and
    ``b`` over the last axis.

    Args:
      kind: one of :data:`KINDS` (``"entropy"`` gives Σ p log p = −H; ``b`` is
        then None). Static.
      logits: True: ``a``, ``b`` are logits, always normalised as
        ``log_softmax(x / T)``; False: log-probs, used as given at T = 1
        (``t`` None or equal to 1). Static.
      a, b: arrays [..., V] of any float dtype.
      mask: None, or a boolean array [...]: rows where it is False are read as
        zeros (garbage there reaches neither the value nor the gradient).
      t: None or a scalar temperature in the compute dtype.
      beta: the kind's scalar parameter (JS's β, α, skew λ; see
        :data:`PARAMETRISED`), or None. A traced α or λ outside [0, 1] gives
        NaN.
    """
    return _values(kind, logits, a, b, mask, t, beta)


def _coefficients(
    kind: str,
    logits: bool,
    a: Array,
    b: Array | None,
    mask: Array | None,
    t: Array | None,
    beta: Array | None,
) -> tuple[Array, Array | None, Array | None]:
    """∂ value_row / ∂a, ∂ value_row / ∂b per element (in the compute dtype)
    and ∂ value_row / ∂T per row; recomputed from the inputs themselves.

    Each consumer of the per-element cotangents (their row sums, the
    temperature's row sums and the elementwise result) recomputes them from
    its own :func:`independent` view of the inputs; the row statistics of the
    log-softmax ([..., 1]) are computed once and shared."""
    dtype = numerics.compute_dtype(*(x for x in (a, b) if x is not None))
    beta = _parameter(kind, beta)
    xs = (a,) if b is None else (a, b)
    stats = tuple(
        normalisation.row_stats(normalisation.read(x, mask, dtype), t)
        if normalisation.normalises(logits, t)
        else None
        for x in xs
    )

    def fresh(view: int) -> list[tuple[Array, Array, Array | None]]:
        """(∂/∂log-probs, normalised log-probs, s) per input, from a new view."""
        views, view_stats = normalisation.independent((xs, stats), view)
        parts = [
            normalisation.log_probs(x, mask, t, logits, dtype, st)
            for x, st in zip(views, view_stats, strict=True)
        ]
        lp_b = parts[1][0] if len(parts) > 1 else None
        grads = [g for g in _grads(kind, parts[0][0], lp_b, beta) if g is not None]
        return [(g, n, s) for g, (_, n, s) in zip(grads, parts, strict=True)]

    first = fresh(0)
    if first[0][2] is None:  # the inputs are used as given
        return first[0][0], first[1][0] if b is not None else None, None
    sums = [jnp.sum(g, axis=-1, keepdims=True) for g, _, _ in first]
    coefficients = [
        normalisation.through_normalisation(g, n, s, t, logits, g_sum)[0]
        for (g, n, s), g_sum in zip(fresh(1), sums, strict=True)
    ]
    dt: Array | None = None
    if t is not None:  # the temperature's row sums, from a third view
        for (g, n, s), g_sum in zip(fresh(2), sums, strict=True):
            dt_x = normalisation.through_normalisation(g, n, s, t, logits, g_sum)[1]
            assert dt_x is not None  # t is given
            dt = dt_x if dt is None else dt + dt_x
    return coefficients[0], coefficients[1] if b is not None else None, dt


def _divergence_jvp(
    kind: str, logits: bool, primals: tuple[Any, ...], tangents: tuple[Any, ...]
) -> tuple[Array, Array]:
    """The tangent Σ_v (∂/∂a · da + ∂/∂b · db) + ∂/∂T · dT per row: linear in
    the tangents, so reverse mode transposes it into the analytic gradient
    (the coefficients are elementwise in the inputs: under ``jit`` XLA fuses
    them into the gradient instead of storing them). β gets no derivative."""
    a, b, mask, t, beta = primals
    da, db, _, dt, _ = tangents
    values = _values(kind, logits, a, b, mask, t, beta)
    ca, cb, ct = _coefficients(kind, logits, a, b, mask, t, beta)

    def row(c: Array, d: Array) -> Array:
        if mask is not None:  # masked rows were read as zeros: no derivative
            d = jnp.where(mask[..., None], d, jnp.zeros((), d.dtype))
        return jnp.sum(c * d.astype(c.dtype), axis=-1)

    tangent = row(ca, da)
    if cb is not None:  # b is given
        tangent = tangent + row(cb, db)
    if ct is not None:  # t is given
        tangent = tangent + ct * jnp.asarray(dt, ct.dtype)
    return values, tangent.astype(values.dtype)


divergence.defjvp(_divergence_jvp)
