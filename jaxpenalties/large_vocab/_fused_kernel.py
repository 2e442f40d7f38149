"""Private: the derivative rules of the fused linear-head divergences.

Hidden states arrive laid out in chunks by :mod:`jaxpenalties._core.chunking`
([C, n_chunks, H]); one ``lax.scan`` (:mod:`._fused_scan`) forms each chunk's
logits, the divergence kernel (through :mod:`._fused_chunk`) gives its
per-position values, and the rules below give the gradients:

* :func:`fused_total` (``reduction="mean"`` / ``"sum"``, and hard labels): a
  ``jax.custom_jvp`` whose rule computes the value and the gradients in the
  same pass over the chunks; reverse mode keeps the gradients as residuals and
  only scales them by the cotangent.
* :func:`fused_values` (``reduction="none"``): a ``jax.custom_vjp`` whose
  backward pass recomputes each chunk's logits.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxpenalties._core.types import Array
from jaxpenalties.large_vocab import _fused_scan
from jaxpenalties.large_vocab._fused_scan import Config, PerInput

__all__ = ["Config", "Heads", "PerInput", "fused_total", "fused_values"]

# ----------------------------------------------------------------------------
# The structures the scans and rules pass around
# ----------------------------------------------------------------------------


class Heads(NamedTuple):
    """The arrays of one fused call, in the order the scans take them: the
    chunked hidden states [C, n_chunks, H] and kernel of each head, the
    temperature and β (scalars in the compute dtype), and each head's
    bias, scale and soft-cap (a :class:`._head_transform.Transform`, or None)."""

    x: Any
    w: Any
    rx: Any
    rw: Any
    t: Any
    beta: Any
    tr: Any = None
    rtr: Any = None


def _cast_grads(config: Config, grads: PerInput) -> PerInput:
    """Casts the compute-dtype gradients to the primal dtypes (the
    transforms' are in theirs already)."""
    return PerInput(
        *(
            d if d is None or dtype is None else d.astype(dtype)
            for d, dtype in zip(grads, config.dtypes, strict=True)
        )
    )


def _is_zero(ct: Any) -> bool:
    return isinstance(ct, jax.custom_derivatives.SymbolicZero)


def _tangent_pairs(grads: PerInput, tangents: tuple[Any, ...]) -> Any:
    """(gradient, tangent) of every differentiated array, the transforms'
    leaves included."""
    for g, d in zip(grads, tangents, strict=True):
        if g is None:  # not differentiated
            continue
        for g_leaf, d_leaf in zip(jax.tree.leaves(g), jax.tree.leaves(d), strict=True):
            if not _is_zero(d_leaf):
                yield g_leaf, d_leaf


# ----------------------------------------------------------------------------
# Σ over unmasked positions: gradients formed in the forward pass
# ----------------------------------------------------------------------------
#
# A ``custom_jvp`` whose rule computes the value and the gradients of the
# inputs whose tangent is not a symbolic zero in one pass, and returns the
# tangent Σᵢ ⟨gradᵢ, tangentᵢ⟩. That tangent is linear in the tangents, so
# reverse mode (JAX partial-evaluates, then transposes) keeps the gradients as
# residuals and scales them by the cotangent: no second pass over the chunks.
# Which inputs are differentiated is part of JAX's own cache key for a JVP
# rule, so no trace is ever reused for another set of differentiated inputs
# (a custom VJP whose residuals depend on ``perturbed`` is not safe: JAX may
# reuse its forward trace for another set). Forward mode (``jax.jvp``,
# ``jax.jacfwd``) works too.


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def fused_total(
    config: Config,
    x: Array,
    w: Array,
    rx: Array,
    rw: Array,
    t: Array,
    beta: Array,
    tr: Any,
    rtr: Any,
    weights: Array,
    hard: tuple[Array, Array] | None,
) -> tuple[Array, Any]:
    """Σ weights · divergence (+ Σ ce_weights · CE with ``hard``), and the
    per-position values [n_chunks, C] as metrics (zero tangent)."""
    values = _fused_scan.value_scan(config, x, w, rx, rw, t, beta, tr, rtr, hard)
    return _objective(values, weights, hard), values


def _objective(values: Any, weights: Array, hard: tuple[Array, Array] | None) -> Array:
    if hard is None:
        return jnp.sum(weights.T * values)
    div, ce = values
    return jnp.sum(weights.T * div) + jnp.sum(hard[1].T * ce)


def _fused_total_jvp(
    config: Config, primals: tuple[Any, ...], tangents: tuple[Any, ...]
) -> tuple[tuple[Array, Any], tuple[Array, Any]]:
    x, w, rx, rw, t, beta, tr, rtr, weights, hard = primals
    diff = (*tangents[:5], *tangents[6:8])  # all but β's, the weights'
    need = PerInput(
        *(any(not _is_zero(leaf) for leaf in jax.tree.leaves(d)) for d in diff)
    )
    args = (config, x, w, rx, rw, t, beta, tr, rtr)
    if not any(need):
        values = _fused_scan.value_scan(*args, hard)
    else:
        values, grads = _fused_scan.grad_scan(*args, weights, need, hard)
    total = _objective(values, weights, hard)
    tangent = jnp.zeros((), t.dtype)
    if any(need):
        for g, d in _tangent_pairs(grads, diff):
            # Σ g · d, elementwise then summed (also over sharded axes).
            # (dx is in the input dtype, e.g. bf16: the sum is cast to
            # the compute dtype before it is added.)
            tangent = tangent + jnp.sum(g * d.astype(g.dtype)).astype(t.dtype)
    # The objective is linear in the weights (traced soft / hard weights).
    d_weights, d_hard = tangents[8], tangents[9]
    if not _is_zero(d_weights):
        div = values if hard is None else values[0]
        tangent = tangent + jnp.sum(d_weights.T * div)
    if hard is not None and not _is_zero(d_hard[1]):
        tangent = tangent + jnp.sum(d_hard[1].T * values[1])
    zeros = jax.tree.map(jnp.zeros_like, values)
    return (total, values), (tangent, zeros)


fused_total.defjvp(_fused_total_jvp, symbolic_zeros=True)


# ----------------------------------------------------------------------------
# Per-position values: the backward pass recomputes each chunk's logits
# ----------------------------------------------------------------------------
#
# The per-position cotangent is known only in the backward pass, so this is a
# ``custom_vjp`` whose residuals are the inputs, always the same structure. The
# backward pass forms every input's gradient; the gradients nobody asked for are
# dead code, which XLA removes (with their loop-carried accumulators).


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def fused_values(config: Config, *args: Any) -> Array:
    """Per-position divergence, [n_chunks, C]; ``args`` are the fields of
    :class:`Heads`."""
    return _fused_scan.value_scan(config, *args)


def _fused_values_fwd(config: Config, *args: Any) -> tuple[Array, tuple[Any, ...]]:
    return _fused_scan.value_scan(config, *args), args


def _fused_values_bwd(
    config: Config, args: tuple[Any, ...], g: Array
) -> tuple[Any, ...]:
    heads = Heads(*args)
    need = PerInput(
        x=True,
        w=True,
        rx=True,
        rw=True,
        t=config.has_t,
        tr=heads.tr is not None,
        rtr=heads.rtr is not None,
    )
    _, grads = _fused_scan.grad_scan(config, *heads, g.T, need)
    x, w, rx, rw, t, tr, rtr = _cast_grads(config, grads)
    return (x, w, rx, rw, t, None, tr, rtr)


fused_values.defvjp(_fused_values_fwd, _fused_values_bwd)
