"""Private: the argument checks every public function uses.

Static options go through :func:`check_option` / :func:`check_static` (a
traced value where a Python value is expected is a ``TypeError`` saying so),
numeric ones through :func:`check_scalar` (and :func:`check_weight`,
:func:`check_max_log_ratio`, built on it), arrays through
:func:`check_floating`, :func:`check_same_shape` and :func:`broadcast_where`.
Messages follow one form: "Expected `name` to be …, got …". The checks of the
divergence options build on these in :mod:`.divergence_checks`, those of a
linear head's inputs in ``jaxpenalties.large_vocab._head_checks``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any, get_args

import jax
import jax.numpy as jnp
import numpy as np

from jaxpenalties._core import numerics
from jaxpenalties._core.types import ParamReduction, Reduction

REDUCTIONS: tuple[str, ...] = get_args(Reduction)


PARAM_REDUCTIONS: tuple[str, ...] = get_args(ParamReduction)


def is_array_like_value(value: Any) -> bool:
    return isinstance(value, (jax.Array, np.ndarray, np.generic, jax.core.Tracer))


def _is_real_dtype(dtype: Any) -> bool:
    """Integer or float, bfloat16 included (not an ``np.number`` to NumPy)."""
    return any(jnp.issubdtype(dtype, kind) for kind in (jnp.integer, jnp.floating))


def check_static(name: str, value: Any) -> None:
    """Raises ``TypeError`` if ``value`` is an array or tracer.

    Static options select code paths at trace time; a traced value cannot.
    """
    if is_array_like_value(value):
        raise TypeError(
            f"`{name}` must be a static Python value (str, bool, int, float or "
            f"None), got an array or traced value of type {type(value).__name__}. "
            f"Pass a plain Python value; inside `jax.jit` mark it static."
        )


def check_option(name: str, value: Any, valid: Sequence[Any]) -> None:
    """Checks that a static option is a Python value among ``valid``."""
    check_static(name, value)
    try:
        ok = value in valid and not (isinstance(value, bool) and True not in valid)
    except TypeError:  # unhashable or incomparable
        ok = False
    if not ok:
        raise ValueError(
            f"Expected `{name}` to be one of {tuple(valid)!r}, got {value!r}."
        )


def check_bool(name: str, value: Any) -> None:
    """Checks that a static option is a Python ``bool``."""
    check_static(name, value)
    if not isinstance(value, bool):
        raise ValueError(f"Expected `{name}` to be a Python bool, got {value!r}.")


def check_int(name: str, value: Any, *, minimum: int | None = None) -> None:
    """Checks that a static option is a Python ``int`` (optionally >= minimum)."""
    check_static(name, value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"Expected `{name}` to be a Python int, got {value!r}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"Expected `{name}` to be >= {minimum}, got {value!r}.")


def as_array(name: str, x: Any, expected: str) -> jax.Array:
    """``jnp.asarray(x)``; ``TypeError("Expected `name` to be {expected}, got
    …")`` for what JAX cannot convert (None, a dict, a list holding None)."""
    try:
        return jnp.asarray(x)
    except (TypeError, ValueError):
        raise TypeError(
            f"Expected `{name}` to be {expected}, got {type(x).__name__} {x!r:.60}."
        ) from None


def check_floating(name: str, x: Any) -> jax.Array:
    """Returns ``x`` as an array, raising ``TypeError`` unless it is floating."""
    x = as_array(name, x, "a floating-point array")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"Expected `{name}` to be a floating-point array, got dtype {x.dtype}."
        )
    return x


def check_same_shape(name_a: str, a: Any, name_b: str, b: Any) -> None:
    """Raises ``ValueError`` naming both shapes when they differ."""
    if jnp.shape(a) != jnp.shape(b):
        raise ValueError(
            f"Expected `{name_a}` and `{name_b}` to have the same shape, got "
            f"{jnp.shape(a)} and {jnp.shape(b)}. Distributions are never broadcast "
            f"against each other."
        )


def normalize_axis(axis: Any, ndim: int, name: str = "axis") -> int:
    """Validates a static integer axis and returns it as a non-negative index."""
    check_static(name, axis)
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise ValueError(f"Expected `{name}` to be a Python int, got {axis!r}.")
    if ndim == 0:
        raise ValueError(
            "Expected an input with at least one dimension (the distribution "
            "axis), got a scalar."
        )
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"Expected `{name}` to be in [{-ndim}, {ndim}) for an input of rank "
            f"{ndim}, got {axis}."
        )
    return axis % ndim


