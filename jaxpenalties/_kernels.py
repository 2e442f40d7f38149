"""Exact per-position divergence kernels over the last axis, with analytic VJPs.

Private. Each kernel takes log-probabilities ``a = log p`` and ``b = log q`` of
shape ``[..., V]`` (already upcast, already masked) and returns the per-position
value of shape ``[...]``. The custom VJPs give the analytic gradient, which is
both faster than differentiating through guards and exact where autodiff of
``jnp.where`` leaks NaN (``0 · log 0`` terms):

* forward KL  ``Σ p (a − b)``:          ∂/∂a = p (a − b + 1),   ∂/∂b = −p
* symmetric   ``½ Σ (p − q)(a − b)``:   ∂/∂a = ½ [p (a − b) + p − q]
* JS_β        ``β Σ p (a − m) + (1−β) Σ q (b − m)``, m = log(β p + (1−β) q):
  ∂/∂a = β p (a − m),  ∂/∂b = (1 − β) q (b − m)
* ``Σ p a`` (= −H):                    ∂/∂a = p (a + 1)

Conventions (exact, no clamps): a term with p = 0 (a = −inf) is exactly 0, also
when b = −inf; a term with p > 0 and q = 0 is +inf, even when p underflows.
The fused large-vocabulary path reuses these kernels chunk by chunk.

Speed: selects in the hot loop stop XLA:CPU from vectorising the ``exp`` (seen
here: 3× slower), so no kernel selects per element on its fast path:

* ``−inf`` is read as the most negative finite number, ``lo = finfo.min``
  (``max(a, lo)``: no finite input changes). Every term that this touches is
  multiplied by p = exp(−inf) = 0 exactly, so it becomes the exact 0 instead of
  ``0 · ∞ = NaN``. Gradients, JS and entropy use this form and are exact.
* KL values need one more case, p > 0 with q = 0, whose true value is +inf.
  They evaluate the plain formula, which is exact whenever no ``0 · ∞`` occurs
  and is non-finite (never silently wrong) when one does; only then does a
  ``lax.cond`` recompute the rows with the guarded formula.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

_NEG_INF = -jnp.inf


def _zero_where(cond, x):
    return jnp.where(cond, jnp.zeros((), x.dtype), x)


def finite(x):
    """x with −inf read as the most negative finite number (finite x unchanged)."""
    return jnp.maximum(x, jnp.finfo(x.dtype).min)


def _finish(fast_rows, exact_rows, *operands):
    """``fast_rows``, or ``exact_rows(*operands)`` if any fast row is not finite."""
    flag = jnp.logical_not(jnp.all(jnp.isfinite(fast_rows)))
    return lax.cond(flag, exact_rows, lambda *_: fast_rows, *operands)


def _sum(x):
    return jnp.sum(x, axis=-1)


# ----------------------------------------------------------------------------
# Forward KL: Σ p (a − b)
# ----------------------------------------------------------------------------


def _forward_kl_exact(a, b):
    p = jnp.exp(a)
    d = a - b
    # b = −inf under a > −inf: the true term is +inf even if p underflowed to 0.
    t = jnp.where(d == jnp.inf, jnp.inf, p * d)
    return _sum(_zero_where(a == _NEG_INF, t))


def _forward_kl_fwd(a, b):
    p = jnp.exp(a)
    return _finish(_sum(p * (a - b)), _forward_kl_exact, a, b), (a, b, p)


@jax.custom_vjp
def forward_kl(a, b):
    """Σ_v p (log p − log q) over the last axis: KL(P‖Q) per position."""
    return _forward_kl_fwd(a, b)[0]


def _forward_kl_bwd(res, g):
    a, b, p = res
    g = g[..., None]
    return g * (p * (finite(a) - finite(b) + 1)), -g * p


forward_kl.defvjp(_forward_kl_fwd, _forward_kl_bwd)


# ----------------------------------------------------------------------------
# Symmetric KL: ½ Σ (p − q)(a − b) = ½ (KL(P‖Q) + KL(Q‖P)), one pass
# ----------------------------------------------------------------------------


def _symmetric_kl_exact(a, b):
    d = a - b
    # |d| = inf with one side −inf: the true term is +inf even if both underflow.
    t = jnp.where(jnp.abs(d) == jnp.inf, jnp.inf, (jnp.exp(a) - jnp.exp(b)) * d)
    return 0.5 * _sum(_zero_where(a == b, t))


def _symmetric_kl_fwd(a, b):
    p = jnp.exp(a)
    q = jnp.exp(b)
    rows = _finish(0.5 * _sum((p - q) * (a - b)), _symmetric_kl_exact, a, b)
    return rows, (a, b, p, q)


@jax.custom_vjp
def symmetric_kl(a, b):
    """½ Σ_v (p − q)(log p − log q) over the last axis."""
    return _symmetric_kl_fwd(a, b)[0]


def _symmetric_kl_bwd(res, g):
    a, b, p, q = res
    g = 0.5 * g[..., None]
    d = finite(a) - finite(b)
    return g * (p * d + p - q), g * (q - p - q * d)


symmetric_kl.defvjp(_symmetric_kl_fwd, _symmetric_kl_bwd)


# ----------------------------------------------------------------------------
# Generalised Jensen–Shannon: β KL(P‖M) + (1 − β) KL(Q‖M), M = βP + (1 − β)Q
# ----------------------------------------------------------------------------


def _js_terms(a, b, beta):
    """β p (a − m) and (1 − β) q (b − m); also the gradients w.r.t. a and b."""
    p = jnp.exp(a)
    q = jnp.exp(b)
    # log M from p and q directly: one log instead of logaddexp's exp + log1p.
    # Where M = 0 (p = q = 0, every term below is 0) log(M + 1) = 0 is used
    # instead of −inf: no select, and the second derivative stays finite
    # (d log M = dM / M would be 0 / 0 there).
    mix = beta * p + (1 - beta) * q
    m = jnp.log(mix + (mix == 0).astype(mix.dtype))
    return beta * p * (finite(a) - m), (1 - beta) * q * (finite(b) - m)


def _js_fwd(a, b, beta):
    ta, tb = _js_terms(a, b, beta)
    return _sum(ta + tb), (ta, tb, beta)


@jax.custom_vjp
def js(a, b, beta):
    """β Σ p (a − m) + (1 − β) Σ q (b − m) over the last axis, m = log M."""
    return _js_fwd(a, b, beta)[0]


def _js_bwd(res, g):
    ta, tb, beta = res
    g = g[..., None]
    # β is a validated constant in (0, 1); no gradient flows to it.
    return g * ta, g * tb, jnp.zeros_like(beta)


js.defvjp(_js_fwd, _js_bwd)


# ----------------------------------------------------------------------------
# Σ p a (= −H(P))
# ----------------------------------------------------------------------------


def _neg_entropy_fwd(a):
    p = jnp.exp(a)
    return _sum(p * finite(a)), (a, p)


@jax.custom_vjp
def neg_entropy(a):
    """Σ_v p log p over the last axis (= −H(P)); 0 · log 0 = 0."""
    return _neg_entropy_fwd(a)[0]


def _neg_entropy_bwd(res, g):
    a, p = res
    return (g[..., None] * (p * (finite(a) + 1)),)


neg_entropy.defvjp(_neg_entropy_fwd, _neg_entropy_bwd)


# ----------------------------------------------------------------------------
# Tempered log-softmax: log_softmax(x / T), finite for every T in (0, inf)
# ----------------------------------------------------------------------------


def shifted(x, t):
    """(x − max x) / T: ≤ 0, exactly 0 at the maximum. A tiny T sends every
    other entry to −inf (the greedy limit) instead of overflowing to NaN."""
    top = lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    top = jnp.where(jnp.isfinite(top), top, jnp.zeros((), x.dtype))
    return (x - top) / t


@jax.custom_jvp
def tempered_log_softmax(x, t):
    """``log_softmax(x / t)`` over the last axis, for a scalar ``t`` > 0.

    Entries that are −inf (given, or overflowed for a tiny ``t``) have
    probability 0 and pass no derivative on: their tangent is 0, so the
    derivative w.r.t. ``t`` stays finite where autodiff of ``x / t`` gives
    0 · ∞ = NaN.
    """
    s = shifted(x, t)
    return s - jnp.log(jnp.sum(jnp.exp(s), axis=-1, keepdims=True))


@tempered_log_softmax.defjvp
def _tempered_log_softmax_jvp(primals, tangents):
    x, t = primals
    dx, dt = tangents
    s = shifted(x, t)
    out = s - jnp.log(jnp.sum(jnp.exp(s), axis=-1, keepdims=True))
    # d s = dx / T − s dT / T, zero where s = −inf (probability exactly 0).
    live = s > _NEG_INF
    ds = _zero_where(~live, dx / t - finite(s) * (dt / t))
    p = jnp.exp(out)
    return out, ds - jnp.sum(p * ds, axis=-1, keepdims=True)
