"""Private: the passes over the chunks of the fused linear-head divergences.

Hidden states arrive laid out in chunks by :mod:`jaxpenalties._core.chunking`
([C, n_chunks, H]). :func:`value_scan` forms each chunk's logits (mapped by
the head's bias, scale and soft-cap of :mod:`._head_transform`, when given)
and the per-position values of :mod:`._fused_chunk`; :func:`grad_scan` also
forms, in the same pass, the gradients the derivative rules of
:mod:`._fused_kernel` need.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxpenalties._core import chunking
from jaxpenalties._core.types import Array
from jaxpenalties.large_vocab import _fused_chunk
from jaxpenalties.large_vocab import _head_transform as head_transform


class PerInput(NamedTuple):
    """One entry per differentiable input of the scans (the trained head's
    hidden states and kernel, the reference's, the temperature, and each
    head's :class:`._head_transform.Transform`): which gradients are needed,
    their dtypes (None for the transforms: computed in their own), the
    gradients themselves."""

    x: Any
    w: Any
    rx: Any
    rw: Any
    t: Any
    tr: Any = None
    rtr: Any = None


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


def value_scan(
    config: Config,
    x: Array,
    w: Array,
    rx: Array,
    rw: Array,
    t: Array,
    beta: Array,
    tr: head_transform.Transform | None,
    rtr: head_transform.Transform | None,
    hard: tuple[Array, Array] | None = None,
) -> Any:
    """Per-position values [n_chunks, C] (and the cross-entropies at the hard
    labels, when ``hard`` is given); ``x`` is [C, n_chunks, H]."""
    dtype = t.dtype

    def step(carry: None, k: Array) -> tuple[None, Any]:
        z = chunking.dot(chunking.chunk(x, k), w, 1, 0, dtype)
        rz = chunking.dot(chunking.chunk(rx, k), rw, 1, 0, dtype)
        z, rz = head_transform.apply(tr, z), head_transform.apply(rtr, rz)
        values = _fused_chunk.chunk_values(config, z, rz, t, beta)
        if hard is None:
            return carry, values
        ce, _ = _fused_chunk.cross_entropy(
            z, chunking.chunk(hard[0], k), config.smoothing
        )
        return carry, (values, ce)

    _, values = lax.scan(step, None, jnp.arange(x.shape[1]))
    return values


def grad_scan(
    config: Config,
    x: Array,
    w: Array,
    rx: Array,
    rw: Array,
    t: Array,
    beta: Array,
    tr: head_transform.Transform | None,
    rtr: head_transform.Transform | None,
    weights: Array,
    need: PerInput,
    hard: tuple[Array, Array] | None = None,
) -> tuple[Any, PerInput]:
    """One pass over the chunks: per-position values [n_chunks, C] and the
    gradients of Σ weights · values (``weights`` laid out like ``x``, [C,
    n_chunks]) w.r.t. the inputs flagged in ``need`` (a :class:`PerInput` of
    bools), in the compute dtype (None where not needed). With ``hard = (labels,
    ce_weights)`` the objective also has Σ ce_weights · CE(labels),
    from the same student logits, and the values are (divergences, CEs). The
    gradients of the transforms ``tr``, ``rtr`` (when flagged) are summed over
    the chunks in their own dtype (the compute dtype)."""
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
        "tr": jax.tree.map(jnp.zeros_like, tr) if need.tr else None,
        "rtr": jax.tree.map(jnp.zeros_like, rtr) if need.rtr else None,
    }
    mm = _matmul_dtype(x, w)
    ref_mm = _matmul_dtype(rx, rw)

    def step(acc: dict[str, Any], k: Array) -> tuple[dict[str, Any], Any]:
        xc, rxc, gc = (
            chunking.chunk(x, k),
            chunking.chunk(rx, k),
            chunking.chunk(weights, k),
        )
        z, back = head_transform.forward(tr, chunking.dot(xc, w, 1, 0, dtype))
        rz, rback = head_transform.forward(rtr, chunking.dot(rxc, rw, 1, 0, dtype))
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
        # The model logits' cotangent back to the raw logits x · w (identity
        # for a plain head), and the transforms' gradients of this chunk.
        (dz, d_tr), (drz, d_rtr) = back(dz), rback(drz)
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
        if need.tr:
            acc["tr"] = jax.tree.map(jnp.add, acc["tr"], d_tr)
        if need.rtr:
            acc["rtr"] = jax.tree.map(jnp.add, acc["rtr"], d_rtr)
        return acc, values

    acc, values = lax.scan(step, acc0, jnp.arange(n_chunks))
    dw = chunking.sum_groups(acc["w"], groups)
    drw = chunking.sum_groups(acc["rw"], ref_groups)
    grads = PerInput(acc["x"], dw, acc["rx"], drw, acc["t"], acc["tr"], acc["rtr"])
    return values, grads
