"""Private: the chunked scans of the fused linear-head divergences and their
derivative rules.

Hidden states arrive laid out in chunks by :mod:`jaxpenalties._core.chunking`
([C, n_chunks, H]); one ``lax.scan`` forms each chunk's logits, the
divergence kernel (through :mod:`._fused_chunk`) gives its
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
from jax import lax

from jaxpenalties._core import chunking
from jaxpenalties._core.types import Array
from jaxpenalties.large_vocab import _fused_chunk

# ----------------------------------------------------------------------------
# The structures the scans and rules pass around
# ----------------------------------------------------------------------------


class PerInput(NamedTuple):
    """One entry per differentiable input of the scans (the trained head's
    hidden states and kernel, the reference's, and the temperature): which
    gradients are needed, their dtypes, the gradients themselves."""

    x: Any
    w: Any
    rx: Any
    rw: Any
    t: Any


class Heads(NamedTuple):
    """The arrays of one fused call, in the order the scans take them: the
    chunked hidden states [C, n_chunks, H] and kernel of each head, the
    temperature and β (scalars in the compute dtype)."""

    x: Any
    w: Any
    rx: Any
    rw: Any
    t: Any
    beta: Any


class Config(NamedTuple):
    """The static facts of one fused call, read by name (hashable: the
    ``nondiff_argnums`` key of the derivative rules)."""

    kind: str  # the kernel's kind ("forward", "js", "tv", ...) or "uld"
    swap: bool  # the heads exchanged (reverse KL)
    has_t: bool  # a temperature applies
    dtypes: PerInput  # the primal dtypes, which the gradients take
    smoothing: float = 0.0  # label smoothing of the hard-label cross-entropy
    accumulation: str = "float32"  # the weight gradients' sum: "float32" / "param"
    top_k: int | None = None  # ULD's truncation


def _matmul_dtype(*arrays: Array) -> jnp.dtype:
    """The dtype the backward matmuls run in: the inputs' own (bf16 stays bf16,
    accumulated in float32), as a bf16 matmul's autodiff does."""
    return jnp.result_type(*arrays)


def _value_scan(
    config: Config,
    x: Array,
    w: Array,
    rx: Array,
    rw: Array,
    t: Array,
    beta: Array,
    hard: tuple[Array, Array] | None = None,
) -> Any:
    """Per-position values [n_chunks, C] (and the cross-entropies at the hard
    labels, when ``hard`` is given); ``x`` is [C, n_chunks, H]."""
    dtype = t.dtype

    def step(carry: None, k: Array) -> tuple[None, Any]:
        z = chunking.dot(chunking.chunk(x, k), w, 1, 0, dtype)
        rz = chunking.dot(chunking.chunk(rx, k), rw, 1, 0, dtype)
        values = _fused_chunk.chunk_values(config, z, rz, t, beta)
        if hard is None:
            return carry, values
        ce, _ = _fused_chunk.cross_entropy(
            z, chunking.chunk(hard[0], k), config.smoothing
        )
        return carry, (values, ce)

    _, values = lax.scan(step, None, jnp.arange(x.shape[1]))
    return values


def _grad_scan(
    config: Config,
    x: Array,
    w: Array,
    rx: Array,
    rw: Array,
    t: Array,
    beta: Array,
    weights: Array,
    need: PerInput,
    hard: tuple[Array, Array] | None = None,
) -> tuple[Any, PerInput]:
    """One pass over the chunks: per-position values [n_chunks, C] and the
    gradients of Σ weights · values (``weights`` laid out like ``x``, [C,
    n_chunks]) w.r.t. the inputs flagged in ``need`` (a :class:`PerInput` of
    bools), in the compute dtype (None where not needed). With ``hard = (labels,
    ce_weights)`` the objective also has Σ ce_weights · CE(labels),
    from the same student logits, and the values are (divergences, CEs)."""
    dtype = t.dtype
    n_chunks = x.shape[1]
    groups = chunking.row_groups(x)
    ref_groups = chunking.row_groups(rx)

    # zeros_like keeps the sharding
    def zeros_if(flag: bool, like: Array, dtype: Any = dtype) -> Array | None:
        return jnp.zeros_like(like, dtype=dtype) if flag else None

    # dx rows are written once each: kept in the input dtype. dw is a sum over
    # every chunk, accumulated by the rule of ``chunking.accumulate``.
    acc0 = {
        "x": zeros_if(need.x, x, x.dtype),
        "w": chunking.accumulator_zeros(x, w, groups, dtype, config.accumulation)
        if need.w
        else None,
        "rx": zeros_if(need.rx, rx, rx.dtype),
        "rw": chunking.accumulator_zeros(rx, rw, ref_groups, dtype, config.accumulation)
        if need.rw
        else None,
        "t": zeros_if(need.t, t),
    }
    mm = _matmul_dtype(x, w)
    ref_mm = _matmul_dtype(rx, rw)

    def step(acc: dict[str, Any], k: Array) -> tuple[dict[str, Any], Any]:
        xc, rxc, gc = (
            chunking.chunk(x, k),
            chunking.chunk(rx, k),
            chunking.chunk(weights, k),
        )
        z = chunking.dot(xc, w, 1, 0, dtype)
        rz = chunking.dot(rxc, rw, 1, 0, dtype)
        div, dz, drz, dt = _fused_chunk.chunk_grads(
            config, need.t, z, rz, t, beta, gc.astype(dtype)
        )
        values: Any = div
        if hard is not None:
            labels, ce_weights = hard
            labels_k = chunking.chunk(labels, k)
            ce, dce = _fused_chunk.cross_entropy(z, labels_k, config.smoothing)
            hw = chunking.chunk(ce_weights, k).astype(dtype)
            dz = dz + hw[:, None] * dce
            dz = _fused_chunk.add_label_term(dz, labels_k, hw * (1 - config.smoothing))
            values = (div, ce)
        # The backward matmuls take dz in the matmul dtype (bf16 for a bf16
        # head: never a float32 copy of w) and accumulate in float32.
        dz, drz = dz.astype(mm), drz.astype(ref_mm)
        acc = dict(acc)
        if need.x:  # dx = dz · wᵀ, written into the chunk's rows
            dx = chunking.dot(dz, w, 1, 1, dtype, like=xc).astype(x.dtype)
            acc["x"] = lax.dynamic_update_index_in_dim(acc["x"], dx, k, axis=1)
        if need.w:  # dw += xᵀ · dz, by the accumulation rule
            acc["w"] = chunking.accumulate(acc["w"], xc, dz, groups, like=w)
        if need.rx:
            drx = chunking.dot(drz, rw, 1, 1, dtype, like=rxc).astype(rx.dtype)
            acc["rx"] = lax.dynamic_update_index_in_dim(acc["rx"], drx, k, axis=1)
        if need.rw:
            acc["rw"] = chunking.accumulate(acc["rw"], rxc, drz, ref_groups, like=rw)
        if need.t:
            acc["t"] = acc["t"] + dt
        return acc, values

    acc, values = lax.scan(step, acc0, jnp.arange(n_chunks))
    dw = chunking.sum_groups(acc["w"], groups)
    drw = chunking.sum_groups(acc["rw"], ref_groups)
    return values, PerInput(acc["x"], dw, acc["rx"], drw, acc["t"])


