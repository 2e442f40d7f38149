r"""KL and Jensen–Shannon divergences against a sparse top-k teacher.

Distillation data often stores the teacher as its top-k log-probabilities per
position: ``teacher_indices`` [..., k] (distinct vocabulary entries) and
``teacher_logprobs`` [..., k] (their log-probabilities under the *full* teacher
distribution, so their exps sum to at most 1). The student is dense,
``student_logprobs`` [..., V] (already log-softmaxed). P is the student, Q the
teacher, as in :func:`jaxpenalties.kl_divergence` (forward KL = KL(P‖Q)).

``tail`` chooses what happens to the mass outside the k entries:

* ``"renormalize"``: both sides are restricted to the k entries and
  renormalised over them (softmax of the gathered student log-probs, softmax of
  ``teacher_logprobs``); the divergence is over k entries. Each side needs some
  mass there: a position whose k log-probs are all −inf on one side gives NaN.
* ``"bucket"``: the remaining mass is one extra bucket on each side,
  log(1 − Σ_k p) and log(1 − Σ_k q); the divergence is over k + 1 buckets. The
  tail is computed in log space (``log1mexp`` of a log-sum-exp whose largest
  term enters as ``expm1(0)``), so a tail far below float32 resolution of 1
  (top-1 mass 1 − 1e-9) keeps its digits. Where the k entries hold all the mass
  (or more, by rounding) the tail is exactly −inf, never NaN. The student's
  tail comes from its k gathered log-probs (the student must be normalised),
  so gradients reach those k entries only. With k = V no bucket is added: the
  dense divergence of the inputs as given.

``temperature`` T (``"renormalize"`` only) tempers the dense student,
``log_softmax(student / T)``, before gathering, and the teacher's k entries,
``log_softmax(teacher_logprobs / T)``. After renormalising over the k entries
this equals tempering the gathered entries, so no [..., V] copy is made.
``"bucket"`` needs T = 1: a tail cannot be tempered without its distribution.

Indices must be distinct along the last axis (a duplicate would count its entry
twice) and in [0, V). Concrete (not traced) indices are checked eagerly, at the
positions a concrete ``where`` keeps; under ``jit`` an out-of-range or repeated
index gives NaN at its position, in the value and in the gradient, never a
silent number.
"""

from __future__ import annotations

from typing import Any

import jax

from jaxpenalties._core import checks, divergence_checks
from jaxpenalties._core.types import Array, ArrayLike, Direction, Reduction, Tail
from jaxpenalties.large_vocab import _head_checks as head_checks
from jaxpenalties.large_vocab import _topk


def _check_inputs(
    student: ArrayLike,
    indices: ArrayLike,
    teacher: ArrayLike,
    tail: str,
    temperature: float | ArrayLike,
    reduction: str,
    where: ArrayLike | None,
) -> tuple[Array, Array, Array, Any, Array | None]:
    """Validates everything eagerly; returns the arrays, T and the mask."""
    student = checks.check_floating("student_logprobs", student)
    indices, teacher, t, mask = head_checks.check_teacher(
        student.shape, indices, teacher, tail, temperature, reduction, where
    )
    return student, indices, teacher, t, mask


