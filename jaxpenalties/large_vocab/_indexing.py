"""Private: one rule for every integer id that picks a vocabulary entry (hard
labels, sampled tokens, top-k teacher indices), on every path.

Concrete ids are checked eagerly (:func:`._head_checks.check_ids`).
Traced ids (every jitted training step) cannot be, so here an id outside
[0, V), or a repeated top-k index, makes its position's value NaN and the
gradient that position sends NaN: never another entry's number (as a negative
index read from the end would be), never a silently dropped term (as an
out-of-range scatter would be). The gathers and scatters only ever read
in-range ids (invalid ones clipped, then marked by a factor that is 1 or NaN),
so they cost what a plain ``take_along_axis`` costs: no [rows, V] one-hot.
Under explicit sharding they run with XLA choosing the collectives
(``jax.sharding.auto_axes``) and give back the operand's row sharding, as
:func:`jaxpenalties._core.chunking.dot` does for matmuls.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import NamedSharding, PartitionSpec

from jaxpenalties._core import numerics
from jaxpenalties._core.types import Array


def clean(ids: Array, size: int, keep: Array | None = None) -> Array:
    """int32 ``ids`` for the jitted core: positions ``keep`` masks read entry 0
    (garbage there is never looked at), ids outside [0, ``size``) become −1, so
    that no wider integer wraps into range when cast."""
    valid = (ids >= 0) & (ids < size)
    ids = jnp.where(valid, ids, jnp.zeros((), ids.dtype)).astype(jnp.int32)
    return numerics.sanitize(jnp.where(valid, ids, -1), keep)


def factor(
    ids: Array,
    size: int,
    dtype: Any,
    *,
    keep: Array | None = None,
    distinct: bool = False,
) -> Array:
    """1 where an id of ``ids`` [..., k] is in [0, ``size``), NaN where not, in
    ``dtype``. With ``distinct``, a row holding one id twice is NaN throughout.
    Rows where ``keep`` ([...]) is False are 1."""
    bad = (ids < 0) | (ids >= size)
    if distinct and ids.shape[-1] > 1:  # k log k per row, for k ≪ V
        ordered = jnp.sort(ids, axis=-1)
        repeated = ordered[..., 1:] == ordered[..., :-1]
        bad = bad | jnp.any(repeated, axis=-1, keepdims=True)
    if keep is not None:
        bad = bad & keep.reshape(keep.shape + (1,) * (ids.ndim - keep.ndim))
    nan, one = jnp.asarray(jnp.nan, dtype), jnp.asarray(1, dtype)
    return jnp.where(bad, nan, one)


def take(
    a: Array, ids: Array, *, keep: Array | None = None, distinct: bool = False
) -> Array:
    """``a`` [..., V] at ``ids`` [..., k] along the last axis; NaN, in value and
    gradient, at an invalid id (see :func:`factor`)."""
    size = a.shape[-1]
    marks = factor(ids, size, a.dtype, keep=keep, distinct=distinct)
    gather = functools.partial(jnp.take_along_axis, axis=-1, mode="promise_in_bounds")
    return _sharded(gather, a, whole_last=True)(a, jnp.clip(ids, 0, size - 1)) * marks


_ROW_SCATTER = lax.ScatterDimensionNumbers(
    update_window_dims=(),
    inserted_window_dims=(1,),
    scatter_dims_to_operand_dims=(1,),
    operand_batching_dims=(0,),
    scatter_indices_batching_dims=(0,),
)


def add_at(a: Array, ids: Array, values: Array) -> Array:
    """``a`` [C, V] with ``values`` [C] added at (row, ``ids`` [C]); invalid
    ids are clipped (the caller's row is NaN already, see :func:`factor`)."""
    size = a.shape[-1]

    def scatter(a: Array, ids: Array, values: Array) -> Array:
        # Rows as a batching dimension (as take_along_axis gathers), so that
        # rows sharded over devices scatter where they are: no row index
        # array to gather from every device.
        return lax.scatter_add(
            a, ids[:, None], values, _ROW_SCATTER, mode="promise_in_bounds"
        )

    return _sharded(scatter, a)(a, jnp.clip(ids, 0, size - 1), values)


def _sharded(
    f: Callable[..., Array], like: Array, whole_last: bool = False
) -> Callable[..., Array]:
    """``f`` as it is, or, when the mesh of ``like`` has explicit axes, with
    XLA choosing its sharding and the result sharded as ``like`` (its last
    axis whole with ``whole_last``)."""
    sharding = jax.typeof(like).sharding
    mesh = getattr(sharding, "mesh", None)
    axes = tuple(getattr(mesh, "explicit_axes", ()))
    if mesh is None or not axes:
        return f
    spec = tuple(sharding.spec) + (None,) * (like.ndim - len(sharding.spec))
    if whole_last:
        spec = spec[:-1] + (None,)
    out = NamedSharding(mesh, PartitionSpec(*spec))
    return jax.sharding.auto_axes(f, axes=axes, out_sharding=out)
