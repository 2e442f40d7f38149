r"""ULD: the Universal Logit Distillation loss, a Wasserstein-1 distance
between two distributions over vocabularies of different sizes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxpenalties._core import checks, divergence_checks, numerics, uld
from jaxpenalties._core.types import Array, ArrayLike, Reduction
from jaxpenalties._core.types import WithExtremes as _WithExtremes
from jaxpenalties.divergences import _run


def uld_distance(
    p_logprobs: ArrayLike,
    q_logprobs: ArrayLike,
    *,
    top_k: int | None = None,
    temperature: float | ArrayLike = 1.0,
    reduction: Reduction = "mean",
    where: ArrayLike | None = None,
    axis: int = -1,
    from_logits: bool = False,
    extremes: bool = False,
) -> Array | _WithExtremes:
    r"""ULD: ``Σᵢ |p↓ᵢ − q↓ᵢ|`` over the sorted probabilities, any vocabulary sizes.

    .. math::

        \mathrm{ULD}(P, Q) = \sum_i |p^\downarrow_i - q^\downarrow_i|
            = W_1(p^\downarrow, q^\downarrow)

    with p↓, q↓ each distribution's probabilities in decreasing order and the
    shorter padded with zeros: the Wasserstein-1 distance of Boizard et al.
    (2024) for distillation across tokenizers, in [0, 2]. Exact (twice the
    total variation of the sorted vectors, by the kernel's exact terms), with
    the gradient through the sort. ``p_logprobs`` [..., V_p] and
    ``q_logprobs`` [..., V_q] share their position shape; V_p and V_q may
    differ.

    ``top_k=k`` truncates, as distillation code often does to bound the
    cost of the sort: each side keeps its k largest entries, plus one bucket
    for the rest of its mass (log(1 − Σ_k p), in log space), so the value is
    ``Σ_{i≤k} |p↓ᵢ − q↓ᵢ|`` plus the exact remainder ``|tail_p − tail_q|`` (a lower
    bound of the full distance; TRL's GOLD sorts the whole vocabularies,
    which is ``top_k=None``). A stored top-k teacher
    ([..., k] log-probs of the full teacher, exps summing to at most 1) is a
    ``q_logprobs`` of width k with ``top_k=k``: its bucket holds the mass its
    entries miss.

    Args:
      p_logprobs: log-probabilities (or logits) [..., V_p], e.g. the student.
      q_logprobs: log-probabilities (or logits) [..., V_q], e.g. the teacher.
      top_k: None (the full sorted vectors) or a positive int. Static.
      temperature: if not 1, each side is re-normalised as
        ``log_softmax(x / T)`` before sorting; no T² factor.
      reduction: ``"mean"``, ``"sum"`` or ``"none"``. Static.
      where: optional mask (nonzero = kept) broadcastable to the positions.
      axis: the distribution axis of both. Static.
      from_logits: normalise each side as ``log_softmax(x / T)``. Static.
      extremes: also return ``{"max", "min"}`` over kept positions. Static.

    Returns:
      A scalar, or per-position values for ``reduction="none"``.

    Raises:
      ValueError: position shapes that differ (naming both), an empty
        vocabulary, a bad ``top_k``, unknown option.

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> student = jnp.log(jnp.array([0.1, 0.6, 0.3]))
      >>> teacher = jnp.log(jnp.array([0.2, 0.7, 0.05, 0.05]))  # another vocabulary
      >>> print(f"{jp.uld_distance(student, teacher):.4f}")  # .1 + .1 + .05 + .05
      0.3000

    References:
      Boizard et al., Towards Cross-Tokenizer Distillation: the Universal
      Logit Distillation Loss for LLMs, 2024.
    """
    checks.check_option("reduction", reduction, checks.REDUCTIONS)
    checks.check_bool("from_logits", from_logits)
    checks.check_bool("extremes", extremes)
    top_k = divergence_checks.check_top_k(top_k)
    p = checks.check_floating("p_logprobs", p_logprobs)
    q = checks.check_floating("q_logprobs", q_logprobs)
    axis = checks.normalize_axis(axis, p.ndim)
    if q.ndim != p.ndim or _positions(p.shape, axis) != _positions(q.shape, axis):
        raise ValueError(
            "Expected `p_logprobs` and `q_logprobs` to have the same shape but "
            f"for the distribution axis (`axis` = {axis}), got {p.shape} and "
            f"{q.shape}."
        )
    if 0 in (p.shape[axis], q.shape[axis]):
        raise ValueError(
            "Expected the log-probabilities (or logits) to have at least one "
            f"entry along the distribution axis, got shapes {p.shape} and {q.shape}."
        )
    t = divergence_checks.check_temperature(temperature)
    if not from_logits and t is None and top_k is None:
        # A width-k stored teacher holds less than mass 1 by design: checked
        # only when neither side is meant to be truncated.
        names = ("p_logprobs`", "q_logprobs`")
        _run.warn_if_not_logprobs(
            "uld_distance", names, (p, q), where, axis, stacklevel=3
        )
    return _impl(
        p,
        q,
        t,
        where,
        top_k=top_k,
        reduction=reduction,
        axis=axis,
        from_logits=from_logits,
        extremes=extremes,
    )


def _positions(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return shape[:axis] + shape[axis + 1 :]


@functools.partial(
    jax.jit,
    static_argnames=("top_k", "reduction", "axis", "from_logits", "extremes"),
)
def _impl(
    p: Array,
    q: Array,
    temperature: ArrayLike | None,
    where: ArrayLike | None,
    *,
    top_k: int | None,
    reduction: str,
    axis: int,
    from_logits: bool,
    extremes: bool,
) -> Array | _WithExtremes:
    p, q = jnp.moveaxis(p, axis, -1), jnp.moveaxis(q, axis, -1)
    dtype = numerics.compute_dtype(p, q)
    mask = checks.broadcast_where(where, p.shape[:-1])
    t = None if temperature is None else jnp.asarray(temperature, dtype)
    values = uld.distance(p, q, mask, t, from_logits, top_k)
    return numerics.reduce_with_extremes(values, reduction, mask, extremes)