def check_scalar(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
) -> Any:
    """Validates a numeric argument that is *not* static (weights, temperature,
    bounds), one rule for every type.

    A concrete value (a Python number, or a NumPy or JAX scalar of any integer
    or float dtype, bfloat16 included) must be finite and in range; a number is
    returned as a ``float``, an array as float32 (float64 for float64): the
    float32 result, in float32 arithmetic under strict promotion. A traced
    value, cast likewise, cannot be checked at trace time: a value outside the
    range gives the function's documented out-of-range result. Either way the value
    reaches the jitted core as a dynamic argument, so changing it never
    recompiles.
    """
    if isinstance(value, bool) or not (
        isinstance(value, numbers.Real) or is_array_like_value(value)
    ):
        raise ValueError(f"Expected `{name}` to be a number, got {value!r}.")
    if is_array_like_value(value):
        if np.ndim(value) != 0:
            raise ValueError(
                f"Expected `{name}` to be a scalar, got an array of shape "
                f"{np.shape(value)}."
            )
        if not _is_real_dtype(value.dtype):
            raise ValueError(
                f"Expected `{name}` to be a number, got an array of dtype "
                f"{value.dtype}."
            )
        if not isinstance(value, jax.core.Tracer):  # traced: cannot be checked
            _check_range(name, float(value), low, high, open_low, open_high)
        return jnp.asarray(value).astype(numerics.compute_dtype(value))
    value = float(value)
    _check_range(name, value, low, high, open_low, open_high)
    return value


def _check_range(
    name: str,
    value: float,
    low: float | None,
    high: float | None,
    open_low: bool,
    open_high: bool,
) -> None:
    below = low is not None and (value <= low if open_low else value < low)
    above = high is not None and (value >= high if open_high else value > high)
    if not (below or above or not np.isfinite(value)):
        return
    if high is None and low is not None:
        valid = f"a finite number {'>' if open_low else '>='} {low:g}"
    elif low is None and high is not None:
        valid = f"a finite number {'<' if open_high else '<='} {high:g}"
    elif low is None:
        valid = "a finite number"
    else:
        left, right = "(" if open_low else "[", ")" if open_high else "]"
        valid = f"in {left}{low:g}, {high:g}{right}"
    raise ValueError(f"Expected `{name}` to be {valid}, got {value!r}.")


def check_max_log_ratio(c: Any) -> Any:
    """None (no clipping), or a number > 0 as :func:`check_scalar` checks it."""
    if c is None:
        return None
    return check_scalar("max_log_ratio", c, low=0.0, open_low=True)


def check_weight(name: str, weight: Any, *, fixed: bool = False) -> Any:
    """A weight >= 0, or a schedule (a callable ``step -> weight``, returned as
    is).

    By default a number is checked by :func:`check_scalar` (a traced weight is
    kept dynamic). With ``fixed`` the weight is part of a spec built once: a
    traced value, a non-number and a non-scalar array raise ``TypeError``; and
    a number or concrete scalar array is returned as a Python ``float``.
    """
    if callable(weight):
        return weight
    if not fixed:
        return check_scalar(name, weight, low=0.0)
    if isinstance(weight, jax.core.Tracer):
        raise TypeError(
            f"Expected `{name}` to be a Python number or a schedule, got a traced "
            "value. To change a weight inside a jitted step, pass "
            "`weights={name: value}` or `step=` when calling the regularised "
            "function; that never recompiles."
        )
    if isinstance(weight, bool) or not (
        isinstance(weight, numbers.Real) or is_array_like_value(weight)
    ):
        raise TypeError(
            f"Expected `{name}` to be a number >= 0 or a schedule (a callable "
            f"step -> weight), got {weight!r}."
        )
    if not isinstance(weight, numbers.Real):
        if np.ndim(weight) != 0 or not _is_real_dtype(np.asarray(weight).dtype):
            raise TypeError(
                f"Expected `{name}` to be a scalar number, got an array of shape "
                f"{np.shape(weight)}."
            )
    return check_scalar(name, float(weight), low=0.0)


def broadcast_where(where: Any, shape: tuple[int, ...]) -> jax.Array | None:
    """Validates ``where`` (boolean, or numeric with nonzero meaning kept) and
    broadcasts it, as a boolean mask, to the position ``shape``."""
    if where is None:
        return None
    where = as_array("where", where, "a boolean or numeric mask")
    if where.dtype != jnp.bool_:
        if not (
            jnp.issubdtype(where.dtype, jnp.integer)
            or jnp.issubdtype(where.dtype, jnp.floating)
        ):
            raise TypeError(
                "Expected `where` to be a boolean or numeric mask (nonzero = "
                f"kept), got dtype {where.dtype}."
            )
        where = where != 0  # e.g. TRL's int completion_mask
    try:
        target = jnp.broadcast_shapes(where.shape, shape)
    except ValueError:
        target = None
    if target != tuple(shape):
        raise ValueError(
            f"Expected `where` to be broadcastable to the position shape {shape}, "
            f"got shape {where.shape}."
        )
    return jnp.broadcast_to(where, shape)
