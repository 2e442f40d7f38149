"""Private: the one entry of the fused KL and JS heads.

Checks the options and arrays once, plans the chunks
(``jaxpenalties._core.chunking``), and calls the chunked kernel
(:mod:`._fused_kernel`) with the student's and the teacher's heads, optional
hard labels and their weights; the public functions in :mod:`._fused` only
name their divergence.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxpenalties._core import checks, chunking, divergence_checks, numerics
from jaxpenalties._core.types import (
    Array,
    ArrayLike,
)
from jaxpenalties.large_vocab import _fused_kernel as fk
from jaxpenalties.large_vocab import _head_checks as head_checks
from jaxpenalties.large_vocab import _head_transform as head_transform
from jaxpenalties.large_vocab import _indexing

# The default chunk is sized for KL's working memory per row (see
# ``chunking.default_chunk_size``). Kinds that keep more [C, V] buffers per
# chunk in the compiled GPU program take this many times fewer rows, so that
# the whole step stays within 1.05× the fused KL step's memory (measured by
# ``benchmarks/accelerator_memory.py``; ULD also sorts both heads' log-probs).
_ROWS_FACTOR = {"alpha": 4, "skew": 2, "uld": 4}


def run(
    heads: tuple[ArrayLike, ArrayLike, ArrayLike, ArrayLike],
    kind: str,
    swap: bool,
    beta: Any,
    temperature: float | ArrayLike,
    reduction: str,
    where: ArrayLike | None,
    chunk_size: int | None,
    hard: tuple[Any, Any, Any, Any, Any],
    grad_accumulation: str,
    top_k: int | None = None,
    transforms: tuple[Any, ...] = (None,) * 6,
) -> Array | tuple[Array, dict[str, Array]]:
    """Validates what the public functions share, in their order, and runs
    the jitted core. ``hard`` is (labels, ignore_index, soft_weight,
    hard_weight, label_smoothing); ``beta`` is the kind's parameter (JS's β,
    α, skew λ); ``top_k`` ULD's truncation (ULD's heads may have vocabularies
    of different sizes); ``transforms`` is (bias, logit_scale, softcap,
    ref_bias, ref_logit_scale, ref_softcap)."""
    checks.check_option("reduction", reduction, checks.REDUCTIONS)
    checks.check_option("grad_accumulation", grad_accumulation, chunking.ACCUMULATIONS)
    x, w, ref_x, ref_w = head_checks.check_heads(
        *heads, chunk_size, same_vocab=kind != "uld"
    )
    bias, scale, cap, ref_bias, ref_scale, ref_cap = transforms
    tr = head_transform.check("", bias, scale, cap, w.shape[1])
    rtr = head_transform.check("ref_", ref_bias, ref_scale, ref_cap, ref_w.shape[1])
    hard_options = head_checks.check_hard(hard, x, w, reduction, where)
    temperature = divergence_checks.check_temperature(temperature)
    return _fused_impl(
        x,
        w,
        ref_x,
        ref_w,
        temperature,
        beta,
        where,
        tr,
        rtr,
        kind=kind,
        swap=swap,
        reduction=reduction,
        chunk_size=chunk_size,
        grad_accumulation=grad_accumulation,
        top_k=top_k,
        **hard_options,
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "kind",
        "swap",
        "reduction",
        "chunk_size",
        "grad_accumulation",
        "ignore_index",
        "label_smoothing",
        "top_k",
    ),
)
def _fused_impl(
    x: Array,
    w: Array,
    ref_x: Array,
    ref_w: Array,
    temperature: ArrayLike | None,
    beta: ArrayLike | None,
    where: ArrayLike | None,
    tr: head_transform.Transform | None,
    rtr: head_transform.Transform | None,
    labels: Array | None = None,
    soft_weight: ArrayLike | None = None,
    hard_weight: ArrayLike | None = None,
    *,
    kind: str,
    swap: bool,
    reduction: str,
    chunk_size: int | None,
    grad_accumulation: str = "float32",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    top_k: int | None = None,
) -> Array | tuple[Array, dict[str, Array]]:
    dtype = numerics.compute_dtype(x, w, ref_x, ref_w)
    if chunk_size is None:
        capped = any(t is not None and t.cap is not None for t in (tr, rtr))
        # A soft-cap keeps tanh's [C, V] derivative per capped head (TPU v5e):
        # twice fewer rows keep the step within 1.05x the plain one.
        factor = _ROWS_FACTOR.get(kind, 1) * (2 if capped else 1)
        if factor > 1:
            chunk_size = max(1, chunking.default_chunk_size(w) // factor)
    lay = chunking.layout(x, w, chunk_size)
    mask = checks.broadcast_where(where, lay.positions)
    xs = lay.chunked(numerics.sanitize(x, mask))
    rxs = lay.chunked(numerics.sanitize(ref_x, mask))
    valid = jnp.ones(lay.positions, bool) if mask is None else mask

    has_t = temperature is not None
    t = jnp.asarray(temperature if has_t else 1.0, dtype)
    beta = jnp.asarray(0.5 if beta is None else beta, dtype)
    config = fk.Config(
        kind=kind,
        swap=swap,
        has_t=has_t,
        dtypes=fk.PerInput(x.dtype, w.dtype, ref_x.dtype, ref_w.dtype, t.dtype),
        smoothing=label_smoothing,
        accumulation=grad_accumulation,
        top_k=top_k,
    )

    tr, rtr = head_transform.prepare(tr, dtype), head_transform.prepare(rtr, dtype)
    heads = fk.Heads(x=xs, w=w, rx=rxs, rw=ref_w, t=t, beta=beta, tr=tr, rtr=rtr)
    if labels is not None:
        parts = (soft_weight, hard_weight)
        return _distill(
            config, lay, heads, valid, labels, parts, ignore_index, reduction
        )
    if reduction == "none":
        values = fk.fused_values(config, *heads)  # [n_chunks, C]
        return numerics.reduce(lay.unchunked(values), reduction, mask)
    weights = lay.chunked(valid).astype(dtype)
    total, _ = fk.fused_total(config, *heads, weights, None)
    if reduction == "sum":
        return total
    count = lay.n if mask is None else jnp.sum(mask, dtype=dtype)
    return total / jnp.maximum(jnp.asarray(count, dtype), 1)


def _distill(
    config: fk.Config,
    lay: chunking.Layout,
    heads: fk.Heads,
    valid: Array,
    labels: Array,
    weights: tuple[Any, Any],  # checked numbers or scalar arrays
    ignore_index: int,
    reduction: str,
) -> tuple[Array, dict[str, Array]]:
    """soft · divergence + hard · CE(labels) in one pass, and both parts."""
    soft_weight, hard_weight = weights
    dtype = heads.t.dtype
    kept = valid & (labels != ignore_index)
    if reduction == "mean":
        soft_scale = soft_weight / jnp.maximum(jnp.sum(valid, dtype=dtype), 1)
        hard_scale = hard_weight / jnp.maximum(jnp.sum(kept, dtype=dtype), 1)
    else:
        soft_scale, hard_scale = soft_weight, hard_weight
    div_weights = lay.chunked(valid).astype(dtype) * soft_scale
    ce_weights = lay.chunked(kept).astype(dtype) * hard_scale
    # Labels outside [0, V) ∪ {ignore_index} at kept positions: NaN there.
    safe_labels = _indexing.clean(labels, heads.w.shape[1], kept)
    hard = (lay.chunked(safe_labels), ce_weights)
    total, (div, ce) = fk.fused_total(config, *heads, div_weights, hard)
    div, ce = lax.stop_gradient((lay.unchunked(div), lay.unchunked(ce)))
    metrics = {
        "divergence": numerics.reduce(div, reduction, valid),
        "cross_entropy": numerics.reduce(ce, reduction, kept),
    }
    return total, metrics
