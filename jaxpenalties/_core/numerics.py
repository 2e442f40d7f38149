"""Private: the compute dtype, reductions over positions and the safe forms.

Every public function upcasts with :func:`compute_dtype` (float32, or float64
under x64), reduces its per-position values with :func:`reduce` (``mean`` over
the kept positions, 0 where none is kept), and writes ``w · x`` with
:func:`weighted` (exactly 0 where w = 0, also for an infinite x).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def compute_dtype(*xs: Any) -> jnp.dtype:
    """float64 if any input is float64 (x64 enabled), else float32.

    bfloat16 and float16 inputs are upcast: arithmetic and accumulation always
    happen in at least float32.
    """
    dtypes = [jnp.result_type(x) for x in xs]
    if any(d == jnp.float64 for d in dtypes):
        return jnp.dtype(jnp.float64)
    return jnp.dtype(jnp.float32)


def upcast(*xs: Any) -> tuple[jax.Array, ...]:
    """Casts every input to :func:`compute_dtype` of all of them."""
    dtype = compute_dtype(*xs)
    return tuple(jnp.asarray(x).astype(dtype) for x in xs)


def reduce(values: jax.Array, reduction: str, where: jax.Array | None) -> jax.Array:
    """Reduces per-position ``values`` ("mean", "sum" or "none").

    Positions where ``where`` is False contribute exactly 0 (a NaN there does not
    leak); "mean" divides by the number of True positions and gives 0.0 when
    there is none.
    """
    if where is not None:
        values = jnp.where(where, values, jnp.zeros((), values.dtype))
    if reduction == "none":
        return values
    total = jnp.sum(values)
    if reduction == "sum":
        return total
    if where is None:
        count = jnp.asarray(values.size, values.dtype)
    else:
        count = jnp.sum(where, dtype=values.dtype)
    return total / jnp.maximum(count, 1)


def reduce_with_extremes(
    values: jax.Array, reduction: str, where: jax.Array | None, extremes: bool
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    """:func:`reduce`, and with ``extremes`` also ``{"max", "min"}`` of the
    per-position values over kept positions (0 when none is kept): the spike at
    one position that a mean hides, as in-graph metrics without a gradient."""
    out = reduce(values, reduction, where)
    if not extremes:
        return out
    kept = jnp.ones(values.shape, bool) if where is None else where
    any_kept = jnp.any(kept)
    zero = jnp.zeros((), values.dtype)
    hi = jnp.max(jnp.where(kept, values, -jnp.inf), initial=-jnp.inf)
    lo = jnp.min(jnp.where(kept, values, jnp.inf), initial=jnp.inf)
    metrics = {
        "max": jnp.where(any_kept, hi, zero),
        "min": jnp.where(any_kept, lo, zero),
    }
    return out, jax.lax.stop_gradient(metrics)


def finite(x: jax.Array) -> jax.Array:
    """x with −inf read as the most negative finite number (finite x unchanged)."""
    return jnp.maximum(x, jnp.finfo(x.dtype).min)


def sanitize(x: jax.Array, where: jax.Array | None, fill: float = 0.0) -> jax.Array:
    """Replaces masked-out positions of ``x`` (shape positions + trailing) by
    ``fill``, so garbage there reaches neither the value nor the gradient."""
    if where is None:
        return x
    mask = where.reshape(where.shape + (1,) * (x.ndim - where.ndim))
    return jnp.where(mask, x, jnp.asarray(fill, x.dtype))


def safe_sqrt(sq: jax.Array) -> jax.Array:
    """``sqrt(sq)`` for ``sq >= 0`` whose gradient is 0 (not inf/NaN) at 0.

    The "double where": the input is made safe before the square root and the
    output is masked afterwards, so no inf ever enters the backward pass.
    """
    positive = sq > 0
    root = jnp.sqrt(jnp.where(positive, sq, jnp.ones((), sq.dtype)))
    return jnp.where(positive, root, jnp.zeros((), sq.dtype))


def unless_all_finite(rows: jax.Array, exact: Any, *operands: Any) -> jax.Array:
    """``rows``, or ``exact(*operands)`` for every row when any row of them is
    not finite: the guarded fallback of the kernels, which evaluate the fast
    formula first. The ``lax.cond`` takes its operands (the user's arrays)
    without a copy, and runs ``exact`` only when needed."""
    flag = jnp.logical_not(jnp.all(jnp.isfinite(rows)))
    return jax.lax.cond(flag, exact, lambda *_: rows, *operands)


def weighted(w: jax.Array, x: jax.Array, dtype: Any) -> jax.Array:
    """``w · x`` in ``dtype``; exactly 0 where ``w == 0``, even for inf or NaN ``x``."""
    w = w.astype(dtype)
    return jnp.where(w == 0, jnp.zeros((), dtype), w * x.astype(dtype))
