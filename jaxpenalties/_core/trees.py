"""Private: pytrees of parameters, leaf by leaf.

Readable leaf names (``params['w'][0]``) for messages, the one rule of which
leaves a parameter penalty reads (:func:`has_gradient`: floating leaves; an
int step counter or an equinox module's activation function is not one), and
the pairing of a reference pytree (an L2-SP centre) with those leaves
(:func:`matching_leaves`), with a short message naming the first difference.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def named_leaves(tree: Any, root: str) -> list[tuple[str, Any]]:
    """The leaves of ``tree`` with readable names such as ``params['w'][0]``.

    ``None`` entries are empty subtrees (no leaves), as everywhere in JAX.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(root + jax.tree_util.keystr(path), leaf) for path, leaf in flat]


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


def is_float_array(x: Any) -> bool:
    """Whether ``x`` is a JAX or NumPy array of a floating (or complex) dtype."""
    return isinstance(x, (jax.Array, np.ndarray)) and jnp.issubdtype(
        x.dtype, jnp.inexact
    )
