"""Private: the leaf-by-leaf update shared by the penalty transforms.

The transforms add ``w · gradient`` to the updates of the leaves a penalty
reads (``jaxpenalties._core.trees.has_gradient``) under ``optax.masked``'s
mask, with explicit casts, so bf16 params run under strict dtype promotion.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxpenalties._core import numerics
from jaxpenalties._core.trees import has_gradient, structure_mismatch
from jaxpenalties._core.types import PyTree


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
            dtype = numerics.compute_dtype(g, grad)
            g = (g.astype(dtype) + w.astype(dtype) * grad.astype(dtype)).astype(
                jnp.result_type(g)
            )
        new.append(g)
    return jax.tree.unflatten(treedef, new)
