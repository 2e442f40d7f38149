"""Shannon entropy H(P) = −Σ p log p over a distribution axis, as a penalty
(``mode="penalty"``, −H) or a bonus. Shannon (1948).
"""

from __future__ import annotations

from typing import Literal, Unpack, overload

from jaxpenalties._core import checks, divergence_checks
from jaxpenalties._core.types import (
    Array,
    ArrayLike,
    EntropyMode,
    EntropyOptions,
    Reduction,
)
from jaxpenalties._core.types import WithExtremes as _WithExtremes
from jaxpenalties.divergences import _run


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
    checks.check_option("mode", mode, divergence_checks.ENTROPY_MODES)
    checks.check_bool("normalize", normalize)
    x = checks.check_floating("logprobs", logprobs)
    axis = checks.normalize_axis(axis, x.ndim)
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
    return _run.run(
        "entropy", (x,), None, temperature, where, reduction, axis, **options
    )
