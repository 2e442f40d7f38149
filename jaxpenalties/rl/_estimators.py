"""KL estimators from the log-probabilities of sampled tokens (no vocab axis)."""

from __future__ import annotations

import functools
from typing import Literal, Unpack, get_args, overload

import jax
import jax.numpy as jnp
from jax import lax

from jaxpenalties._core import checks, numerics
from jaxpenalties._core.types import (
    Array,
    ArrayLike,
    EstimateOptions,
    Estimator,
    Reduction,
)
from jaxpenalties._core.types import WithExtremes as _WithExtremes

ESTIMATORS: tuple[str, ...] = get_args(Estimator)


@functools.partial(jax.jit, static_argnames=("estimator", "reduction", "extremes"))
def _kl_estimate_impl(
    logprobs: Array,
    ref_logprobs: Array,
    max_log_ratio: ArrayLike | None,
    max_value: ArrayLike | None,
    where: ArrayLike | None,
    *,
    estimator: str,
    reduction: str,
    extremes: bool,
) -> Array | _WithExtremes:
    logp, ref = numerics.upcast(logprobs, ref_logprobs)
    mask = checks.broadcast_where(where, logp.shape)
    logp = numerics.sanitize(logp, mask)
    ref = numerics.sanitize(ref, mask)
    # log r = log π_ref(x) − log π(x); a token impossible under both gives 0.
    both_impossible = jnp.isneginf(logp) & jnp.isneginf(ref)
    log_r = jnp.where(both_impossible, jnp.zeros((), logp.dtype), ref - logp)
    if max_log_ratio is not None:
        c = jnp.asarray(max_log_ratio, log_r.dtype)
        log_r = jnp.clip(log_r, -c, c)
    values = _estimate(estimator, log_r)
    if max_value is not None:
        # Clip each value (verl's ±10). A clipped token passes no gradient; it
        # is recomputed at log r = 0 so that 0 · ∞ (e^99 overflows) never
        # reaches the gradient.
        c = jnp.asarray(max_value, values.dtype)
        over = lax.stop_gradient(jnp.abs(values) > c)
        safe = _estimate(estimator, jnp.where(over, jnp.zeros((), log_r.dtype), log_r))
        clipped = lax.stop_gradient(jnp.clip(values, -c, c))
        values = jnp.where(over, clipped, safe)
    return numerics.reduce_with_extremes(values, reduction, mask, extremes)


def _estimate(estimator: str, log_r: Array) -> Array:
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * jnp.square(log_r)
    # (r − 1) − log r with expm1 for accuracy near r = 1; always >= 0. At
    # log r = +inf (π(x) = 0) it is +inf, with the gradient of r (−inf
    # w.r.t. ``logprobs``), not ∞ − ∞ = NaN.
    inf = log_r == jnp.inf
    safe = jnp.where(inf, jnp.zeros((), log_r.dtype), log_r)
    return jnp.where(inf, jnp.expm1(log_r), jnp.expm1(safe) - safe)


@overload
def kl_estimate(
    logprobs: ArrayLike,
    ref_logprobs: ArrayLike,
    *,
    extremes: Literal[False] = False,
    **options: Unpack[EstimateOptions],
) -> Array: ...


@overload
def kl_estimate(
    logprobs: ArrayLike,
    ref_logprobs: ArrayLike,
    *,
    extremes: Literal[True],
    **options: Unpack[EstimateOptions],
) -> _WithExtremes: ...


@overload
def kl_estimate(
    logprobs: ArrayLike,
    ref_logprobs: ArrayLike,
    *,
    extremes: bool = False,
    **options: Unpack[EstimateOptions],
) -> Array | _WithExtremes: ...


def kl_estimate(
    logprobs: ArrayLike,
    ref_logprobs: ArrayLike,
    *,
    estimator: Estimator = "k3",
    max_log_ratio: float | None = None,
    max_value: float | None = None,
    reduction: Reduction = "mean",
    where: ArrayLike | None = None,
    extremes: bool = False,
) -> Array | _WithExtremes:
    r"""Per-token estimate of KL(π‖π_ref) from sampled-token log-probabilities.

    With tokens xₜ ~ π and :math:`r = \pi_{ref}(x_t) / \pi(x_t)`:

    * ``"k1"``: −log r (unbiased, high variance, can be negative);
    * ``"k2"``: ½ (log r)² (biased, low variance; its gradient is that of KL);
    * ``"k3"``: (r − 1) − log r (unbiased, low variance, always ≥ 0).

    k1 and k3 are unbiased for KL(π‖π_ref) under samples from π. The ``exp`` of
    k3 overflows for large log-ratios; ``max_log_ratio=c`` clamps log r to
    [−c, c] first, and ``max_value=m`` clips each token's estimate to [−m, m]
    (verl's k3 uses m = 10); both are off by default: no hidden clamps. A
    clipped token passes no gradient, as with ``jnp.clip``.

    Args:
      logprobs: log π(xₜ) of the sampled tokens under the trained model.
      ref_logprobs: log π_ref(xₜ), same shape.
      estimator: ``"k1"``, ``"k2"`` or ``"k3"``. Static.
      max_log_ratio: optional positive bound on ``|log r|`` (not static: changing
        it does not recompile).
      max_value: optional positive bound on each token's ``|estimate|`` (not
        static).
      reduction: ``"mean"``, ``"sum"`` or ``"none"`` over all axes. Static.
      where: optional mask (nonzero = kept) broadcastable to the input shape.
      extremes: also return ``{"max", "min"}`` of the per-token values over
        kept tokens, as ``(value, metrics)``. Static.

    Returns:
      A scalar, or per-token values for ``reduction="none"``.

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> logp = jnp.log(jnp.array([0.5, 0.25]))
      >>> ref = jnp.log(jnp.array([0.25, 0.25]))
      >>> print(jp.kl_estimate(logp, ref, estimator="k3", reduction="none"))
      [0.19314718 0.        ]

    References:
      Schulman, Approximating KL Divergence, 2020 (blog post).
    """
    checks.check_option("estimator", estimator, ESTIMATORS)
    checks.check_option("reduction", reduction, checks.REDUCTIONS)
    checks.check_bool("extremes", extremes)
    logprobs = checks.check_floating("logprobs", logprobs)
    ref_logprobs = checks.check_floating("ref_logprobs", ref_logprobs)
    checks.check_same_shape("logprobs", logprobs, "ref_logprobs", ref_logprobs)
    max_log_ratio = checks.check_max_log_ratio(max_log_ratio)
    if max_value is not None:
        max_value = checks.check_scalar("max_value", max_value, low=0.0, open_low=True)
    return _kl_estimate_impl(
        logprobs,
        ref_logprobs,
        max_log_ratio,
        max_value,
        where,
        estimator=estimator,
        reduction=reduction,
        extremes=extremes,
    )
