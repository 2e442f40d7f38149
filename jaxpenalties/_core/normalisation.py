"""Private: logits to log-probabilities inside the kernel's fusions.

With s = (x − max x) / T (≤ 0, exactly 0 at the maximum) and
a = log_softmax(x / T) = s − log Σ e^s, a cotangent ∂/∂a goes back as

    ∂/∂x = (∂/∂a − p Σ ∂/∂a) / T,    ∂/∂T = −Σ (∂/∂a − p Σ ∂/∂a) s / T.

The inputs are read as given (any float dtype, masked rows as zeros) and
upcast inside each expression (:func:`read`), never as a separate copy.
:func:`independent` gives XLA views of the inputs that it cannot merge, so
that an expensive [N, V] expression is recomputed in each fusion that needs it
instead of being stored.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxpenalties._core import numerics
from jaxpenalties._core.types import Array


def row_sum(x: Array) -> Array:
    return jnp.sum(x, axis=-1)


def row_stats(x: Array, t: Array | None) -> tuple[Array, Array]:
    """The row statistics of ``log_softmax(x / T)``, each [..., 1]: the row
    maximum (0 where it is not finite) and log Σ exp((x − max) / T)."""
    top = row_max(x)
    s = shift(x, top, t)
    return top, jnp.log(row_sum(jnp.exp(s))[..., None])


def row_max(x: Array) -> Array:
    """The row maximum [..., 1], 0 where it is not finite (no derivative)."""
    top = lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
    return jnp.where(jnp.isfinite(top), top, jnp.zeros((), x.dtype))


def shift(x: Array, top: Array, t: Array | None) -> Array:
    """(x − max x) / T: ≤ 0, exactly 0 at the maximum. A tiny T sends every
    other entry to −inf (the greedy limit) instead of overflowing to NaN."""
    s = x - top
    return s if t is None else s / at_least_tiny(t)


def log_softmax(
    x: Array, t: Array | None, stats: tuple[Array, Array] | None = None
) -> tuple[Array, Array]:
    """``log_softmax(x / T)`` over the last axis (T = 1 for None), and the
    shifted tempered logits ``s`` it is formed from; ``stats``: the row
    statistics of ``x`` when already known."""
    top, lse = row_stats(x, t) if stats is None else stats
    s = shift(x, top, t)
    return s - lse, s


def at_least_tiny(t: Array) -> Array:
    """T floored at the smallest normal float: a subnormal T is flushed to 0 on
    some backends (0 / 0 = NaN at the maximum); both are the greedy limit. A
    T ≤ 0 or NaN (only possible traced: a concrete one is refused) is NaN, so
    that every value and gradient it reaches is NaN, never a plausible number."""
    # NaN added (not selected) so that the gradient w.r.t. T is NaN as well.
    invalid = jnp.where(t > 0, jnp.zeros((), t.dtype), jnp.nan)
    return jnp.maximum(t, jnp.finfo(t.dtype).tiny) + invalid


def read(x: Array, mask: Array | None, dtype: Any) -> Array:
    """The input as the kernel reads it: masked rows zeroed, upcast (fused)."""
    return numerics.sanitize(x, mask).astype(dtype)


def normalises(logits: bool, t: Array | None) -> bool:
    return logits or t is not None


def log_probs(
    x: Array,
    mask: Array | None,
    t: Array | None,
    logits: bool,
    dtype: Any,
    stats: tuple[Array, Array] | None = None,
) -> tuple[Array, Array, Array | None]:
    """The log-probabilities the kernel uses, those of the normalised form
    (equal unless ``x`` is used as given at T = 1), and the shifted tempered
    logits ``s`` (None when ``x`` is used as given)."""
    x = read(x, mask, dtype)
    if not normalises(logits, t):
        return x, x, None
    normalised, s = log_softmax(x, t, stats)
    if logits:
        return normalised, normalised, s
    return jnp.where(t == 1, x, normalised), normalised, s


def independent(tree: Any, view: int) -> Any:
    """The same arrays, which XLA cannot identify with the originals (nor
    with another ``view`` number's).

    An [..., V] expression built from them is a new expression: XLA computes
    it inside the fusion that consumes it instead of computing it once and
    storing it for several consumers (GPU fusion keeps an expensive shared
    expression, e.g. the JS mixture, in a float32 [N, V] buffer between
    kernels). Each consumer of a gradient coefficient (a row sum and the
    elementwise gradient) reads the inputs through its own view, so the
    gradient stays at the memory floor: the inputs read, the gradient written.
    On the CPU, where re-reading costs more than the buffer, the identity.
    """

    def barriers(*xs: Array) -> list[Array]:
        # Nested: two barriers on the same operands would be merged as common
        # subexpressions (an unused tag operand is pruned first).
        for _ in range(view + 1):
            xs = lax.optimization_barrier(xs)
        return list(xs)

    leaves, treedef = jax.tree.flatten(tree)
    out = lax.platform_dependent(*leaves, cpu=lambda *xs: list(xs), default=barriers)
    return jax.tree.unflatten(treedef, out)


def through_normalisation(
    g: Array,
    normalised: Array,
    s: Array | None,
    t: Array | None,
    logits: bool,
    g_sum: Array | None = None,
) -> tuple[Array, Array | None]:
    """Cotangents w.r.t. x (and, per row, T) from the cotangent ``g`` w.r.t.
    the log-probs (see the module docstring); ``g_sum``: Σ_v g [..., 1] when
    computed elsewhere (from an :func:`independent` view)."""
    if s is None:
        return g, None
    if g_sum is None:
        g_sum = jnp.sum(g, axis=-1, keepdims=True)
    ds = g - jnp.exp(normalised) * g_sum
    if t is None:
        return ds, None
    # Σ ds · s over entries with s = −inf is 0 · lo = 0: no derivative to T.
    t = at_least_tiny(t)
    dt = -jnp.sum(ds * numerics.finite(s), axis=-1) / t
    dx = ds / t
    if not logits:
        dx = jnp.where(t == 1, g, dx)
    return dx, dt
