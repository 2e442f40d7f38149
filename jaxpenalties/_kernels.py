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
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_NEG_INF = -jnp.inf


def _zero_where(cond, x):
    return jnp.where(cond, jnp.zeros((), x.dtype), x)


# ----------------------------------------------------------------------------
# Forward KL: Σ p (a − b)
# ----------------------------------------------------------------------------


def _forward_kl_terms(a, b):
    p = jnp.exp(a)
    d = a - b
    # b = −inf under a > −inf: the true term is +inf even if p underflowed to 0.
    t = jnp.where(d == jnp.inf, jnp.inf, p * d)
    return _zero_where(a == _NEG_INF, t)


@jax.custom_vjp
def forward_kl(a, b):
    """Σ_v p (log p − log q) over the last axis: KL(P‖Q) per position."""
    return jnp.sum(_forward_kl_terms(a, b), axis=-1)


def _forward_kl_fwd(a, b):
    return forward_kl(a, b), (a, b)


def _forward_kl_bwd(res, g):
    a, b = res
    g = g[..., None]
    p = jnp.exp(a)
    ga = _zero_where(a == _NEG_INF, p * (a - b + 1))
    return g * ga, -g * p


forward_kl.defvjp(_forward_kl_fwd, _forward_kl_bwd)


# ----------------------------------------------------------------------------
# Symmetric KL: ½ Σ (p − q)(a − b) = ½ (KL(P‖Q) + KL(Q‖P)), one pass
# ----------------------------------------------------------------------------


def _symmetric_kl_terms(a, b):
    p = jnp.exp(a)
    q = jnp.exp(b)
    d = a - b
    # |d| = inf with one side −inf: the true term is +inf even if both underflow.
    t = jnp.where(jnp.abs(d) == jnp.inf, jnp.inf, (p - q) * d)
    return _zero_where(a == b, t)


@jax.custom_vjp
def symmetric_kl(a, b):
    """½ Σ_v (p − q)(log p − log q) over the last axis."""
    return 0.5 * jnp.sum(_symmetric_kl_terms(a, b), axis=-1)


def _symmetric_kl_fwd(a, b):
    return symmetric_kl(a, b), (a, b)


def _symmetric_kl_bwd(res, g):
    a, b = res
    g = 0.5 * g[..., None]
    p = jnp.exp(a)
    q = jnp.exp(b)
    d = a - b
    ga = _zero_where(a == _NEG_INF, p * d) + (p - q)
    gb = _zero_where(b == _NEG_INF, -q * d) + (q - p)
    return g * ga, g * gb


symmetric_kl.defvjp(_symmetric_kl_fwd, _symmetric_kl_bwd)


# ----------------------------------------------------------------------------
# Generalised Jensen–Shannon: β KL(P‖M) + (1 − β) KL(Q‖M), M = βP + (1 − β)Q
# ----------------------------------------------------------------------------


def _js_terms(a, b, beta):
    log_beta = jnp.log(beta)
    log_1m_beta = jnp.log1p(-beta)
    m = jnp.logaddexp(a + log_beta, b + log_1m_beta)
    ta = _zero_where(a == _NEG_INF, beta * jnp.exp(a) * (a - m))
    tb = _zero_where(b == _NEG_INF, (1 - beta) * jnp.exp(b) * (b - m))
    return ta, tb


@jax.custom_vjp
def js(a, b, beta):
    """β Σ p (a − m) + (1 − β) Σ q (b − m) over the last axis, m = log M."""
    ta, tb = _js_terms(a, b, beta)
    return jnp.sum(ta + tb, axis=-1)


def _js_fwd(a, b, beta):
    return js(a, b, beta), (a, b, beta)


def _js_bwd(res, g):
    a, b, beta = res
    ta, tb = _js_terms(a, b, beta)
    g = g[..., None]
    # β is a validated constant in (0, 1); no gradient flows to it.
    return g * ta, g * tb, jnp.zeros_like(beta)


js.defvjp(_js_fwd, _js_bwd)


# ----------------------------------------------------------------------------
# Σ p a (= −H(P))
# ----------------------------------------------------------------------------


@jax.custom_vjp
def neg_entropy(a):
    """Σ_v p log p over the last axis (= −H(P)); 0 · log 0 = 0."""
    return jnp.sum(_zero_where(a == _NEG_INF, jnp.exp(a) * a), axis=-1)


def _neg_entropy_fwd(a):
    return neg_entropy(a), a


def _neg_entropy_bwd(a, g):
    ga = _zero_where(a == _NEG_INF, jnp.exp(a) * (a + 1))
    return (g[..., None] * ga,)


neg_entropy.defvjp(_neg_entropy_fwd, _neg_entropy_bwd)
