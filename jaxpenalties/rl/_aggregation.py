"""Aggregating per-token terms over a batch of sequences, as RL libraries do.

Every per-token function here (``reduction="none"``) gives values [..., B, T];
``aggregate`` reduces them exactly as verl's ``agg_loss`` does (TRL's and Dr.
GRPO's losses through ``normalizer``), and with a ``normalizer`` micro-batches
add up to the full batch exactly (gradient accumulation): pass the whole
batch's count and sum the micro-batch results.
"""

from __future__ import annotations

import functools
from typing import Literal, get_args, overload

import jax
import jax.numpy as jnp

from jaxpenalties._core import checks, numerics
from jaxpenalties._core.types import AggregationMode, Array, ArrayLike
from jaxpenalties._core.types import WithExtremes as _WithExtremes

MODES: tuple[str, ...] = get_args(AggregationMode)


@functools.partial(jax.jit, static_argnames=("mode", "extremes"))
def _aggregate_impl(
    values: jax.Array,
    where: jax.Array | None,
    normalizer: jax.Array | None,
    *,
    mode: AggregationMode,
    extremes: bool,
) -> Array | _WithExtremes:
    dtype = numerics.compute_dtype(values)
    values = values.astype(dtype)
    mask = checks.broadcast_where(where, values.shape)
    kept = jnp.ones(values.shape, bool) if mask is None else mask
    masked = jnp.where(kept, values, jnp.zeros((), dtype))  # garbage never leaks
    tokens = jnp.sum(kept, axis=-1, dtype=dtype)  # [..., B]: L_b = Σ_t m_bt
    sequences = jnp.sum(tokens > 0, dtype=dtype)  # the non-empty sequences
    if mode == "token-mean":
        total, count = jnp.sum(masked), jnp.sum(tokens)
    elif mode == "seq-mean-token-mean":
        # An empty sequence gives 0 / 1 = 0 and is not counted.
        total = jnp.sum(jnp.sum(masked, -1) / jnp.maximum(tokens, 1))
        count = sequences
    elif mode == "seq-mean-token-sum":
        total, count = jnp.sum(masked), sequences
    else:  # seq-mean-token-sum-norm: verl's constant, the padded length T
        total, count = jnp.sum(masked), jnp.asarray(values.shape[-1], dtype)
    if normalizer is None:
        # count = 0 only when nothing is kept (or T = 0): total is 0, so is the
        # value, and the gradient is 0, never NaN.
        value = total / jnp.maximum(count, 1)
    else:
        value = total / jnp.asarray(normalizer, dtype)
    if not extremes:
        return value
    # The max and min over kept tokens, 0 when none is, without gradient: the
    # same metrics as every ``extremes=True`` of the package.
    _, metrics = numerics.reduce_with_extremes(values, "sum", mask, True)
    return value, metrics


@overload
def aggregate(
    values: ArrayLike,
    *,
    mode: AggregationMode = "token-mean",
    where: ArrayLike | None = None,
    normalizer: ArrayLike | None = None,
    extremes: Literal[False] = False,
) -> Array: ...


@overload
def aggregate(
    values: ArrayLike,
    *,
    mode: AggregationMode = "token-mean",
    where: ArrayLike | None = None,
    normalizer: ArrayLike | None = None,
    extremes: Literal[True],
) -> _WithExtremes: ...


@overload
def aggregate(
    values: ArrayLike,
    *,
    mode: AggregationMode = "token-mean",
    where: ArrayLike | None = None,
    normalizer: ArrayLike | None = None,
    extremes: bool = False,
) -> Array | _WithExtremes: ...


