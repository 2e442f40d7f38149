"""optax gradient transformations that add the gradient of a penalty of the params.

Decoupled regularisation (AdamW-style): instead of adding ``w · penalty(params)``
to the loss, add ``w · ∇penalty(params)`` to the updates at a chosen place of an
``optax.chain``. What optax already has (L2 decay ``add_decayed_weights``,
clipping, AGC, noise, centralisation) is not repeated here.

This module: the general transform, for any penalty of the params.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxpenalties._core import checks
from jaxpenalties._core.types import PyTree
from jaxpenalties.training._tree_updates import add_gradient, require_params


class PenaltyGradientState(NamedTuple):
    """State of :func:`add_penalty_gradient`: the number of updates so far.

    ``count`` feeds a weight schedule. It is kept for constant weights too, so
    the state has the same structure whichever kind of weight is used.
    """

    # `count` shadows tuple.count, which mypy reports as an override; the name
    # is public (as in optax's states) and reading it works as expected.
    count: jax.Array  # type: ignore[assignment]


def add_penalty_gradient(
    penalty_fn: Callable[[Any], jax.Array],
    weight: float | jax.typing.ArrayLike | optax.Schedule = 1.0,
    *,
    mask: Any = None,
) -> optax.GradientTransformation:
    r"""Adds ``weight · ∇penalty_fn(params)`` to the updates.

    .. math::

        u \leftarrow u + w_t \, \nabla_{\theta} R(\theta)

    Placed after the optimiser's scaling (e.g. ``optax.chain(optax.scale_by_adam(),
    jp.add_penalty_gradient(R, w), optax.scale_by_learning_rate(lr))``) this is
    decoupled regularisation as in AdamW, for any penalty of the params:
    ``jp.l1``, ``functools.partial(jp.l2, center=pretrained)`` (L2-SP),
    orthogonality of the weight matrices, ...

    Args:
      penalty_fn: ``params -> scalar``, differentiable in the params.
      weight: a number >= 0, a scalar array, or an optax schedule evaluated on
        the number of updates so far (kept in the state as ``count``).
      mask: as in ``optax.masked``: a pytree of bools with the structure of the
        params (or a prefix of it), or a callable ``params -> such a pytree``.
        Leaves where it is False pass through unchanged. ``penalty_fn`` is
        evaluated on the full params (so a reference pytree such as L2-SP's
        ``center`` keeps matching) and differentiated only with respect to the
        masked leaves; for a penalty that is a sum over leaves (``l1``,
        ``l2``, ``elastic_net``) this equals
        ``optax.masked(add_penalty_gradient(penalty_fn, weight), mask)``.

    Returns:
      An ``optax.GradientTransformation`` whose state is
      :class:`PenaltyGradientState`.

    Raises:
      TypeError: ``penalty_fn`` not callable.
      ValueError: a negative weight; ``update`` called without ``params``.

    With ``optax.inject_hyperparams`` the weight becomes an injectable
    hyperparameter; declare the callables static, as ``inject_hyperparams``
    otherwise takes every callable argument for a schedule:
    ``optax.inject_hyperparams(jp.add_penalty_gradient,
    static_args=("penalty_fn", "mask"))(penalty_fn=jp.l1, weight=1e-4)``.

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> tx = jp.add_penalty_gradient(lambda p: jnp.sum(p**2), weight=0.1)
      >>> params = jnp.array([1.0, -2.0])
      >>> updates, _ = tx.update(jnp.zeros(2), tx.init(params), params)
      >>> print(updates)  # 0.1 · 2p
      [ 0.2 -0.4]

    References:
      Loshchilov and Hutter, Decoupled Weight Decay Regularization, 2019.
      Li et al., Explicit Inductive Bias for Transfer Learning with
      Convolutional Networks (L2-SP), 2018.
    """
    if not callable(penalty_fn):
        raise TypeError(
            f"Expected `penalty_fn` to be callable, got {type(penalty_fn).__name__}. "
            "Under optax.inject_hyperparams pass static_args=('penalty_fn',): "
            "inject_hyperparams takes every callable argument for a schedule."
        )
    weight = checks.check_weight("weight", weight)

    def init_fn(params: PyTree) -> PenaltyGradientState:
        del params
        return PenaltyGradientState(count=jnp.zeros([], jnp.int32))

    def update_fn(
        updates: PyTree, state: PenaltyGradientState, params: PyTree = None
    ) -> tuple[PyTree, PenaltyGradientState]:
        require_params("add_penalty_gradient", params)
        w = weight(state.count) if callable(weight) else weight
        treedef = jax.tree.structure(params)

        def gradient_of(leaves: list[Any], selected: list[bool]) -> list[jax.Array]:
            def penalty_of_selected(chosen: list[Any]) -> jax.Array:
                it = iter(chosen)
                full = [
                    next(it) if s else x for x, s in zip(leaves, selected, strict=True)
                ]
                return penalty_fn(jax.tree.unflatten(treedef, full))

            chosen = [x for x, s in zip(leaves, selected, strict=True) if s]
            return jax.grad(penalty_of_selected)(chosen)

        new = add_gradient(updates, params, mask, w, gradient_of)
        count = optax.safe_increment(state.count)
        return new, PenaltyGradientState(count=count)

    return optax.GradientTransformation(init_fn, update_fn)
