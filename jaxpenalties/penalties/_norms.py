"""Magnitude penalties on arrays and on parameter pytrees: L1, L2, elastic net.

``x`` is an array or any pytree of arrays (e.g. a model's params). Sums and
means run over every element of every floating leaf, accumulated in float32
(float64 for float64 leaves) whatever the leaves' dtype. A Python list is a
pytree, as everywhere in JAX: ``l1([1.0, -2.0])`` has two scalar leaves; pass
``jnp.array([...])`` for a single array.

Leaves that are not floating (integer or boolean arrays such as a step
counter, Python ints, the activation functions of an equinox module) are not
parameters: they are skipped, by the same rule as the penalty transforms and
``regularize``'s ``track_grad_norms``, so ``l2(eqx_module)`` and
``Penalty(l2, inputs=("params",))`` work on a whole equinox module. A tree
none of whose leaves is floating (a bare integer array) raises ``TypeError``.
"""

from __future__ import annotations

import functools
import numbers
from typing import Any, Literal

import jax
import jax.numpy as jnp

from jaxpenalties._core import checks, numerics, trees
from jaxpenalties._core.trees import has_gradient, matching_leaves
from jaxpenalties._core.types import ArrayLike, ParamReduction, PyTree

# How `center` of `l2` is applied (static): no centre, each leaf's own mean, one
# scalar for every leaf, or a reference pytree with the structure of `x`.
_CenterMode = Literal["none", "mean", "s", "t"]
_CENTER_NONE: _CenterMode = "none"
_CENTER_MEAN: _CenterMode = "mean"
_CENTER_SCALAR: _CenterMode = "s"
_CENTER_TREE: _CenterMode = "t"


def _leaves(x: PyTree, name: str = "x") -> list[jax.Array]:
    """The floating leaves of ``x`` as arrays (:func:`has_gradient`: the
    others are skipped); a tree with leaves but none floating raises
    ``TypeError``, naming the first leaf's path.

    ``x=None`` is refused (a missing input, not a tree), while a ``None``
    inside a tree is an empty subtree, as everywhere in JAX."""
    if x is None:
        raise TypeError(
            f"Expected `{name}` to be an array or a pytree of arrays, got None."
        )
    named = trees.named_leaves(x, name)
    kept = [
        checks.check_floating(path, leaf) for path, leaf in named if has_gradient(leaf)
    ]
    if named and not kept:
        path, leaf = named[0]
        checks.check_floating(path, leaf)  # raises, naming the path and the dtype
        raise TypeError(f"Expected `{path}` to be a floating-point array.")
    return kept


def _dtype(leaves: list[jax.Array]) -> jnp.dtype:
    return numerics.compute_dtype(*leaves) if leaves else jnp.dtype(jnp.float32)


def _reduce(
    total: jax.Array, leaves: list[jax.Array], reduction: ParamReduction
) -> jax.Array:
    if reduction == "sum":
        return total
    count = sum(leaf.size for leaf in leaves)  # static: every element of every leaf
    return total / max(count, 1)


def _abs(v: jax.Array) -> jax.Array:
    # |v| written as v·sign(v): the same value, and its derivative is sign(v),
    # i.e. the subgradient 0 at v = 0 (jnp.abs differentiates to 1 there).
    return v * jnp.sign(v)


def _check_center(
    center: Any, leaves: list[jax.Array], x: PyTree
) -> tuple[_CenterMode, Any]:
    """Returns (static mode, dynamic centre) for ``l2``'s ``center``."""
    if center is None:
        return _CENTER_NONE, None
    if isinstance(center, str):
        checks.check_option("center", center, ("mean",))
        return _CENTER_MEAN, None
    if isinstance(center, numbers.Real) and not isinstance(center, bool):
        return _CENTER_SCALAR, float(center)
    if isinstance(center, bool):
        raise ValueError(
            "Expected `center` to be None, 'mean', a number or a pytree with the "
            f"structure of `x`, got {center!r}."
        )
    if checks.is_array_like_value(center) and jnp.ndim(center) == 0:
        return _CENTER_SCALAR, checks.check_floating("center", center)
    pairs = matching_leaves(center, x, ref_name="center", tree_name="x")
    refs = [checks.check_floating(path, ref) for path, ref in pairs]
    named = [(path, v) for path, v in trees.named_leaves(x, "x") if has_gradient(v)]
    for (path, leaf), ref in zip(named, refs, strict=True):
        if jnp.shape(leaf) != ref.shape:
            raise ValueError(
                f"Expected `center` to match the shapes of `x`: `{path}` has shape "
                f"{jnp.shape(leaf)} but its reference has shape {ref.shape}."
            )
    return _CENTER_TREE, refs


