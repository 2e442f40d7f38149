"""Gradient penalties: input-gradient norms (Lipschitz regularisation) and the
cheap output-magnitude proxy.

:func:`gradient_penalty` and :func:`interpolated_gradient_penalty` take a
Python callable, so they are plain functions (not jitted with ``fn`` as an
argument); call them inside your own ``jax.jit``. They differentiate ``fn``
once, and the result is differentiable again (double backprop), e.g. with
respect to the critic's params in a WGAN-GP training step.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxpenalties._core import checks, numerics
from jaxpenalties._core.types import ArrayLike, Reduction


def _per_example_scores(
    fn: Callable[[jax.Array], jax.Array], x: jax.Array
) -> tuple[jax.Array, Callable[[jax.Array], tuple[jax.Array]]]:
    """Evaluates ``fn`` once and returns (scores, pullback) with a shape check."""
    scores, pullback = jax.vjp(fn, x)
    batch = x.shape[0]
    if not hasattr(scores, "shape") or scores.shape not in ((batch,), (batch, 1)):
        shape = getattr(scores, "shape", type(scores).__name__)
        raise ValueError(
            "Expected `fn` to map a batch of shape "
            f"{x.shape} to one score per example, shape ({batch},) or "
            f"({batch}, 1); got {shape}."
        )
    return scores, pullback


@functools.partial(jax.jit, static_argnames=("reduction",))
def _norm_penalty(
    grads: jax.Array, target: jax.Array, *, reduction: Reduction
) -> jax.Array:
    (g,) = numerics.upcast(grads)
    sq = jnp.sum(jnp.square(g.reshape(g.shape[0], math.prod(g.shape[1:]))), axis=1)
    norm = numerics.safe_sqrt(sq)  # finite gradient where the input gradient is 0
    values = jnp.square(norm - jnp.asarray(target, norm.dtype))
    return numerics.reduce(values, reduction, None)


def _check_batch(name: str, x: ArrayLike) -> jax.Array:
    x = checks.check_floating(name, x)
    if x.ndim == 0:
        raise ValueError(
            f"Expected `{name}` to have a leading batch axis (one example per "
            "row), got a scalar."
        )
    return x


def gradient_penalty(
    fn: Callable[[jax.Array], jax.Array],
    x: ArrayLike,
    *,
    target_norm: ArrayLike = 1.0,
    reduction: Reduction = "mean",
) -> jax.Array:
    r"""Penalty on the input-gradient norm of ``fn``, per example.

    .. math::

        \mathrm{GP}_i = \big(\|\nabla_{x_i} f(x)_i\|_2 - t\big)^2

    ``fn`` maps a batch (leading axis = examples) to one score per example
    (shape ``[batch]`` or ``[batch, 1]``). The per-example gradients are the
    rows of ∇ₓ Σᵢ f(x)ᵢ, computed with one backward pass; this equals
    ∇_{xᵢ} f(x)ᵢ when ``fn`` treats examples independently (no batch
    statistics, e.g. no BatchNorm in training mode, which Gulrajani et al. also
    advise against for a critic). The norm is safe: where the gradient is 0
    the penalty's own gradient is finite.

    Args:
      fn: a JAX-traceable callable ``[batch, ...] -> [batch]``.
      x: the floating input batch.
      target_norm: t >= 0 (1 for WGAN-GP, 0 for a zero-centred penalty); a
        Python number or scalar array, not static.
      reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` over examples.

    Returns:
      A scalar, or shape ``[batch]`` for ``reduction="none"``.

    Raises:
      ValueError: for an unknown option, a negative ``target_norm``, a scalar
        ``x`` or an ``fn`` that does not return one score per example.

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> fn = lambda x: 3.0 * x[:, 0] + 4.0 * x[:, 1]  # ‖∇‖ = 5 everywhere
      >>> print(jp.gradient_penalty(fn, jnp.ones((2, 2))))  # (5 − 1)²
      16.0

    References:
      Gulrajani et al., Improved Training of Wasserstein GANs, 2017. Drucker
      and Le Cun, Improving Generalization Performance Using Double
      Backpropagation, 1992.
    """
    checks.check_option("reduction", reduction, checks.REDUCTIONS)
    target_norm = checks.check_scalar("target_norm", target_norm, low=0.0)
    x = _check_batch("x", x)
    scores, pullback = _per_example_scores(fn, x)
    (grads,) = pullback(jnp.ones_like(scores))
    return _norm_penalty(grads, target_norm, reduction=reduction)


@jax.jit
def _interpolate(real: jax.Array, fake: jax.Array, key: jax.Array) -> jax.Array:
    dtype = numerics.compute_dtype(real, fake)
    shape = (real.shape[0],) + (1,) * (real.ndim - 1)
    eps = jax.random.uniform(key, shape, dtype)  # one ε ~ U(0, 1) per example
    mixed = eps * real.astype(dtype) + (1 - eps) * fake.astype(dtype)
    return mixed.astype(jnp.result_type(real, fake))


def interpolated_gradient_penalty(
    fn: Callable[[jax.Array], jax.Array],
    real: ArrayLike,
    fake: ArrayLike,
    *,
    key: jax.Array,
    target_norm: ArrayLike = 1.0,
    reduction: Reduction = "mean",
) -> jax.Array:
    r"""WGAN-GP: :func:`gradient_penalty` at random interpolates of real and fake.

    .. math::

        \hat x_i = \epsilon_i\, \mathrm{real}_i + (1 - \epsilon_i)\,
        \mathrm{fake}_i, \quad \epsilon_i \sim U(0, 1), \qquad
        \mathrm{GP}_i = \big(\|\nabla_{\hat x_i} f(\hat x)_i\|_2 - t\big)^2

    One ε per example, drawn from the explicit ``key``: the same key gives the
    same result. Gradients flow to ``real`` and ``fake`` too; wrap ``fake`` in
    ``jax.lax.stop_gradient`` for the usual critic update.

    Args:
      fn: the critic, ``[batch, ...] -> [batch]`` (see :func:`gradient_penalty`).
      real: a batch of real examples.
      fake: a batch of generated examples, same shape as ``real``.
      key: a ``jax.random`` key.
      target_norm: t >= 0 (default 1, as in WGAN-GP); not static.
      reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` over examples.

    Returns:
      A scalar, or shape ``[batch]`` for ``reduction="none"``.

    Raises:
      ValueError: for mismatched shapes or any error of :func:`gradient_penalty`.

    Example:
      >>> import jax, jax.numpy as jnp, jaxpenalties as jp
      >>> fn = lambda x: jnp.sum(x**2, axis=1)  # ‖∇‖ = 2‖x̂‖
      >>> real, fake = jnp.ones((3, 2)), jnp.zeros((3, 2))
      >>> gp = jp.interpolated_gradient_penalty(
      ...     fn, real, fake, key=jax.random.key(0), reduction="none")
      >>> gp.shape
      (3,)

    References:
      Gulrajani et al., Improved Training of Wasserstein GANs, 2017.
    """
    checks.check_option("reduction", reduction, checks.REDUCTIONS)
    target_norm = checks.check_scalar("target_norm", target_norm, low=0.0)
    real = _check_batch("real", real)
    fake = _check_batch("fake", fake)
    checks.check_same_shape("real", real, "fake", fake)
    x_hat = _interpolate(real, fake, key)
    return gradient_penalty(fn, x_hat, target_norm=target_norm, reduction=reduction)


@functools.partial(jax.jit, static_argnames=("reduction",))
def _output_magnitude_impl(
    y: jax.Array, target: jax.Array, *, reduction: Reduction
) -> jax.Array:
    (y,) = numerics.upcast(y)
    mean_sq = jnp.mean(
        jnp.square(y.reshape(y.shape[0], math.prod(y.shape[1:]))), axis=1
    )
    rms = numerics.safe_sqrt(mean_sq)
    return numerics.reduce(
        jnp.square(rms - jnp.asarray(target, rms.dtype)), reduction, None
    )


def output_magnitude_penalty(
    y: ArrayLike,
    *,
    target: ArrayLike = 1.0,
    reduction: Reduction = "mean",
) -> jax.Array:
    r"""Penalty on each example's output RMS: a cheap proxy for a gradient penalty.

    .. math::

        P_i = \Big(\sqrt{\tfrac{1}{m} \textstyle\sum_j y_{ij}^2} - t\Big)^2

    over the m elements of example i (all axes but the leading one).

    Args:
      y: floating outputs with a leading batch axis.
      target: the target RMS t >= 0; a Python number or scalar array, not
        static.
      reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` over examples.

    Returns:
      A scalar, or shape ``[batch]`` for ``reduction="none"``.

    Raises:
      ValueError: for an unknown option, a negative ``target`` or a scalar ``y``.

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> y = jnp.array([[3.0, 4.0], [1.0, 1.0]])  # RMS √12.5 and 1
      >>> print(jp.output_magnitude_penalty(y, reduction="none"))
      [6.428932 0.      ]
    """
    checks.check_option("reduction", reduction, checks.REDUCTIONS)
    target = checks.check_scalar("target", target, low=0.0)
    y = _check_batch("y", y)
    return _output_magnitude_impl(y, target, reduction=reduction)
