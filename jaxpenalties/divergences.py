"""Exact divergences between distributions given as log-probabilities.

KL (forward, reverse, symmetric in one pass), generalised Jensen–Shannon and
entropy over a distribution axis (the vocabulary axis of an LM), with
``reduction`` and ``where`` over the remaining (position) axes.
"""

from __future__ import annotations

from typing import Literal, Unpack, overload

from jaxpenalties import _checks, _divergence_core
from jaxpenalties import _utils as u
from jaxpenalties._types import (
    Array,
    ArrayLike,
    Direction,
    EntropyMode,
    EntropyOptions,
    JSOptions,
    KLOptions,
    Reduction,
)
from jaxpenalties._types import WithExtremes as _WithExtremes


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
    kind, swap = _checks.check_kl_direction(direction, symmetric)
    p, q, axis = _checks.check_pair(p_logprobs, q_logprobs, axis)
    pair = (q, p) if swap else (p, q)
    options = dict(from_logits=from_logits, extremes=extremes)
    return _divergence_core.run(
        kind, pair, None, temperature, where, reduction, axis, **options
    )


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
    beta = _checks.check_beta(beta)
    p, q, axis = _checks.check_pair(p_logprobs, q_logprobs, axis)
    options = dict(from_logits=from_logits, extremes=extremes)
    return _divergence_core.run(
        "js", (p, q), beta, temperature, where, reduction, axis, **options
    )


@overload
def entropy(
    logprobs: ArrayLike,
    *,
    extremes: Literal[False] = False,
    **options: Unpack[EntropyOptions],
) -> Array: ...


@overload
def entropy(
    logprobs: ArrayLike,
    *,
    extremes: Literal[True],
    **options: Unpack[EntropyOptions],
) -> _WithExtremes: ...


@overload
def entropy(
    logprobs: ArrayLike,
    *,
    extremes: bool = False,
    **options: Unpack[EntropyOptions],
) -> Array | _WithExtremes: ...


def entropy(
    logprobs: ArrayLike,
    *,
    mode: EntropyMode = "bonus",
    temperature: float | ArrayLike = 1.0,
    normalize: bool = False,
    reduction: Reduction = "mean",
    where: ArrayLike | None = None,
    axis: int = -1,
    from_logits: bool = False,
    extremes: bool = False,
) -> Array | _WithExtremes:
    r"""Shannon entropy as a loss term, H(P) = −Σ p log p (0 · log 0 = 0).

    The sign is chosen for a term *added to a loss that is minimised*:
    ``mode="bonus"`` returns **−H** (minimising it raises entropy: the RL
    entropy bonus), ``mode="penalty"`` returns **+H** (minimising lowers it).
    NxPenalties returned +H for its "bonus" mode.

    Args:
      logprobs: log-probabilities along ``axis``.
      mode: ``"bonus"`` (−H) or ``"penalty"`` (+H). Static.
      temperature: if not 1 (of any type), re-normalise as
        ``log_softmax(x / T)`` first.
      normalize: divide by log(size of ``axis``), so H ∈ [0, 1]. Static.
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

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> uniform = jnp.log(jnp.full((4,), 0.25))
      >>> print(f"{jp.entropy(uniform, mode='penalty'):.4f}")  # log 4
      1.3863
      >>> print(f"{jp.entropy(uniform, normalize=True):.1f}")  # bonus: −H / log 4
      -1.0

    References:
      Shannon, A Mathematical Theory of Communication, 1948. Williams and Peng,
      Function Optimization using Connectionist Reinforcement Learning
      Algorithms (entropy regularisation), 1991.
    """
    u.check_option("mode", mode, _checks.ENTROPY_MODES)
    u.check_bool("normalize", normalize)
    x = u.check_floating("logprobs", logprobs)
    axis = u.normalize_axis(axis, x.ndim)
    if normalize and x.shape[axis] < 2:
        raise ValueError(
            "Expected the `axis` of `logprobs` to have size >= 2 with "
            f"normalize=True (log of its size is the divisor), got {x.shape[axis]}."
        )
    options = dict(
        from_logits=from_logits,
        extremes=extremes,
        normalize=normalize,
        negate=mode == "penalty",
    )
    return _divergence_core.run(
        "entropy", (x,), None, temperature, where, reduction, axis, **options
    )