def _cast_grads(config: Config, grads: PerInput) -> PerInput:
    """Casts the compute-dtype gradients to the primal dtypes."""
    return PerInput(
        *(
            None if d is None else d.astype(dtype)
            for d, dtype in zip(grads, config.dtypes, strict=True)
        )
    )


def _is_zero(ct: Any) -> bool:
    return isinstance(ct, jax.custom_derivatives.SymbolicZero)


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
    weights: Array,
    hard: tuple[Array, Array] | None,
) -> tuple[Array, Any]:
    """Σ weights · divergence (+ Σ ce_weights · CE with ``hard``), and the
    per-position values [n_chunks, C] as metrics (zero tangent)."""
    values = _value_scan(config, x, w, rx, rw, t, beta, hard)
    return _objective(values, weights, hard), values


def _objective(values: Any, weights: Array, hard: tuple[Array, Array] | None) -> Array:
    if hard is None:
        return jnp.sum(weights.T * values)
    div, ce = values
    return jnp.sum(weights.T * div) + jnp.sum(hard[1].T * ce)


def _fused_total_jvp(
    config: Config, primals: tuple[Any, ...], tangents: tuple[Any, ...]
) -> tuple[tuple[Array, Any], tuple[Array, Any]]:
    x, w, rx, rw, t, beta, weights, hard = primals
    diff = tangents[:5]
    need = PerInput(*(not _is_zero(d) for d in diff))
    if not any(need):
        values = _value_scan(config, x, w, rx, rw, t, beta, hard)
    else:
        values, grads = _grad_scan(config, x, w, rx, rw, t, beta, weights, need, hard)
    total = _objective(values, weights, hard)
    tangent = jnp.zeros((), t.dtype)
    if any(need):
        for g, d in zip(grads, diff, strict=True):
            if g is not None:
                # Σ g · d, elementwise then summed (also over sharded axes).
                # (dx is in the input dtype, e.g. bf16: the sum is cast to
                # the compute dtype before it is added.)
                tangent = tangent + jnp.sum(g * d.astype(g.dtype)).astype(t.dtype)
    # The objective is linear in the weights (traced soft / hard weights).
    d_weights, d_hard = tangents[6], tangents[7]
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
def fused_values(
    config: Config, x: Array, w: Array, rx: Array, rw: Array, t: Array, beta: Array
) -> Array:
    """Per-position divergence, [n_chunks, C]."""
    return _value_scan(config, x, w, rx, rw, t, beta)


def _fused_values_fwd(
    config: Config, x: Array, w: Array, rx: Array, rw: Array, t: Array, beta: Array
) -> tuple[Array, tuple[Array, ...]]:
    args = (x, w, rx, rw, t, beta)
    return _value_scan(config, *args), args


def _fused_values_bwd(
    config: Config, args: tuple[Array, ...], g: Array
) -> tuple[Array | None, ...]:
    need = PerInput(x=True, w=True, rx=True, rw=True, t=config.has_t)
    x, w, rx, rw, t, beta = args
    _, grads = _grad_scan(config, x, w, rx, rw, t, beta, g.T, need)
    return (*_cast_grads(config, grads), None)


fused_values.defvjp(_fused_values_fwd, _fused_values_bwd)
