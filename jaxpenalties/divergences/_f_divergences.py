r"""Total variation, Amari's α-divergence and skew KL over a distribution axis.

The same conventions as :func:`jaxpenalties.kl_divergence` (log-probs, or
logits with ``from_logits=True``; ``temperature``, ``where``, ``reduction``,
``axis``, ``extremes``), computed by the one divergence kernel: each term
is ≥ 0 and formed without cancellation near P = Q, so the values are exact
also where the divergence is ≈ 0, and no probability is floored.
"""

from __future__ import annotations

from typing import Any

from jaxpenalties._core import divergence_checks
from jaxpenalties._core.types import Array, ArrayLike, Direction, Reduction
from jaxpenalties._core.types import WithExtremes as _WithExtremes
from jaxpenalties.divergences import _run


def _pair(p: Any, q: Any, axis: Any, swap: bool = False) -> tuple[tuple, int]:
    p, q, axis = divergence_checks.check_pair(p, q, axis)
    return ((q, p) if swap else (p, q)), axis


def total_variation(
    p_logprobs: ArrayLike,
    q_logprobs: ArrayLike,
    *,
    temperature: float | ArrayLike = 1.0,
    reduction: Reduction = "mean",
    where: ArrayLike | None = None,
    axis: int = -1,
    from_logits: bool = False,
    extremes: bool = False,
) -> Array | _WithExtremes:
    r"""Total variation distance ``½ Σ |p − q|``, in [0, 1].

    .. math::

        \mathrm{TV}(P, Q) = \tfrac12 \sum_v |p_v - q_v|

    1 − TV is the acceptance rate of speculative decoding with draft Q and
    target P (Leviathan et al., 2023). Each ``|p − q|`` is formed as
    ``e^{max(a, b)} · (1 − e^{−|a − b|})`` from the log-probs a, b: exact
    where p ≈ q. The gradient w.r.t. log p is ½ sign(p − q) p, and 0 at a
    tie p = q (the subgradient of least norm).

    Args:
      p_logprobs, q_logprobs: log-probabilities (or logits with
        ``from_logits=True``) of the same shape.
      temperature: if not 1, both are re-normalised as ``log_softmax(x / T)``.
      reduction: ``"mean"``, ``"sum"`` or ``"none"``. Static.
      where: optional mask (nonzero = kept) broadcastable to the positions.
      axis: the distribution axis. Static.
      from_logits: normalise the inputs as ``log_softmax(x / T)``. Static.
      extremes: also return ``{"max", "min"}`` over kept positions. Static.

    Returns:
      A scalar, or per-position values for ``reduction="none"``.

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> p, q = jnp.log(jnp.array([0.5, 0.5])), jnp.log(jnp.array([0.9, 0.1]))
      >>> print(f"{jp.total_variation(p, q):.4f}")
      0.4000

    References:
      Leviathan, Kalman and Matias, Fast Inference from Transformers via
      Speculative Decoding, 2023. Wen et al., f-Divergence Minimization for
      Sequence-Level Knowledge Distillation (TVD), 2023.
    """
    xs, axis = _pair(p_logprobs, q_logprobs, axis)
    options = dict(from_logits=from_logits, extremes=extremes)
    return _run.run("tv", xs, None, temperature, where, reduction, axis, **options)