@functools.partial(jax.jit, static_argnames=("reduction",))
def _l1_impl(leaves: list[jax.Array], *, reduction: ParamReduction) -> jax.Array:
    dtype = _dtype(leaves)
    total = jnp.zeros((), dtype)
    for leaf in leaves:
        total = total + jnp.sum(_abs(leaf.astype(dtype)))
    return _reduce(total, leaves, reduction)


@functools.partial(jax.jit, static_argnames=("reduction", "center_mode"))
def _l2_impl(
    leaves: list[jax.Array],
    center: Any,
    clip: jax.Array | None,
    *,
    reduction: ParamReduction,
    center_mode: _CenterMode,
) -> jax.Array:
    dtype = _dtype(leaves)
    total = jnp.zeros((), dtype)
    for i, leaf in enumerate(leaves):
        if leaf.size == 0:
            continue
        v = leaf.astype(dtype)
        if center_mode == _CENTER_MEAN:
            v = v - jnp.mean(v)
        elif center_mode == _CENTER_SCALAR:
            v = v - jnp.asarray(center, dtype)
        elif center_mode == _CENTER_TREE:
            v = v - center[i].astype(dtype)
        if clip is not None:
            c = jnp.asarray(clip, dtype)
            v = jnp.clip(v, -c, c)
        total = total + jnp.sum(jnp.square(v))
    return _reduce(total, leaves, reduction)


@functools.partial(jax.jit, static_argnames=("reduction",))
def _elastic_net_impl(
    leaves: list[jax.Array], l1_ratio: jax.Array, *, reduction: ParamReduction
) -> jax.Array:
    dtype = _dtype(leaves)
    r = jnp.asarray(l1_ratio, dtype)
    total = jnp.zeros((), dtype)
    for leaf in leaves:
        v = leaf.astype(dtype)
        total = total + jnp.sum(r * _abs(v) + (1 - r) * jnp.square(v))
    return _reduce(total, leaves, reduction)


def l1(x: PyTree, *, reduction: ParamReduction = "sum") -> jax.Array:
    r"""L1 penalty (lasso): the sum of absolute values over every leaf of ``x``.

    .. math::

        L_1(x) = \sum_i |x_i|

    The gradient is sign(x), with the subgradient 0 at x = 0 (so a zero weight
    is not pushed either way).

    Args:
      x: an array or a pytree of floating arrays (e.g. params, or an equinox
        module: non-floating leaves are skipped).
      reduction: ``"sum"`` (default) or ``"mean"`` over every element of every
        floating leaf. Static.

    Returns:
      A float32 scalar (float64 when a leaf is float64).

    Raises:
      ValueError: for an unknown ``reduction``.
      TypeError: for a tree with no floating leaf (the first leaf's path is
        named).

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> print(jp.l1(jnp.array([1.0, -2.0, 0.5, -0.5])))
      4.0
      >>> print(jp.l1({"w": jnp.array([1.0, -2.0]), "b": jnp.array([-3.0])}))
      6.0

    References:
      Tibshirani, Regression Shrinkage and Selection via the Lasso, 1996.
    """
    checks.check_option("reduction", reduction, checks.PARAM_REDUCTIONS)
    return _l1_impl(_leaves(x), reduction=reduction)