def aggregate(
    values: ArrayLike,
    *,
    mode: AggregationMode = "token-mean",
    where: ArrayLike | None = None,
    normalizer: ArrayLike | None = None,
    extremes: bool = False,
) -> Array | _WithExtremes:
    r"""Reduces per-token values [..., B, T] (sequences along the last axis).

    The four modes are verl's ``agg_loss`` modes (``loss_agg_mode``), with
    verl's numbers exactly, empty sequences included. With m the mask,
    L_b = Σ_t m_bt the number of kept tokens of sequence b, S = #{b : L_b > 0}
    the number of *non-empty* sequences and T the padded length (the last axis):

    * ``"token-mean"``: Σ m v / Σ_b L_b (every token weighs the same; TRL's
      default);
    * ``"seq-mean-token-mean"``: (1/S) Σ_{b: L_b > 0} (Σ_t m_bt v_bt / L_b)
      (GRPO as written);
    * ``"seq-mean-token-sum"``: (1/S) Σ_b Σ_t m_bt v_bt;
    * ``"seq-mean-token-sum-norm"``: Σ m v / T (Dr. GRPO's constant
      normaliser; no division by B or S).

    An empty sequence (L_b = 0) adds nothing and is not counted in S, as in
    verl (``seq_mask = Σ_t mask > 0``); verl's ``+ 1e-8`` guard in the
    per-sequence ``seq-mean-token-mean`` is not added: its L_b are exact, and
    for L_b ≥ 1 the two differ by a factor 1 + 1e-8 / L_b at most.

    ``normalizer`` replaces the denominator: Σ_b L_b for ``"token-mean"``
    (verl's ``batch_num_tokens``), S for the ``seq-mean-*`` modes (verl's
    ``global_batch_size``) and T for ``"seq-mean-token-sum-norm"`` (verl's
    ``loss_scale_factor``). Give the count of the *whole* batch to each
    micro-batch and the sum of the micro-batch results equals the full-batch
    value, gradients included (HF's ``num_items_in_batch``); verl's ``dp_size``
    factor is ``normalizer = count / dp_size``. TRL's ``dr_grpo`` loss,
    Σ m v / (B · max_completion_length) with B the number of rows (sequences,
    empty ones included) of the batch, is
    ``mode="token-mean", normalizer=B * max_completion_length``; as
    ``"seq-mean-token-sum"`` and ``"seq-mean-token-sum-norm"`` also divide
    Σ m v by the normalizer, they give the same number with the same
    normalizer. TRL then divides by its gradient accumulation steps G: with
    ``normalizer=B * max_completion_length * G`` the sum over the G
    micro-batches is TRL's accumulated loss. Padded to ``max_completion_length``,
    ``"seq-mean-token-sum-norm"`` without normalizer is B times ``dr_grpo``.

    An empty selection gives 0 in every mode: nothing kept, B = 0 or T = 0
    (with or without ``normalizer``), with a zero, never NaN, gradient.

    Args:
      values: per-token values, e.g. ``kl_estimate(..., reduction="none")``.
      mode: one of the modes above. Static.
      where: optional mask (nonzero = kept) broadcastable to ``values``.
      normalizer: optional positive count for the denominator (traced).
      extremes: also return ``{"max", "min"}`` of ``values`` over the kept
        tokens, as ``(value, metrics)``, as ``kl_estimate(extremes=True)``
        does (e.g. ``kl_max`` / ``kl_min`` metrics of a sampled-token KL).
        They pass no gradient, and are 0.0 when no token is kept. Static.

    Returns:
      A float32 scalar (float64 for float64 values), or ``(value, metrics)``
      with ``extremes=True``.

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> v = jnp.array([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0],
      ...                [9.0, 9.0, 9.0, 9.0]])
      >>> m = jnp.array([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
      >>> print(jp.aggregate(v, where=m))  # 8 / 5 tokens
      1.6
      >>> print(jp.aggregate(v, mode="seq-mean-token-mean", where=m))  # (1 + 4) / 2
      2.5
      >>> print(jp.aggregate(v, mode="seq-mean-token-sum", where=m))  # (4 + 4) / 2
      4.0
      >>> print(jp.aggregate(v, mode="seq-mean-token-sum-norm", where=m))  # 8 / T
      2.0
      >>> value, metrics = jp.aggregate(v, where=m, extremes=True)
      >>> print(metrics["max"], metrics["min"])  # the masked 9s are ignored
      4.0 1.0

    References:
      Sheng et al., HybridFlow (verl), 2024: ``agg_loss`` in
      ``verl/trainer/ppo/core_algos.py``. Liu et al., Understanding R1-Zero-Like
      Training: A Critical Perspective (Dr. GRPO), 2025.
    """
    checks.check_option("mode", mode, MODES)
    checks.check_bool("extremes", extremes)
    values = checks.check_floating("values", values)
    if values.ndim < 1:
        raise ValueError("Expected `values` with a sequence axis (last), got a scalar.")
    if normalizer is not None:
        normalizer = checks.check_scalar(
            "normalizer", normalizer, low=0.0, open_low=True
        )
    return _aggregate_impl(values, where, normalizer, mode=mode, extremes=extremes)
