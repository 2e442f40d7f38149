"""Generalised Jensen–Shannon divergence
JS_β(P‖Q) = β KL(P‖M) + (1 − β) KL(Q‖M), M = β P + (1 − β) Q. Lin (1991).
"""

from __future__ import annotations

from typing import Literal, Unpack, overload

from jaxpenalties._core import divergence_checks
from jaxpenalties._core.types import (
    Array,
    ArrayLike,
    JSOptions,
    Reduction,
)
from jaxpenalties._core.types import WithExtremes as _WithExtremes
from jaxpenalties.divergences import _run


@overload
def js_divergence(
    p_logprobs: ArrayLike,
    q_logprobs: ArrayLike,
    *,
    extremes: Literal[False] = False,
    **options: Unpack[JSOptions],
) -> Array: ...


@overload
def js_divergence(
    p_logprobs: ArrayLike,
    q_logprobs: ArrayLike,
    *,
    extremes: Literal[True],
    **options: Unpack[JSOptions],
) -> _WithExtremes: ...


@overload
def js_divergence(
    p_logprobs: ArrayLike,
    q_logprobs: ArrayLike,
    *,
    extremes: bool = False,
    **options: Unpack[JSOptions],
) -> Array | _WithExtremes: ...


def js_divergence(
    p_logprobs: ArrayLike,
    q_logprobs: ArrayLike,
    *,
    beta: float = 0.5,
    temperature: float | ArrayLike = 1.0,
    reduction: Reduction = "mean",
    where: ArrayLike | None = None,
    axis: int = -1,
    from_logits: bool = False,
    extremes: bool = False,
) -> Array | _WithExtremes:
    r"""Generalised Jensen–Shannon divergence in log space.

    .. math::

        M = \beta P + (1 - \beta) Q, \qquad
        \mathrm{JS}_\beta(P \| Q) = \beta\,\mathrm{KL}(P \| M)
            + (1 - \beta)\,\mathrm{KL}(Q \| M)

    ``log M`` is formed in log space, relative to the larger of log p and log q
    (``top + log1p(c · expm1(min − top))``, never ``log(max(m, eps))``), so the
    value is exact and always finite; β = 0.5 is the standard JS divergence,
    bounded by log 2. The gradient is β p (log p − log m) w.r.t. ``log p``.

    β weights P. TRL's GKD ``beta=β`` and Liger's ``LigerJSD(beta=β)`` weight the
    teacher: both are ``js_divergence(student, teacher, beta=1 - β)``.

    Args:
      p_logprobs: log-probabilities of P (e.g. the student).
      q_logprobs: log-probabilities of Q (e.g. the teacher), same shape.
      beta: mixture weight in the open interval (0, 1), a Python float (an
        array, traced or not, is refused). Called outside ``jax.jit``, a new
        value does not recompile.
      temperature: if not 1 (of any type), inputs are re-normalised as
        ``log_softmax(x / T)`` first; no T² factor.
      reduction: ``"mean"``, ``"sum"`` or ``"none"``. Static.
      where: optional mask (nonzero = kept) broadcastable to the position shape.
      axis: the distribution axis. Static.
      from_logits: the inputs are logits: normalised as ``log_softmax(x / T)``
        inside the kernel (also at T = 1), with no [..., V] copy. Static.
      extremes: also return ``{"max", "min"}`` of the per-position values over
        kept positions, as ``(value, metrics)`` (what ``Penalty`` reports).
        Static.

    Returns:
      A scalar, or per-position values for ``reduction="none"``.

    Raises:
      ValueError: β outside (0, 1), unknown option, mismatched shapes.

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> p = jnp.log(jnp.array([1.0, 0.0]))
      >>> q = jnp.log(jnp.array([0.0, 1.0]))
      >>> print(f"{jp.js_divergence(p, q):.6f}")  # disjoint supports: log 2
      0.693147

    References:
      Agarwal et al., On-Policy Distillation of Language Models: Learning from
      Self-Generated Mistakes (GKD), 2024. Lin, Divergence measures based on the
      Shannon entropy, 1991.
    """
    beta = divergence_checks.check_beta(beta)
    p, q, axis = divergence_checks.check_pair(p_logprobs, q_logprobs, axis)
    options = dict(from_logits=from_logits, extremes=extremes)
    return _run.run("js", (p, q), beta, temperature, where, reduction, axis, **options)