def l2(
    x: PyTree,
    *,
    reduction: ParamReduction = "sum",
    center: Literal["mean"] | ArrayLike | PyTree | None = None,
    clip: ArrayLike | None = None,
) -> jax.Array:
    r"""L2 penalty: the sum of squared distances to a centre over every leaf.

    .. math::

        L_2(x) = \sum_i \min(|x_i - c_i|, \mathrm{clip})^2

    No ½ factor: the gradient is 2(x − c) (inside the clip, 0 outside it).

    Args:
      x: an array or a pytree of floating arrays (e.g. params, or an equinox
        module: non-floating leaves are skipped).
      reduction: ``"sum"`` (default) or ``"mean"`` over every element of every
        floating leaf. Static.
      center: ``None`` (c = 0), ``"mean"`` (each leaf centred on its own mean),
        a number or scalar array (the same c for every element), or a pytree
        with the structure and shapes of ``x`` (or of its floating leaves
        alone): the distance to a reference such as pre-trained weights
        (L2-SP). A numeric centre is not static: changing it does not
        recompile (under ``eqx.filter_jit``, which holds Python numbers
        static, pass it as an array).
      clip: optional bound on ``|x − c|`` before squaring, > 0; not static.

    Returns:
      A float32 scalar (float64 when a leaf is float64).

    Raises:
      ValueError: for an unknown option, a ``center`` pytree whose structure or
        shapes differ from ``x``, or a ``clip`` <= 0.
      TypeError: for a tree with no floating leaf (the first leaf's path is
        named).

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> x = jnp.array([1.0, 2.0, 3.0])
      >>> print(jp.l2(x), jp.l2(x, center="mean"), jp.l2(x, clip=1.5))
      14.0 2.0 5.5
      >>> params = {"w": jnp.array([1.0, 2.0])}
      >>> print(jp.l2(params, center={"w": jnp.array([1.0, 0.0])}))  # L2-SP
      4.0

    References:
      Hoerl and Kennard, Ridge Regression: Biased Estimation for Nonorthogonal
      Problems, 1970. Li et al., Explicit Inductive Bias for Transfer Learning
      with Convolutional Networks (L2-SP), 2018.
    """
    checks.check_option("reduction", reduction, checks.PARAM_REDUCTIONS)
    leaves = _leaves(x)
    center_mode, center_value = _check_center(center, leaves, x)
    if clip is not None:
        clip = checks.check_scalar("clip", clip, low=0.0, open_low=True)
    return _l2_impl(
        leaves, center_value, clip, reduction=reduction, center_mode=center_mode
    )


def elastic_net(
    x: PyTree,
    *,
    l1_ratio: ArrayLike = 0.5,
    reduction: ParamReduction = "sum",
) -> jax.Array:
    r"""Elastic-net penalty: a convex mix of :func:`l1` and :func:`l2`.

    .. math::

        \mathrm{EN}_r(x) = r \sum_i |x_i| + (1 - r) \sum_i x_i^2

    ``l1_ratio=1`` is :func:`l1`, ``l1_ratio=0`` is :func:`l2` (no ½ factor,
    so the gradient is r·sign(x) + 2(1 − r)·x).

    Args:
      x: an array or a pytree of floating arrays (e.g. params, or an equinox
        module: non-floating leaves are skipped).
      l1_ratio: r in [0, 1]; a Python number (range-checked) or a scalar array.
        Not static: changing it does not recompile (under ``eqx.filter_jit``,
        which holds Python numbers static, pass it as an array).
      reduction: ``"sum"`` (default) or ``"mean"`` over every element of every
        leaf. Static.

    Returns:
      A float32 scalar (float64 when a leaf is float64).

    Raises:
      ValueError: for ``l1_ratio`` outside [0, 1] or an unknown ``reduction``.
      TypeError: for a tree with no floating leaf (the first leaf's path is
        named).

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> print(jp.elastic_net(jnp.array([1.0, -2.0, 3.0])))  # ½·6 + ½·14
      10.0

    References:
      Zou and Hastie, Regularization and Variable Selection via the Elastic
      Net, 2005.
    """
    checks.check_option("reduction", reduction, checks.PARAM_REDUCTIONS)
    l1_ratio = checks.check_scalar("l1_ratio", l1_ratio, low=0.0, high=1.0)
    return _elastic_net_impl(_leaves(x), l1_ratio, reduction=reduction)
