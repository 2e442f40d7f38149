"""The named decays: L1, elastic net and L2-SP (L2 towards a centre kept in the
optimiser state), each the gradient of its penalty added to the updates at a
chosen place of an ``optax.chain`` (decoupled, AdamW-style).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxpenalties._core import checks, numerics, trees
from jaxpenalties._core.trees import floating, has_gradient, matching_leaves
from jaxpenalties._core.types import PyTree
from jaxpenalties.penalties._norms import elastic_net, l1
from jaxpenalties.training._penalty_gradient import add_penalty_gradient
from jaxpenalties.training._tree_updates import add_gradient, require_params


class L2SPState(NamedTuple):
    """State of :func:`add_l2_sp_decay`: the update count and the centre."""

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as above
    center: Any


_CENTER_HINT = (
    " Give the centre as the params are given (an equinox module may be given "
    "whole or as `eqx.filter(model, eqx.is_inexact_array)`). Under "
    "optax.inject_hyperparams pass static_args=('center',): it takes a callable "
    "centre, such as an equinox module, for a schedule."
)


def add_l2_sp_decay(
    weight: float | jax.typing.ArrayLike | optax.Schedule,
    center: Any,
    *,
    mask: Any = None,
) -> optax.GradientTransformation:
    r"""Decoupled L2-SP: adds ``weight · 2 (params − center)``.

    The gradient of ``weight · jp.l2(params, center=center)``, like
    ``add_penalty_gradient(functools.partial(jp.l2, center=center), weight)``,
    but the centre is kept in the optimiser *state* instead of being closed
    over: a jitted step then takes it as an argument, where a closed-over
    pytree of 50M parameters becomes constants that XLA folds for seconds.

    ``init`` stores a *copy* of ``center`` (its own buffers), so the centre
    may be the very params training starts from (``params = base_params``)
    and a step jitted with ``donate_argnums`` for params and optimiser state
    neither donates the same buffer twice nor deletes the caller's
    ``center``. The copy costs one centre's memory until the caller drops
    its own reference. Leaves that are not floating (an int step counter, an
    equinox module's activation functions) are left unchanged and not
    copied: the state's ``center`` has the structure of the params with None
    at those leaves.

    An equinox module may be the centre as it is: ``center=model`` pairs with
    params given unfiltered or as ``eqx.filter(model, eqx.is_inexact_array)``
    (the usual optax params of equinox), and ``init`` keeps a copy of its
    floating leaves only.

    Args:
      weight: a number >= 0, a scalar array, or an optax schedule on the count.
      center: the pre-trained params: the structure of the params, or that of
        their floating leaves (see above).
      mask: as in :func:`add_penalty_gradient`.

    Returns:
      An ``optax.GradientTransformation`` whose state is :class:`L2SPState`.

    Raises:
      ValueError: a negative weight; at ``init``, a centre whose structure or
        shapes differ from the params' (the message names the first leaf
        that differs).

    With ``optax.inject_hyperparams`` the weight becomes an injectable
    hyperparameter; declare the centre (and a callable mask) static:
    ``optax.inject_hyperparams(jp.add_l2_sp_decay, static_args=("center",
    "mask"))(weight=1e-3, center=model)``. Otherwise ``inject_hyperparams``
    takes any callable argument for a schedule, and an equinox module is
    callable: it would call the model on the step count.

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> tx = jp.add_l2_sp_decay(0.1, center=jnp.array([1.0, 1.0]))
      >>> params = jnp.array([2.0, 0.0])
      >>> updates, _ = tx.update(jnp.zeros(2), tx.init(params), params)
      >>> print(updates)  # 0.1 · 2 (p − c)
      [ 0.2 -0.2]

    References:
      Li et al., Explicit Inductive Bias for Transfer Learning with
      Convolutional Networks (L2-SP), 2018.
    """
    weight = checks.check_weight("weight", weight)

    def init_fn(params: PyTree) -> L2SPState:
        pairs = matching_leaves(
            center, params, ref_name="center", tree_name="params", hint=_CENTER_HINT
        )
        named = [
            (n, p) for n, p in trees.named_leaves(params, "params") if has_gradient(p)
        ]
        for (path, p), (_, c) in zip(named, pairs, strict=True):
            if jnp.shape(p) != jnp.shape(c):
                raise ValueError(
                    f"Expected `center` to match the shapes of the params: `{path}` "
                    f"has shape {jnp.shape(p)}, its centre {jnp.shape(c)}."
                )
        # A copy the state owns: it never aliases the params (the centre often
        # *is* the initial params), so a step may donate params and state. It
        # has the structure of the params' floating leaves.
        copies = [jnp.copy(c) for _, c in pairs]
        kept = jax.tree.structure(floating(params))
        return L2SPState(jnp.zeros([], jnp.int32), jax.tree.unflatten(kept, copies))

    def update_fn(
        updates: PyTree, state: L2SPState, params: PyTree = None
    ) -> tuple[PyTree, L2SPState]:
        require_params("add_l2_sp_decay", params)
        w = weight(state.count) if callable(weight) else weight

        def gradient_of(leaves: list[Any], selected: list[bool]) -> list[jax.Array]:
            # ∇ Σ (p − c)² = 2 (p − c), in float32 (float64 for float64 leaves).
            # The centres are those of the floating leaves, in order.
            floats = [
                (p, s) for p, s in zip(leaves, selected, strict=True) if has_gradient(p)
            ]
            centers = jax.tree.leaves(state.center)
            if len(centers) != len(floats):
                raise ValueError(
                    f"Expected the params to have {len(centers)} floating leaves, "
                    f"the centre's given at `init`, got {len(floats)}."
                )
            kept = zip(floats, centers, strict=True)
            pairs = [numerics.upcast(p, c) for (p, s), c in kept if s]
            return [2 * (p - c) for p, c in pairs]

        new = add_gradient(updates, params, mask, w, gradient_of)
        count = optax.safe_increment(state.count)
        return new, L2SPState(count=count, center=state.center)

    return optax.GradientTransformation(init_fn, update_fn)


def add_l1_decay(
    weight: float | jax.typing.ArrayLike | optax.Schedule,
    *,
    mask: Any = None,
) -> optax.GradientTransformation:
    r"""Adds ``weight · sign(params)``: the gradient of ``weight · jp.l1``.

    ``add_penalty_gradient(jp.l1, weight, mask=mask)``; sign(0) = 0, so a
    weight at exactly 0 stays there.

    Args:
      weight: a number >= 0, a scalar array, or an optax schedule on the count.
      mask: as in :func:`add_penalty_gradient` (``optax.masked`` semantics).

    Returns:
      An ``optax.GradientTransformation``.

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> tx = jp.add_l1_decay(0.01)
      >>> params = jnp.array([3.0, 0.0, -0.5])
      >>> updates, _ = tx.update(jnp.zeros(3), tx.init(params), params)
      >>> print(updates)
      [ 0.01  0.   -0.01]

    References:
      Tibshirani, Regression Shrinkage and Selection via the Lasso, 1996.
    """
    return add_penalty_gradient(l1, weight, mask=mask)


def add_elastic_net_decay(
    weight: float | jax.typing.ArrayLike | optax.Schedule,
    l1_ratio: float | jax.typing.ArrayLike = 0.5,
    *,
    mask: Any = None,
) -> optax.GradientTransformation:
    r"""Adds ``weight · (r · sign(p) + 2 (1 − r) · p)``: the elastic-net gradient.

    ``add_penalty_gradient(functools.partial(jp.elastic_net, l1_ratio=r),
    weight, mask=mask)``. Note the 2: it is the gradient of
    r‖p‖₁ + (1 − r)‖p‖²₂; optax's ``add_decayed_weights(w)`` adds w·p, the
    gradient of ½‖p‖²₂.

    Args:
      weight: a number >= 0, a scalar array, or an optax schedule on the count.
      l1_ratio: r in [0, 1]; a number or a scalar array (injectable with
        ``optax.inject_hyperparams``).
      mask: as in :func:`add_penalty_gradient` (``optax.masked`` semantics).

    Returns:
      An ``optax.GradientTransformation``.

    Raises:
      ValueError: ``l1_ratio`` outside [0, 1] or a negative weight.

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> tx = jp.add_elastic_net_decay(0.1, l1_ratio=0.5)
      >>> params = jnp.array([2.0, -1.0])
      >>> updates, _ = tx.update(jnp.zeros(2), tx.init(params), params)
      >>> print(updates)  # 0.1 · (0.5 · sign(p) + p)
      [ 0.25 -0.15]

    References:
      Zou and Hastie, Regularization and Variable Selection via the Elastic
      Net, 2005.
    """
    l1_ratio = checks.check_scalar("l1_ratio", l1_ratio, low=0.0, high=1.0)
    penalty_fn = functools.partial(elastic_net, l1_ratio=l1_ratio)
    return add_penalty_gradient(penalty_fn, weight, mask=mask)