def sparse_kl_divergence(
    student_logprobs: ArrayLike,
    teacher_indices: ArrayLike,
    teacher_logprobs: ArrayLike,
    *,
    direction: Direction = "forward",
    symmetric: bool = False,
    tail: Tail = "renormalize",
    temperature: float | ArrayLike = 1.0,
    reduction: Reduction = "mean",
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""KL divergence between a dense student P and a top-k teacher Q.

    .. math::

        \mathrm{KL}(P \| Q) = \sum_{j} p_j (\log p_j - \log q_j)

    over the k teacher entries (``tail="renormalize"``, both sides renormalised
    over them) or over those plus one bucket for the remaining mass
    (``tail="bucket"``); see the module docstring. ``direction="reverse"``
    gives KL(Q‖P), ``symmetric=True`` ½(KL(P‖Q) + KL(Q‖P)). With k = V this is
    :func:`jaxpenalties.kl_divergence`. Exact: p = 0 terms are 0, p > 0 with
    q = 0 gives +inf (e.g. forward KL with a teacher −inf entry). Gradients
    flow to both log-prob inputs (and T), analytically through the dense kernel.

    Args:
      student_logprobs: student log-probabilities [..., V], any float dtype.
      teacher_indices: integer [..., k], distinct entries in [0, V).
      teacher_logprobs: the teacher's log-probabilities of those entries
        [..., k] (exps summing to at most 1); −inf for a zero-mass entry.
      direction: ``"forward"`` (KL(P‖Q)) or ``"reverse"`` (KL(Q‖P)). Static.
      symmetric: average both directions. Static.
      tail: ``"renormalize"`` or ``"bucket"``. Static.
      temperature: T (``"renormalize"`` only, see the module docstring); a
        Python float or a scalar array, changing it never recompiles. No T².
      reduction: ``"mean"`` over True positions, ``"sum"`` or ``"none"``.
      where: optional mask (nonzero = kept) broadcastable to the position shape [...];
        masked positions may hold garbage (also indices) and get 0 gradient.

    Returns:
      A float32 scalar (float64 for float64 input), or [...] for "none".

    Raises:
      ValueError: unknown option, mismatched shapes, concrete indices out of
        range or repeated, ``tail="bucket"`` with T ≠ 1.
      TypeError: non-integer indices, non-float log-probs, traced option.

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> student = jnp.log(jnp.array([0.5, 0.25, 0.25]))
      >>> idx, teacher = jnp.array([0, 1]), jnp.log(jnp.array([0.25, 0.5]))
      >>> print(f"{jp.sparse_kl_divergence(student, idx, teacher):.4f}")  # ⅓ log 2
      0.2310
      >>> kl = jp.sparse_kl_divergence(student, idx, teacher, tail="bucket")
      >>> print(f"{kl:.4f}")  # tails 0.25 and 0.25: ¼ log 2
      0.1733

    References:
      Hinton, Vinyals and Dean, Distilling the Knowledge in a Neural Network,
      2015. Agarwal et al., On-Policy Distillation of Language Models (GKD), 2024.
    """
    kind, swap = divergence_checks.check_kl_direction(direction, symmetric)
    arrays = (student_logprobs, teacher_indices, teacher_logprobs)
    args = _check_inputs(*arrays, tail, temperature, reduction, where)
    return _topk.divergence(
        *args, None, kind=kind, swap=swap, tail=tail, reduction=reduction
    )


def sparse_js_divergence(
    student_logprobs: ArrayLike,
    teacher_indices: ArrayLike,
    teacher_logprobs: ArrayLike,
    *,
    beta: float = 0.5,
    tail: Tail = "renormalize",
    temperature: float | ArrayLike = 1.0,
    reduction: Reduction = "mean",
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Generalised Jensen–Shannon divergence, dense student P, top-k teacher Q.

    .. math::

        M = \beta P + (1 - \beta) Q, \qquad
        \mathrm{JS}_\beta = \beta\,\mathrm{KL}(P \| M)
            + (1 - \beta)\,\mathrm{KL}(Q \| M)

    over the k teacher entries or k + 1 buckets as chosen by ``tail`` (see the
    module docstring); with k = V this is :func:`jaxpenalties.js_divergence`.
    Always finite, in [0, log 2] for β = ½, also with −inf entries.

    Args:
      student_logprobs: student log-probabilities [..., V], any float dtype.
      teacher_indices: integer [..., k], distinct entries in [0, V).
      teacher_logprobs: the teacher's log-probabilities of those entries.
      beta: mixture weight in the open interval (0, 1), a Python float (an
        array, traced or not, is refused). Called outside ``jax.jit``, a new
        value does not recompile.
      tail: ``"renormalize"`` or ``"bucket"``. Static.
      temperature: T (``"renormalize"`` only); no T² factor.
      reduction: ``"mean"``, ``"sum"`` or ``"none"``. Static.
      where: optional mask (nonzero = kept) broadcastable to the position shape.

    Returns:
      A float32 scalar (float64 for float64 input), or [...] for "none".

    Raises:
      ValueError: β outside (0, 1), and as :func:`sparse_kl_divergence`.
      TypeError: as :func:`sparse_kl_divergence`.

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> student = jnp.log(jnp.full((4,), 0.25))
      >>> idx, teacher = jnp.array([0, 1]), jnp.log(jnp.array([0.5, 0.5]))
      >>> print(f"{jp.sparse_js_divergence(student, idx, teacher):.4f}")  # both ½, ½
      0.0000
      >>> js = jp.sparse_js_divergence(student, idx, teacher, tail="bucket")
      >>> print(f"{js:.4f}")  # ¼ ¼ ½ against ½ ½ 0: ¾ log(4/3)
      0.2158

    References:
      Agarwal et al., On-Policy Distillation of Language Models: Learning from
      Self-Generated Mistakes (GKD), 2024. Lin, Divergence measures based on the
      Shannon entropy, 1991.
    """
    beta = divergence_checks.check_beta(beta)
    arrays = (student_logprobs, teacher_indices, teacher_logprobs)
    args = _check_inputs(*arrays, tail, temperature, reduction, where)
    return _topk.divergence(
        *args, beta, kind="js", swap=False, tail=tail, reduction=reduction
    )
