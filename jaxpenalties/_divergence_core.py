"""The core shared by :func:`~jaxpenalties.kl_divergence`,
:func:`~jaxpenalties.js_divergence` and :func:`~jaxpenalties.entropy`: the
options every one of them has are validated eagerly (at trace time), then one
jitted function moves the distribution axis last, runs the divergence kernel on
the arrays as given, and reduces over positions.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxpenalties import _checks, _kernels
from jaxpenalties import _utils as u
from jaxpenalties._types import Array, ArrayLike
from jaxpenalties._types import WithExtremes as _WithExtremes


def run(
    kind: str,
    xs: tuple[Array, ...],
    beta: float | None,
    temperature: Any,
    where: ArrayLike | None,
    reduction: str,
    axis: int,
    **options: bool,
) -> Array | _WithExtremes:
    """Validates the options every function has, then runs the jitted core;
    ``options`` are its remaining static ones (``from_logits``, ``extremes``,
    and entropy's ``normalize`` and ``negate``)."""
    u.check_option("reduction", reduction, u.REDUCTIONS)
    if xs[0].shape[axis] == 0:  # a (log-)softmax over no entry: no distribution
        raise ValueError(
            "Expected the log-probabilities (or logits) to have at least one "
            f"entry along the distribution axis (`axis` = {axis}), got shape "
            f"{xs[0].shape}."
        )
    temperature = _checks.check_temperature(temperature)
    u.check_bool("from_logits", options["from_logits"])
    u.check_bool("extremes", options["extremes"])
    return _impl(
        xs,
        temperature,
        beta,
        where,
        kind=kind,
        reduction=reduction,
        axis=axis,
        **options,
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "kind",
        "reduction",
        "axis",
        "from_logits",
        "extremes",
        "normalize",
        "negate",
    ),
)
def _impl(
    xs: tuple[Array, ...],
    temperature: ArrayLike | None,
    beta: float | None,
    where: ArrayLike | None,
    *,
    kind: str,
    reduction: str,
    axis: int,
    from_logits: bool,
    extremes: bool,
    normalize: bool = False,
    negate: bool = False,
) -> Array | _WithExtremes:
    """Moves ``axis`` last and runs the kernel on the arrays as given: the
    upcast, the mask and the temperature happen inside its fusions."""
    xs = tuple(jnp.moveaxis(v, axis, -1) for v in xs)
    mask = u.broadcast_where(where, xs[0].shape[:-1])
    dtype = u.compute_dtype(*xs)
    t = None if temperature is None else jnp.asarray(temperature, dtype)
    b_ = None if beta is None else jnp.asarray(beta, dtype)
    b = xs[1] if len(xs) > 1 else None
    values = _kernels.divergence(kind, from_logits, xs[0], b, mask, t, b_)
    if normalize:
        values = values / jnp.log(jnp.asarray(xs[0].shape[-1], values.dtype))
    if negate:
        values = -values
    return u.reduce_with_extremes(values, reduction, mask, extremes)
