"""KL(P‖Q) = Σ p (log p − log q) over a distribution axis: forward, reverse, or
symmetric (½ (KL(P‖Q) + KL(Q‖P)) in one pass). Kullback & Leibler (1951).
"""

from __future__ import annotations

from typing import Literal, Unpack, overload

from jaxpenalties._core import divergence_checks
from jaxpenalties._core.types import (
    Array,
    ArrayLike,
    Direction,
    KLOptions,
    Reduction,
)
from jaxpenalties._core.types import WithExtremes as _WithExtremes
from jaxpenalties.divergences import _run


@overload
def kl_divergence(
    p_logprobs: ArrayLike,
    q_logprobs: ArrayLike,
    *,
    extremes: Literal[False] = False,
    **options: Unpack[KLOptions],
) -> Array: ...


@overload
def kl_divergence(
    p_logprobs: ArrayLike,
    q_logprobs: ArrayLike,
    *,
    extremes: Literal[True],
    **options: Unpack[KLOptions],
) -> _WithExtremes: ...


@overload
def kl_divergence(
    p_logprobs: ArrayLike,
    q_logprobs: ArrayLike,
    *,
    extremes: bool = False,
    **options: Unpack[KLOptions],
) -> Array | _WithExtremes: ...


def kl_divergence(
    p_logprobs: ArrayLike,
    q_logprobs: ArrayLike,
    *,
    direction: Direction = "forward",
    symmetric: bool = False,
    temperature: float | ArrayLike = 1.0,
    reduction: Reduction = "mean",
    where: ArrayLike | None = None,
    axis: int = -1,
    from_logits: bool = False,
    extremes: bool = False,
) -> Array | _WithExtremes:
    r"""Kullback–Leibler divergence between two distributions in log space.

    .. math::

        \mathrm{KL}(P \| Q) = \sum_v p_v (\log p_v - \log q_v)

    ``direction="forward"`` gives KL(P‖Q), ``"reverse"`` gives KL(Q‖P) and
    ``symmetric=True`` gives ½(KL(P‖Q) + KL(Q‖P)) = ½ Σ (p − q)(log p − log q),
    computed in one pass (``direction`` is then ignored).

    Exact: a term with p = 0 is 0 (also where q = 0), a term with p > 0 and
    q = 0 makes the value +inf; no clipping and no probability floor.
    Derivatives are analytic (custom JVP; reverse and forward mode) and
    finite wherever the value is.

    Args:
      p_logprobs: log-probabilities of P, e.g. ``jax.nn.log_softmax(logits)``.
      q_logprobs: log-probabilities of Q (the reference), same shape.
      direction: ``"forward"`` (KL(P‖Q)) or ``"reverse"`` (KL(Q‖P)). Static.
      symmetric: average both directions. Static.
      temperature: if not 1, both inputs are first re-normalised as
        ``log_softmax(x / T)``. No T² factor is applied (Hinton et al. multiply
        the loss by T² to keep gradient magnitudes; do so in the weight).
        A Python float or a scalar array (changing it never recompiles); at
        T = 1, of either type, the inputs are used as given.
      reduction: ``"mean"`` over True positions, ``"sum"`` or ``"none"``. Static.
      where: optional mask (nonzero = kept) broadcastable to the position shape (the
        input shape without ``axis``). Masked positions may hold garbage.
      axis: the distribution axis. Static.
      from_logits: the inputs are logits: normalised as ``log_softmax(x / T)``
        inside the kernel (also at T = 1), with no [..., V] copy. Static.
      extremes: also return ``{"max", "min"}`` of the per-position values over
        kept positions, as ``(value, metrics)`` (what ``Penalty`` reports).
        Static.

    Returns:
      A float32 scalar (float64 for float64 inputs), or the per-position values
      of shape ``p_logprobs.shape`` without ``axis`` for ``reduction="none"``.

    Raises:
      ValueError: for an unknown option value or mismatched shapes.
      TypeError: for a traced value given as a static option, or integer input.

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> p = jnp.log(jnp.array([0.5, 0.5]))
      >>> q = jnp.log(jnp.array([0.25, 0.75]))
      >>> print(f"{jp.kl_divergence(p, q):.4f}")  # ½ log 2 + ½ log(2/3)
      0.1438

    References:
      Kullback and Leibler, On Information and Sufficiency, 1951.
    """
    kind, swap = divergence_checks.check_kl_direction(direction, symmetric)
    p, q, axis = divergence_checks.check_pair(p_logprobs, q_logprobs, axis)
    pair = (q, p) if swap else (p, q)
    options = dict(from_logits=from_logits, extremes=extremes)
    return _run.run(kind, pair, None, temperature, where, reduction, axis, **options)
