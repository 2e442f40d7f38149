"""Aggregating per-token terms over a batch of sequences, as RL libraries do.

Every per-token function here (``reduction="none"``) gives values [..., B, T];
``aggregate`` reduces them the way verl, TRL and Dr. GRPO do, and with a
``normalizer`` micro-batches add up to the full batch exactly (gradient
accumulation): pass the global token count (or sequence count) and sum the
micro-batch results.
"""

from __future__ import annotations

import functools
from typing import get_args

import jax
import jax.numpy as jnp

from jaxpenalties import _utils as u
from jaxpenalties._types import AggregationMode, ArrayLike

MODES: tuple[str, ...] = get_args(AggregationMode)


@functools.partial(jax.jit, static_argnames=("mode",))
def _aggregate_impl(
    values: jax.Array,
    where: jax.Array | None,
    normalizer: jax.Array | None,
    *,
    mode: AggregationMode,
) -> jax.Array:
    dtype = u.compute_dtype(values)
    values = values.astype(dtype)
    mask = u.broadcast_where(where, values.shape)
    kept = jnp.ones(values.shape, bool) if mask is None else mask
    values = jnp.where(kept, values, jnp.zeros((), dtype))  # garbage never leaks
    tokens = jnp.sum(kept, axis=-1, dtype=dtype)  # [..., B]
    if mode == "token-mean":
        total, count = jnp.sum(values), jnp.sum(tokens)
    elif mode == "seq-mean-token-mean":
        total = jnp.sum(jnp.sum(values, -1) / jnp.maximum(tokens, 1))
        count = jnp.asarray(tokens.size, dtype)
    elif mode == "seq-mean-token-sum":
        total, count = jnp.sum(values), jnp.asarray(tokens.size, dtype)
    else:  # Dr. GRPO: a constant normaliser, the maximum length T (0 if T = 0)
        total = jnp.sum(values) / max(values.shape[-1], 1)
        count = jnp.asarray(tokens.size, dtype)
    if normalizer is not None:
        count = jnp.asarray(normalizer, dtype)
    return total / jnp.maximum(count, 1) if normalizer is None else total / count


def aggregate(
    values: ArrayLike,
    *,
    mode: AggregationMode = "token-mean",
    where: ArrayLike | None = None,
    normalizer: ArrayLike | None = None,
) -> jax.Array:
    r"""Reduces per-token values [..., B, T] (sequences along the last axis).

    With m the mask, L_b = Σ_t m_bt the length of sequence b and B the number
    of sequences:

    * ``"token-mean"``: Σ m v / Σ L_b (every token weighs the same; TRL's
      default, verl's ``token-mean``);
    * ``"seq-mean-token-mean"``: (1/B) Σ_b (Σ_t m v / L_b) (GRPO as written);
    * ``"seq-mean-token-sum"``: (1/B) Σ_b Σ_t m v;
    * ``"seq-mean-token-sum-norm"``: Σ m v / (B · T), T the padded length (Dr.
      GRPO's constant normaliser).

    ``normalizer`` replaces the denominator (Σ L_b, or B): give the count of
    the *whole* batch to each micro-batch and the sum of the micro-batch
    results equals the full-batch value, gradients included (HF's
    ``num_items_in_batch``). A sequence with no kept token adds 0, and an
    empty batch (B = 0 or T = 0) gives 0 in every mode.

    Args:
      values: per-token values, e.g. ``kl_estimate(..., reduction="none")``.
      mode: one of the modes above. Static.
      where: optional mask (nonzero = kept) broadcastable to ``values``.
      normalizer: optional positive count for the denominator (traced).

    Returns:
      A float32 scalar (float64 for float64 values).

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> v = jnp.array([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
      >>> m = jnp.array([[1, 1, 1, 1], [1, 0, 0, 0]])
      >>> print(jp.aggregate(v, where=m))  # 8 / 5 tokens
      1.6
      >>> print(jp.aggregate(v, mode="seq-mean-token-mean", where=m))  # (1 + 4) / 2
      2.5

    References:
      Liu et al., Understanding R1-Zero-Like Training: A Critical Perspective
      (Dr. GRPO), 2025. Sheng et al., HybridFlow (verl), 2024.
    """
    u.check_option("mode", mode, MODES)
    values = u.check_floating("values", values)
    if values.ndim < 1:
        raise ValueError("Expected `values` with a sequence axis (last), got a scalar.")
    if normalizer is not None:
        normalizer = u.check_scalar("normalizer", normalizer, low=0.0, open_low=True)
    return _aggregate_impl(values, where, normalizer, mode=mode)