def alpha_divergence(
    p_logprobs: ArrayLike,
    q_logprobs: ArrayLike,
    *,
    alpha: float | ArrayLike = 0.5,
    direction: Direction = "forward",
    temperature: float | ArrayLike = 1.0,
    reduction: Reduction = "mean",
    where: ArrayLike | None = None,
    axis: int = -1,
    from_logits: bool = False,
    extremes: bool = False,
) -> Array | _WithExtremes:
    r"""Amari's α-divergence, α ∈ [0, 1]: KL(Q‖P) at 0, KL(P‖Q) at 1.

    .. math::

        D_\alpha(P \| Q) = \frac{1 - \sum_v p_v^\alpha q_v^{1-\alpha}}
                                {\alpha (1 - \alpha)}
        = \sum_v \frac{p_v^\alpha q_v^{1-\alpha} - \alpha p_v - (1-\alpha) q_v}
                      {\alpha (\alpha - 1)}

    (Amari's form in the parametrisation of Cichocki & Amari 2010, not
    Rényi's.) The second form, the one computed, has terms ≥ 0 and the KL
    terms as its limits: there is no 0/0 at or near α = 0 or 1, where the
    value is the KL of one direction or the other (+inf where one side has
    mass and the other none, its true value). α = ½ is 4 (1 − Σ √(pq)), four
    times the squared Hellinger distance. With P the student and Q the
    teacher, α = 0 is distillation's forward (mode-covering) KL and α = 1 its
    reverse (mode-seeking) KL; α in between interpolates.
    For log-probs used as given, the gradient is that of the second form
    (both forms agree on the simplex).

    Args:
      p_logprobs, q_logprobs: log-probabilities (or logits) of the same shape.
      alpha: α in [0, 1]: a number or a scalar array, which may be traced (a
        new value never recompiles; a traced one outside [0, 1] gives NaN).
      direction: ``"reverse"`` gives D_α(Q‖P) = D_{1−α}(P‖Q). Static.
      temperature, reduction, where, axis, from_logits, extremes: as in
        :func:`total_variation`.

    Returns:
      A scalar, or per-position values for ``reduction="none"``.

    Raises:
      ValueError: a concrete α outside [0, 1], unknown option, shapes.

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> p, q = jnp.log(jnp.array([0.5, 0.5])), jnp.log(jnp.array([0.9, 0.1]))
      >>> print(f"{jp.alpha_divergence(p, q, alpha=0.5):.4f}")  # 4 (1 - BC)
      0.4223
      >>> print(f"{jp.alpha_divergence(p, q, alpha=1.0):.4f}")  # KL(P || Q)
      0.5108

    References:
      Amari, Differential-Geometrical Methods in Statistics, 1985. Cichocki
      and Amari, Families of Alpha- Beta- and Gamma-Divergences, 2010.
    """
    alpha = divergence_checks.check_unit("alpha", alpha)
    swap = divergence_checks.check_direction(direction)
    xs, axis = _pair(p_logprobs, q_logprobs, axis, swap)
    options = dict(from_logits=from_logits, extremes=extremes)
    return _run.run("alpha", xs, alpha, temperature, where, reduction, axis, **options)


def skew_kl_divergence(
    p_logprobs: ArrayLike,
    q_logprobs: ArrayLike,
    *,
    skew: float | ArrayLike = 0.1,
    direction: Direction = "forward",
    temperature: float | ArrayLike = 1.0,
    reduction: Reduction = "mean",
    where: ArrayLike | None = None,
    axis: int = -1,
    from_logits: bool = False,
    extremes: bool = False,
) -> Array | _WithExtremes:
    r"""Skew KL divergence KL(P ‖ λP + (1 − λ)Q), λ = ``skew`` ∈ [0, 1].

    .. math::

        \mathrm{SKL}_\lambda(P \| Q) = \mathrm{KL}(P \,\|\, \lambda P + (1 - \lambda) Q)

    ``direction="reverse"`` gives KL(Q ‖ λQ + (1 − λ)P), DistiLLM's skew
    reverse KL. λ = 0 is the KL itself (+inf where q = 0 < p), λ = 1 is 0;
    for λ > 0 the value is at most −log λ, always finite, and so is the
    gradient. DistiLLM (Ko et al., 2024) takes P the teacher and λ = 0.1;
    with our argument order that is ``skew_kl_divergence(teacher, student)``
    (SKL) and ``skew_kl_divergence(teacher, student, direction="reverse")``
    (SRKL). The mixture is formed in log space (``log1p`` of the mixed
    ratio), each term ≥ 0 (Bregman form), so the value is exact near 0.

    Args:
      p_logprobs, q_logprobs: log-probabilities (or logits) of the same shape.
      skew: λ in [0, 1]: a number or a scalar array, which may be traced (a
        new value never recompiles; a traced one outside [0, 1] gives NaN).
      direction: ``"forward"`` or ``"reverse"`` (P and Q exchanged). Static.
      temperature, reduction, where, axis, from_logits, extremes: as in
        :func:`total_variation`.

    Returns:
      A scalar, or per-position values for ``reduction="none"``.

    Raises:
      ValueError: a concrete λ outside [0, 1], unknown option, shapes.

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> p = jnp.log(jnp.array([1.0, 0.0]))
      >>> q = jnp.log(jnp.array([0.0, 1.0]))
      >>> print(f"{jp.skew_kl_divergence(p, q, skew=0.5):.4f}")  # log 2
      0.6931

    References:
      Lee, On the Effectiveness of the Skew Divergence for Statistical Language
      Analysis, 2001. Ko et al., DistiLLM: Towards Streamlined Distillation for
      Large Language Models, 2024.
    """
    skew = divergence_checks.check_unit("skew", skew)
    swap = divergence_checks.check_direction(direction)
    xs, axis = _pair(p_logprobs, q_logprobs, axis, swap)
    options = dict(from_logits=from_logits, extremes=extremes)
    return _run.run("skew", xs, skew, temperature, where, reduction, axis, **options)
