r"""Private: the per-element terms and derivatives of total variation, Amari's
α-divergence and skew KL, for the kernel (:mod:`.kernel`).

Each function takes log-probabilities ``a = log p``, ``b = log q`` ([..., V],
in the compute dtype, already normalised or used as given) and the scalar
parameter, and returns per-element terms whose row sum is the divergence, or
the per-element derivatives of that row sum w.r.t. ``a`` and ``b``. Every term
is ≥ 0 and is formed without cancellation where p ≈ q (a series near d = 0),
so the values are exact also where the divergence is ≈ 0.

* total variation ``½ Σ |p − q|``, ``|p − q| = e^{max(a, b)} (1 − e^{−|a − b|})``:
  ∂/∂a = ½ sign(a − b) p, ∂/∂b = −½ sign(a − b) q (0 at a tie, the
  subgradient of least norm);
* Amari's α-divergence, α ∈ [0, 1], in its generalised (Bregman) form
  ``Σ [p^α q^{1−α} − α p − (1 − α) q] / (α (α − 1))``, which is the closed
  form ``(1 − Σ p^α q^{1−α}) / (α (1 − α))`` for normalised P, Q, KL(P‖Q) at
  α = 1 and KL(Q‖P) at α = 0, with no 0/0 at or near either end:
  ∂/∂a = −p expm1(−(1 − α) d) / (1 − α), ∂/∂b = −q expm1(α d) / α (d = a − b);
* skew KL ``KL(P ‖ λP + (1 − λ)Q)`` in its Bregman form Σ p φ(μ) with
  μ = log M − log p, φ(μ) = e^μ − 1 − μ ≥ 0 (Σ M = Σ p = 1):
  ∂/∂a = −p μ − λ (p²/M − p), ∂/∂b = (1 − λ)(q − pq/M).

A traced parameter outside [0, 1] gives NaN (:func:`checked`). Entries at −inf
(zero mass) follow the library's conventions: a term with p = q = 0 is 0, and
the true +inf of α ∈ {0, 1} and λ = 0 where only one side has mass is kept.
References: Amari, Differential-Geometrical Methods in Statistics (1985);
Cichocki & Amari, Families of Alpha- Beta- and Gamma- Divergences (2010);
Ko et al., DistiLLM (2024); Lee, On the Effectiveness of the Skew Divergence
(1999).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from jax import lax

from jaxpenalties._core import numerics
from jaxpenalties._core.types import Array

_RADIUS = 0.5  # |δ| below which g(β, δ) is its series


def checked(param: Array) -> Array:
    """The parameter, NaN when it lies outside [0, 1] (only possible traced:
    a concrete one is refused), so that every value it reaches is NaN."""
    ok = jnp.logical_and(param >= 0, param <= 1)
    return param + jnp.where(ok, jnp.zeros((), param.dtype), jnp.nan)


# --- Generalised Jensen–Shannon ------------------------------------------


def js_grads(a: Array, b: Array, beta: Array) -> tuple[Array, Array]:
    """β p (a − m) and (1 − β) q (b − m) with m = log M, M = β p + (1 − β) q:
    the JS terms, also ∂ JS / ∂a and ∂ JS / ∂b.

    m is taken relative to the larger side: with top = max(a, b) and
    r = max(p, q) = e^top, M / r − 1 = (β (p − r) + (1 − β)(q − r)) / r, so
    m = top + log1p of it. One of p − r, q − r is exactly 0 and the other is
    exact or rounded once, so where p = q, m = a exactly (JS is exactly 0),
    and M / r ≥ min(β, 1 − β) never underflows. Three transcendentals
    (e^a, e^b, log1p) and no sign or select, which XLA:CPU would not vectorise.
    Where both p and q underflow, r is read as the smallest normal number and
    the quotient is floored at its lower bound: the terms are then p · finite
    and q · finite, i.e. 0 (also for −inf inputs, read as ``lo``).
    """
    fa, fb = numerics.finite(a), numerics.finite(b)
    p, q = jnp.exp(a), jnp.exp(b)
    # top and r are reference points: m = top + log(M / r) for any top = log r,
    # so they carry no derivative (and no 1 / r² into second derivatives).
    top = lax.stop_gradient(jnp.maximum(fa, fb))
    r = lax.stop_gradient(jnp.maximum(jnp.maximum(p, q), jnp.finfo(p.dtype).tiny))
    ratio = (beta * (p - r) + (1 - beta) * (q - r)) / r
    m = top + jnp.log1p(jnp.maximum(ratio, jnp.minimum(beta, 1 - beta) - 1))
    return beta * p * (fa - m), (1 - beta) * q * (fb - m)


def js_terms(a: Array, b: Array, beta: Array) -> Array:
    """Each element's β p log(p/M) + (1 − β) q log(q/M), floored at 0: it is
    ≥ 0 (Jensen on x log x), so the floor removes only rounding."""
    ta, tb = js_grads(a, b, beta)
    return jnp.maximum(ta + tb, 0)


# --- Total variation ------------------------------------------------------


def tv_terms(a: Array, b: Array) -> Array:
    """½ |p − q| per element, as ½ e^{max} (−expm1(−|d|)): exact near p = q."""
    fa, fb = numerics.finite(a), numerics.finite(b)
    return 0.5 * jnp.exp(jnp.maximum(fa, fb)) * -jnp.expm1(-jnp.abs(fa - fb))


def tv_grads(a: Array, b: Array) -> tuple[Array, Array]:
    s = 0.5 * jnp.sign(numerics.finite(a) - numerics.finite(b))
    return s * jnp.exp(a), -s * jnp.exp(b)


# --- Amari's α-divergence -------------------------------------------------


def _expm1_over(beta: Array, x: Array) -> Array:
    """expm1(β x) / β, with its limit x at β = 0 (x finite)."""
    y = beta * x
    small = jnp.abs(y) < 1e-4
    safe = jnp.where(small, jnp.ones((), beta.dtype), beta)
    return jnp.where(small, x * (1 + y / 2 + y * y / 6), jnp.expm1(y) / safe)


def _g_series(beta: Array, delta: Array) -> Array:
    """g(β, δ) = Σ_{k≥2} c_k(β) δ^k / k!, c_k = 1 + β + … + β^{k−2}."""
    order = 11 if jnp.finfo(delta.dtype).bits <= 32 else 19
    cs = [jnp.ones_like(beta)]
    for _ in range(order - 2):
        cs.append(1 + beta * cs[-1])
    acc = cs[-1] / math.factorial(order)
    for k in range(order - 1, 1, -1):
        acc = acc * delta + cs[k - 2] / math.factorial(k)
    return delta * delta * acc


def _g(beta: Array, delta: Array) -> Array:
    """g(β, δ) = [expm1(βδ) − β expm1(δ)] / (β (β − 1)) for δ ≤ 0 finite and
    β ∈ [0, 1], without 0/0: divided by whichever of 1 − β and β is ≥ ½."""
    gamma = 1 - beta
    near = jnp.abs(delta) <= _RADIUS
    d = jnp.where(near, -jnp.ones((), delta.dtype), delta)  # the far branch
    far_a = (jnp.expm1(d) - _expm1_over(beta, d)) / jnp.maximum(gamma, 0.5)
    # δ e^{βδ} expm1(γδ)/(γδ) − expm1(δ), over β: no overflow (γδ ≤ 0).
    far_b = (jnp.exp(beta * d) * _expm1_over(gamma, d) - jnp.expm1(d)) / jnp.maximum(
        beta, 0.5
    )
    far = jnp.where(beta <= 0.5, far_a, far_b)
    series = _g_series(beta, jnp.where(near, delta, jnp.zeros((), delta.dtype)))
    return jnp.where(near, series, far)


def alpha_terms(a: Array, b: Array, alpha: Array) -> Array:
    """[p^α q^{1−α} − α p − (1 − α) q] / (α (α − 1)) per element (≥ 0):
    e^{max(a, b)} g(β, −|a − b|) with β = α where p ≤ q, 1 − α where p > q."""
    one_sided = jnp.logical_xor(a == -jnp.inf, b == -jnp.inf)
    fa, fb = numerics.finite(a), numerics.finite(b)
    d = jnp.where(one_sided, jnp.zeros((), fa.dtype), fa - fb)
    beta = jnp.where(d <= 0, alpha, 1 - alpha)
    terms = jnp.exp(jnp.maximum(fa, fb)) * _g(beta, -jnp.abs(d))
    # One side without mass: the other's mass / β, +inf at β = 0 (a KL end).
    beta_inf = jnp.where(fa < fb, alpha, 1 - alpha)
    safe = jnp.where(beta_inf > 0, beta_inf, jnp.ones((), beta_inf.dtype))
    inf = jnp.asarray(jnp.inf, fa.dtype)
    edge = jnp.where(beta_inf > 0, jnp.exp(jnp.maximum(fa, fb)) / safe, inf)
    return jnp.where(one_sided, edge, terms)


def alpha_grads(a: Array, b: Array, alpha: Array) -> tuple[Array, Array]:
    """−p expm1(−γ d)/γ and −q expm1(α d)/α (γ = 1 − α), each written on the
    side whose exponential cannot overflow; finite also at −inf entries."""
    gamma = 1 - alpha
    fa, fb = numerics.finite(a), numerics.finite(b)
    d = fa - fb
    p, q = jnp.exp(fa), jnp.exp(fb)
    up = jnp.maximum(d, 0)  # d where p > q, else 0
    down = jnp.minimum(d, 0)  # d where p < q, else 0
    # p > q: −p expm1(−γd)/γ;  p < q: q e^{αd} expm1(γd)/γ (the same number).
    da = jnp.where(
        d >= 0,
        -p * _expm1_over(gamma, -up),
        jnp.exp(fb + alpha * down) * _expm1_over(gamma, down),
    )
    # p < q: −q expm1(αd)/α;  p > q: p e^{−γd} expm1(−αd)/α.
    db = jnp.where(
        d <= 0,
        -q * _expm1_over(alpha, down),
        jnp.exp(fa - gamma * up) * _expm1_over(alpha, -up),
    )
    return da, db


# --- Skew KL ----------------------------------------------------------------


def _log_mix_ratio(a: Array, b: Array, lam: Array) -> Array:
    """μ = log(λ p + (1 − λ) q) − log p, exactly 0 where p = q: log1p of
    (1 − λ) expm1(b − a) (or of λ expm1(a − b), on the other side) while that
    stays above −½, else a logaddexp (inputs finite)."""
    d = b - a
    x = jnp.where(
        d <= 0,
        (1 - lam) * jnp.expm1(jnp.minimum(d, 0)),
        lam * jnp.expm1(jnp.minimum(-d, 0)),
    )
    base = jnp.maximum(d, 0)
    safe_x = jnp.where(x > -0.5, x, jnp.zeros((), x.dtype))
    near = base + jnp.log1p(safe_x)
    far = jnp.logaddexp(jnp.log(lam), jnp.log1p(-lam) + d)
    return jnp.where(x > -0.5, near, far)


def _phi(mu: Array, p: Array, mix: Array) -> Array:
    """p (e^μ − 1 − μ) = M − p − p μ, by its series for |μ| ≤ ¼."""
    r = jnp.minimum(1, 0.25 / jnp.abs(mu))
    inside = jnp.floor(r)
    x = mu * r
    order = 8 if jnp.finfo(mu.dtype).bits <= 32 else 13
    acc = jnp.full_like(x, 1 / math.factorial(order))
    for k in range(order - 1, 1, -1):
        acc = acc * x + 1 / math.factorial(k)
    series = p * x * x * acc
    return inside * series + (1 - inside) * (mix - p - p * mu)


def skew_terms(a: Array, b: Array, lam: Array) -> Array:
    """p φ(μ) per element (≥ 0); +inf where q = 0 < p at λ = 0 (KL(P‖Q))."""
    fa, fb = numerics.finite(a), numerics.finite(b)
    mu = _log_mix_ratio(fa, fb, lam)
    p, q = jnp.exp(fa), jnp.exp(fb)
    terms = _phi(mu, p, lam * p + (1 - lam) * q)
    infinite = (b == -jnp.inf) & (a > -jnp.inf) & (lam == 0)
    return jnp.where(infinite, jnp.asarray(jnp.inf, terms.dtype), terms)


def skew_grads(a: Array, b: Array, lam: Array) -> tuple[Array, Array]:
    """−p μ − λ (p²/M − p) and (1 − λ)(q − p q / M), every product formed in
    log space (p²/M = e^{a − μ}, p q / M = e^{b − μ})."""
    fa, fb = numerics.finite(a), numerics.finite(b)
    mu = _log_mix_ratio(fa, fb, lam)
    p, q = jnp.exp(fa), jnp.exp(fb)
    log_lam = jnp.log(lam)  # −inf at λ = 0: the λ terms are then exactly 0
    da = -p * mu - (jnp.exp(log_lam + fa - mu) - jnp.exp(log_lam + fa))
    db = (1 - lam) * (q - jnp.exp(fb - mu))
    return da, db
