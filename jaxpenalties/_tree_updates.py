"""Private: which leaves of a parameter pytree are parameters, and the
leaf-by-leaf update shared by the penalty transforms.

One rule, :func:`has_gradient`, says which leaves a parameter penalty reads
and a penalty transform touches (floating leaves; an int step counter or an
equinox module's activation function is not one); a reference pytree (an
L2-SP centre) pairs with them by :func:`matching_leaves`. The transforms add
``w · gradient`` to the updates of those leaves under ``optax.masked``'s mask,
with explicit casts, so bf16 params run under strict dtype promotion.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpenalties import _utils as u
from jaxpenalties._regularize_steps import is_float_array
from jaxpenalties._types import PyTree


def require_params(transform: str, params: PyTree) -> None:
    """The penalty transforms read the params: ``update`` must be given them."""
    if params is None:
        raise ValueError(
            f"{transform} needs the params: call `update(updates, state, params)`."
        )


def _mask_is_callable(mask: Any) -> bool:
    """optax.masked's rule: a mask is a function when all its pytree leaves are
    callable. A callable pytree of booleans (an equinox Module used as a mask)
    is a mask tree, not a function."""
    leaves = jax.tree.leaves(jax.tree.map(callable, mask))
    return len(leaves) > 0 and all(leaves)


def leaf_mask(mask: Any, params: Any) -> list[bool]:
    """One Python bool per leaf of ``params`` (``mask`` may be a prefix tree)."""
    mask_tree = mask(params) if _mask_is_callable(mask) else mask
    try:
        full = jax.tree.map(
            lambda m, sub: jax.tree.map(lambda _: bool(m), sub), mask_tree, params
        )
    except (ValueError, TypeError) as err:
        raise ValueError(
            "Expected `mask` to be a pytree of bools with the structure of the "
            "params (or a prefix of it), or a callable params -> such a pytree, "
            f"as in optax.masked. {err}"
        ) from err
    return jax.tree.leaves(full)


def has_gradient(x: Any) -> bool:
    """Whether a leaf is a parameter: a floating array or a float scalar.

    The rule of ``track_grad_norms`` (:func:`is_float_array`), plus Python and
    NumPy float scalars (``jp.l1([1.0, -2.0])`` has two leaves). Every other
    leaf (an int step counter, a boolean, an equinox module's activation
    function) is held fixed by the transforms and skipped by the parameter
    penalties."""
    if isinstance(x, np.generic):
        return bool(jnp.issubdtype(x.dtype, jnp.inexact))
    return isinstance(x, float) or is_float_array(x)


def floating(tree: Any) -> Any:
    """``tree`` with every leaf that is not a parameter replaced by None: the
    form ``eqx.filter(tree, eqx.is_inexact_array)`` gives an equinox module."""
    return jax.tree.map(lambda x: x if has_gradient(x) else None, tree)


def _paths(tree: Any) -> list[str]:
    return [
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)
    ]


def structure_mismatch(a: Any, a_name: str, b: Any, b_name: str) -> str:
    """A short description of how the structures of ``a`` and ``b`` differ
    (leaf counts and the first differing leaf path), without printing the
    tree definitions, which for a model run to pages."""
    pa, pb = _paths(a), _paths(b)
    common = min(len(pa), len(pb))
    first = next((i for i in range(common) if pa[i] != pb[i]), common)
    if pa == pb:
        where = (
            "the same leaf paths, in containers that differ (their types, "
            "entries holding None, or static fields)"
        )
    elif first < common:
        where = f"first difference: `{a_name}{pa[first]}` vs `{b_name}{pb[first]}`"
    else:
        name, paths = (a_name, pa) if len(pa) > len(pb) else (b_name, pb)
        where = f"`{name}{paths[first]}` has no counterpart"
    return f"`{a_name}` has {len(pa)} leaves, `{b_name}` {len(pb)}; {where}"


def matching_leaves(
    reference: Any, tree: Any, *, ref_name: str, tree_name: str, hint: str = ""
) -> list[tuple[str, Any]]:
    """The leaves of ``reference`` (named by path) that pair with the
    parameter leaves of ``tree`` (:func:`has_gradient`), in order.

    ``reference`` has the structure of ``tree`` (its leaves where ``tree``
    has no parameter are ignored), or the structure both have once their
    non-parameter leaves are dropped: an unfiltered equinox module pairs with
    ``eqx.filter(module, eqx.is_inexact_array)`` either way round. Otherwise
    ``ValueError`` with a short description of the difference, and ``hint``.
    """
    # PyTreeDef: see add_gradient.
    flat, treedef = jax.tree_util.tree_flatten(tree)
    ref_flat, ref_def = jax.tree_util.tree_flatten_with_path(reference)
    if ref_def == treedef:  # type: ignore[operator]
        return [
            (ref_name + jax.tree_util.keystr(path), r)
            for (path, r), x in zip(ref_flat, flat, strict=True)
            if has_gradient(x)
        ]
    kept_tree, kept_ref = floating(tree), floating(reference)
    if jax.tree.structure(kept_ref) == jax.tree.structure(kept_tree):  # type: ignore[operator]
        return [
            (ref_name + jax.tree_util.keystr(path), r)
            for path, r in jax.tree_util.tree_leaves_with_path(kept_ref)
        ]
    raise ValueError(
        f"Expected `{ref_name}` to have the structure of `{tree_name}` (or that "
        f"of its floating leaves alone); "
        f"{structure_mismatch(kept_ref, ref_name, kept_tree, tree_name)}.{hint}"
    )


def add_gradient(
    updates: PyTree,
    params: PyTree,
    mask: Any,
    w: Any,
    gradient_of: Callable[[list[Any], list[bool]], list[jax.Array]],
) -> PyTree:
    """``updates + w · g`` on the masked float leaves, ``g = gradient_of(leaves,
    selected)`` (one array per selected leaf); other leaves pass through.

    Computed in float32 (float64 for float64 leaves) with explicit casts, and
    cast back to each update's dtype: bf16 params with a float32 weight or
    schedule run under strict dtype promotion.
    """
    leaves, treedef = jax.tree.flatten(params)
    flat_updates, updates_def = jax.tree.flatten(updates)
    # JAX annotates tree structures with `PyTreeDef`, a variable alias that
    # mypy cannot resolve as a type: comparing two is an error to it only.
    if updates_def != treedef:  # type: ignore[operator]
        raise ValueError(
            "Expected `updates` and `params` to have the same structure; "
            f"{structure_mismatch(updates, 'updates', params, 'params')}. For an "
            "equinox module pass the params filtered as the gradients are: "
            "`eqx.filter(model, eqx.is_inexact_array)`."
        )
    selected = [True] * len(leaves) if mask is None else leaf_mask(mask, params)
    selected = [s and has_gradient(x) for x, s in zip(leaves, selected, strict=True)]
    grads = iter(gradient_of(leaves, selected))
    w = jnp.asarray(w)
    new = []
    for g, s in zip(flat_updates, selected, strict=True):
        if s:
            grad = next(grads)
            dtype = u.compute_dtype(g, grad)
            g = (g.astype(dtype) + w.astype(dtype) * grad.astype(dtype)).astype(
                jnp.result_type(g)
            )
        new.append(g)
    return jax.tree.unflatten(treedef, new)
