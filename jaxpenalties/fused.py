"""Memory-bounded divergences between linear-head distributions (large vocabularies).

``fused_linear_kl_divergence`` and ``fused_linear_js_divergence`` take hidden
states and the head's kernel instead of log-probabilities: P = softmax(x @ w / T),
Q = softmax(ref_x @ ref_w / T). The [positions, V] logits are never formed for all
positions at once, neither in the forward nor in the backward pass: positions are
processed in chunks of at most ``chunk_size`` rows inside one ``lax.scan``, so the
peak extra memory is O(chunk_size · V) (plus one float32 [H, V] accumulator per
head whose gradient is requested, and one float32 [H, V] partial product per
chunk on backends that do not accumulate a matmul in place).

Precision: the logits are bf16 × bf16 products accumulated in float32 for a bf16
head; the backward matmuls take the float32 logit cotangent rounded to the
input dtype (as autodiff of a bf16 matmul does), accumulate in float32, and the
weight gradient is summed over chunks in float32 (costing H · V · 4 bytes,
2 GiB for a 4,096 × 128k head, instead of half that in bf16, and sparing the
bf16 rounding error of each chunk's partial sum).

With integer ``labels`` the same pass also gives the student's cross-entropy
(distillation with hard labels): per chunk, its gradient is added to the
divergence's logit cotangent before the backward matmuls.

How the gradient is formed (private, measured in ``benchmarks/fused.py``):

* ``reduction="mean"`` / ``"sum"``: a ``jax.custom_jvp`` computes the value and
  the gradients in the *same* pass over the chunks (each chunk's logits are
  formed once; dx per chunk, dw accumulated in float32), and the backward pass
  only scales them by the incoming cotangent. Inputs that are not differentiated
  (e.g. a frozen teacher) cost no gradient work. Forward mode works too.
* ``reduction="none"``: the per-position cotangent is known only in the backward
  pass, so the forward pass keeps only the inputs and the backward pass
  recomputes each chunk's logits.

Sharding: positions are split into chunks *strided* across the flattened
position axis (position i belongs to chunk i mod n_chunks), so each chunk holds a
slice of every shard when positions are sharded over devices and the scan never
runs over a sharded axis; a vocabulary-sharded kernel gives vocabulary-sharded
logits. Under explicit sharding the sharded position axes are flattened first,
the chunk size is chosen to split evenly over the position shards, and each
shard keeps its own partial weight gradient until after the loop (one
all-reduce instead of one per chunk).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxpenalties import _chunking, _kernels
from jaxpenalties import _utils as u

# ----------------------------------------------------------------------------
# Per-chunk math
# ----------------------------------------------------------------------------


class _Config(NamedTuple):
    """Static facts of one fused call (hashable: a ``nondiff_argnums`` key)."""

    kind: str  # "forward", "reverse", "symmetric" or "js"
    has_t: bool  # a temperature applies
    dtypes: tuple  # of x, w, ref_x, ref_w, t: the gradients' dtypes
    smoothing: float = 0.0  # label smoothing of the hard-label cross-entropy


def _chunk_values(kind: str, has_t: bool, z, rz, t, beta):
    """Per-position divergence [C] from the logits [C, V] of both heads (the
    kernel normalises them, tempered by ``t`` when ``has_t``)."""
    a, b = (rz, z) if kind == "reverse" else (z, rz)
    kernel_kind = "forward" if kind == "reverse" else kind
    return _kernels.divergence(
        kernel_kind,
        True,
        a,
        b,
        None,
        t if has_t else None,
        beta if kind == "js" else None,
    )


def _chunk_grads(kind: str, has_t: bool, need_t: bool, z, rz, t, beta, g):
    """Values [C] and the cotangents of Σ g · values w.r.t. the raw logits z, rz
    [C, V] (and t), from the kernel's analytic VJP."""
    if has_t and need_t:
        values, vjp = jax.vjp(
            lambda z, rz, t: _chunk_values(kind, True, z, rz, t, beta), z, rz, t
        )
        dz, drz, dt = vjp(g)
        return values, dz, drz, dt
    values, vjp = jax.vjp(
        lambda z, rz: _chunk_values(kind, has_t, z, rz, t, beta), z, rz
    )
    dz, drz = vjp(g)
    return values, dz, drz, None


def _cross_entropy(z, labels, smoothing):
    """Per-row cross-entropy of the logits z [C, V] at ``labels`` [C] with label
    smoothing ε, and its gradient w.r.t. z but for the label term:
    CE = (1 − ε)(lse − z_y) + ε (lse − mean_v z),  ∂/∂z = p − ε / V − (1 − ε) e_y.
    """
    # Row statistics only ([C, 1]); every [C, V] expression below reads z
    # directly, so each fuses into its consumer instead of being stored.
    top = lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    lse = top + jnp.log(jnp.sum(jnp.exp(z - top), axis=-1, keepdims=True))
    z_y = jnp.take_along_axis(z, labels[:, None], axis=-1)
    ce = (1 - smoothing) * (lse - z_y) + smoothing * (
        lse - jnp.mean(z, axis=-1, keepdims=True)
    )
    # ∂/∂z without the label term, which the caller scatters in (no [C, V]
    # one-hot: a compare-and-select over the chunk costs XLA:CPU its fusion).
    return ce[:, 0], jnp.exp(z - lse) - smoothing / z.shape[-1]


def _add_label_term(dz, labels, scale):
    """dz − scale · e_y per row: the one-hot part of ∂ CE / ∂z, in place."""
    rows = jnp.arange(dz.shape[0])
    return dz.at[rows, labels].add(-scale)


def _matmul_dtype(*arrays):
    """The dtype the backward matmuls run in: the inputs' own (bf16 stays bf16,
    accumulated in float32), as a bf16 matmul's autodiff does."""
    return jnp.result_type(*arrays)


def _value_scan(cfg, x, w, rx, rw, t, beta, hard=None):
    """Per-position values [n_chunks, C] (and the cross-entropies at the hard
    labels, when ``hard`` is given); ``x`` is [C, n_chunks, H]."""
    kind, has_t = cfg.kind, cfg.has_t
    dtype = t.dtype

    def step(carry, k):
        z = _chunking.dot(_chunking.chunk(x, k), w, 1, 0, dtype)
        rz = _chunking.dot(_chunking.chunk(rx, k), rw, 1, 0, dtype)
        values = _chunk_values(kind, has_t, z, rz, t, beta)
        if hard is None:
            return carry, values
        ce, _ = _cross_entropy(z, _chunking.chunk(hard[0], k), cfg.smoothing)
        return carry, (values, ce)

    _, values = lax.scan(step, None, jnp.arange(x.shape[1]))
    return values


def _grad_scan(cfg, x, w, rx, rw, t, beta, weights, need, hard=None):
    """One pass over the chunks: per-position values [n_chunks, C] and the
    gradients of Σ weights · values (``weights`` laid out like ``x``, [C,
    n_chunks]) w.r.t. the inputs flagged in ``need`` (x, w, ref_x, ref_w, t), in
    the compute dtype (None where not needed). With ``hard = (labels,
    ce_weights)`` the objective also has Σ ce_weights · CE(labels),
    from the same student logits, and the values are (divergences, CEs)."""
    kind, has_t = cfg.kind, cfg.has_t
    need_x, need_w, need_rx, need_rw, need_t = need
    dtype = t.dtype
    n_chunks = x.shape[1]
    groups = _chunking.row_groups(x)
    ref_groups = _chunking.row_groups(rx)

    def zeros_if(flag, like, dtype=dtype):  # zeros_like keeps the sharding
        return jnp.zeros_like(like, dtype=dtype) if flag else None

    # dx rows are written once each: kept in the input dtype. dw is a sum over
    # every chunk: accumulated in float32 (one [H, V] float32 buffer per head).
    acc0 = {
        "x": zeros_if(need_x, x, x.dtype),
        "w": _chunking.kernel_grad_zeros(x, w, groups, dtype) if need_w else None,
        "rx": zeros_if(need_rx, rx, rx.dtype),
        "rw": _chunking.kernel_grad_zeros(rx, rw, ref_groups, dtype)
        if need_rw
        else None,
        "t": zeros_if(need_t, t),
    }
    mm = _matmul_dtype(x, w)
    ref_mm = _matmul_dtype(rx, rw)

    def step(acc, k):
        xc, rxc, gc = (
            _chunking.chunk(x, k),
            _chunking.chunk(rx, k),
            _chunking.chunk(weights, k),
        )
        z = _chunking.dot(xc, w, 1, 0, dtype)
        rz = _chunking.dot(rxc, rw, 1, 0, dtype)
        values, dz, drz, dt = _chunk_grads(
            kind, has_t, need_t, z, rz, t, beta, gc.astype(dtype)
        )
        if hard is not None:
            labels, ce_weights = hard
            labels_k = _chunking.chunk(labels, k)
            ce, dce = _cross_entropy(z, labels_k, cfg.smoothing)
            hw = _chunking.chunk(ce_weights, k).astype(dtype)
            dz = dz + hw[:, None] * dce
            dz = _add_label_term(dz, labels_k, hw * (1 - cfg.smoothing))
            values = (values, ce)
        # The backward matmuls take dz in the matmul dtype (bf16 for a bf16
        # head: never a float32 copy of w) and accumulate in float32.
        dz, drz = dz.astype(mm), drz.astype(ref_mm)
        acc = dict(acc)
        if need_x:  # dx = dz · wᵀ, written into the chunk's rows
            dx = _chunking.dot(dz, w, 1, 1, dtype, like=xc).astype(x.dtype)
            acc["x"] = lax.dynamic_update_index_in_dim(acc["x"], dx, k, axis=1)
        if need_w:  # dw += xᵀ · dz, accumulated in the compute dtype
            acc["w"] = acc["w"] + _chunking.kernel_grad(xc, dz, groups, dtype, like=w)
        if need_rx:
            drx = _chunking.dot(drz, rw, 1, 1, dtype, like=rxc).astype(rx.dtype)
            acc["rx"] = lax.dynamic_update_index_in_dim(acc["rx"], drx, k, axis=1)
        if need_rw:
            acc["rw"] = acc["rw"] + _chunking.kernel_grad(
                rxc, drz, ref_groups, dtype, like=rw
            )
        if need_t:
            acc["t"] = acc["t"] + dt
        return acc, values

    acc, values = lax.scan(step, acc0, jnp.arange(n_chunks))
    dw = _chunking.sum_groups(acc["w"], groups)
    drw = _chunking.sum_groups(acc["rw"], ref_groups)
    return values, (acc["x"], dw, acc["rx"], drw, acc["t"])


def _cast_grads(cfg, grads):
    """Casts the compute-dtype gradients to the primal dtypes."""
    return tuple(
        None if d is None else d.astype(dtype)
        for d, dtype in zip(grads, cfg.dtypes, strict=True)
    )


def _is_zero(ct) -> bool:
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
def _fused_total(cfg, x, w, rx, rw, t, beta, weights, hard):
    """Σ weights · divergence (+ Σ ce_weights · CE with ``hard``), and the
    per-position values [n_chunks, C] as metrics (zero tangent)."""
    values = _value_scan(cfg, x, w, rx, rw, t, beta, hard)
    return _objective(values, weights, hard), values


def _objective(values, weights, hard):
    if hard is None:
        return jnp.sum(weights.T * values)
    div, ce = values
    return jnp.sum(weights.T * div) + jnp.sum(hard[1].T * ce)


def _fused_total_jvp(cfg, primals, tangents):
    x, w, rx, rw, t, beta, weights, hard = primals
    diff = tangents[:5]
    need = tuple(not _is_zero(d) for d in diff)
    if not any(need):
        values = _value_scan(cfg, x, w, rx, rw, t, beta, hard)
    else:
        values, grads = _grad_scan(cfg, x, w, rx, rw, t, beta, weights, need, hard)
    total = _objective(values, weights, hard)
    tangent = jnp.zeros((), t.dtype)
    if any(need):
        for g, d in zip(grads, diff, strict=True):
            if g is not None:
                # Σ g · d, elementwise then summed (also over sharded axes).
                tangent = tangent + jnp.sum(g * d.astype(g.dtype))
    # The objective is linear in the weights (traced soft / hard weights).
    d_weights, d_hard = tangents[6], tangents[7]
    if not _is_zero(d_weights):
        div = values if hard is None else values[0]
        tangent = tangent + jnp.sum(d_weights.T * div)
    if hard is not None and not _is_zero(d_hard[1]):
        tangent = tangent + jnp.sum(d_hard[1].T * values[1])
    zeros = jax.tree.map(jnp.zeros_like, values)
    return (total, values), (tangent, zeros)


_fused_total.defjvp(_fused_total_jvp, symbolic_zeros=True)


# ----------------------------------------------------------------------------
# Per-position values: the backward pass recomputes each chunk's logits
# ----------------------------------------------------------------------------
#
# The per-position cotangent is known only in the backward pass, so this is a
# ``custom_vjp`` whose residuals are the inputs, always the same structure. The
# backward pass forms every input's gradient; the gradients nobody asked for are
# dead code, which XLA removes (with their loop-carried accumulators).


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused_values(cfg, x, w, rx, rw, t, beta):
    """Per-position divergence, [n_chunks, C]."""
    return _value_scan(cfg, x, w, rx, rw, t, beta)


def _fused_values_fwd(cfg, x, w, rx, rw, t, beta):
    args = (x, w, rx, rw, t, beta)
    return _value_scan(cfg, *args), args


def _fused_values_bwd(cfg, args, g):
    has_t = cfg.has_t
    _, grads = _grad_scan(cfg, *args, g.T, (True, True, True, True, has_t))
    return _cast_grads(cfg, grads) + (None,)


_fused_values.defvjp(_fused_values_fwd, _fused_values_bwd)


# ----------------------------------------------------------------------------
# Shared driver: validation, chunk plan, reduction
# ----------------------------------------------------------------------------


def _check_heads(x, w, ref_x, ref_w, chunk_size):
    x = u.check_floating("x", x)
    w = u.check_floating("w", w)
    ref_x = u.check_floating("ref_x", ref_x)
    ref_w = u.check_floating("ref_w", ref_w)
    for name, kernel in (("w", w), ("ref_w", ref_w)):
        if kernel.ndim != 2:
            raise ValueError(
                f"Expected `{name}` to be a 2-D [H, V] kernel, got shape "
                f"{kernel.shape}."
            )
    for name, h, kname, kernel in (("x", x, "w", w), ("ref_x", ref_x, "ref_w", ref_w)):
        if h.ndim == 0 or h.shape[-1] != kernel.shape[0]:
            raise ValueError(
                f"Expected the last axis of `{name}` to match the first axis of "
                f"`{kname}` (the hidden size H), got shapes {h.shape} and "
                f"{kernel.shape}."
            )
    if w.shape[1] != ref_w.shape[1]:
        raise ValueError(
            "Expected `w` and `ref_w` to have the same vocabulary size (last "
            f"axis), got shapes {w.shape} and {ref_w.shape}."
        )
    if x.shape[:-1] != ref_x.shape[:-1]:
        raise ValueError(
            "Expected `x` and `ref_x` to have the same position shape (all axes "
            f"but the last), got shapes {x.shape} and {ref_x.shape}."
        )
    if chunk_size is not None:
        u.check_int("chunk_size", chunk_size, minimum=1)
    return x, w, ref_x, ref_w


def _check_hard(
    labels, x, w, ignore_index, soft_weight, hard_weight, label_smoothing, reduction
) -> dict:
    """Validates the hard-label options; {} when ``labels`` is None."""
    if labels is None:
        return {}
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(
            f"Expected `labels` to be an integer array, got dtype {labels.dtype}."
        )
    if labels.shape != x.shape[:-1]:
        raise ValueError(
            "Expected `labels` to have the position shape of `x` "
            f"{x.shape[:-1]}, got shape {labels.shape}."
        )
    u.check_int("ignore_index", ignore_index)
    if reduction == "none":
        raise ValueError(
            "With `labels`, `reduction` must be 'mean' or 'sum' (the two parts "
            "are reported in the metrics); got 'none'."
        )
    u.check_static("label_smoothing", label_smoothing)
    smoothing = u.check_scalar(
        "label_smoothing", label_smoothing, low=0.0, high=1.0, open_high=True
    )
    if not isinstance(labels, jax.core.Tracer):  # concrete: check the range
        u.check_ids(
            "labels",
            labels,
            w.shape[1],
            keep=np.asarray(labels) != ignore_index,
            allowed=f" or `ignore_index` ({ignore_index})",
        )
    return {
        "labels": labels,
        "soft_weight": u.check_scalar("soft_weight", soft_weight, low=0.0),
        "hard_weight": u.check_scalar("hard_weight", hard_weight, low=0.0),
        "ignore_index": ignore_index,
        "label_smoothing": smoothing,
    }


@functools.partial(
    jax.jit,
    static_argnames=(
        "kind",
        "reduction",
        "chunk_size",
        "method",
        "ignore_index",
        "label_smoothing",
    ),
)
def _fused_impl(
    x,
    w,
    ref_x,
    ref_w,
    temperature,
    beta,
    where,
    labels=None,
    soft_weight=None,
    hard_weight=None,
    *,
    kind,
    reduction,
    chunk_size,
    method,
    ignore_index=-100,
    label_smoothing=0.0,
):
    dtype = u.compute_dtype(x, w, ref_x, ref_w)
    lay = _chunking.layout(x, w, chunk_size)
    mask = u.broadcast_where(where, lay.positions)
    xs = lay.chunked(u.sanitize(x, mask))
    rxs = lay.chunked(u.sanitize(ref_x, mask))
    valid = jnp.ones(lay.positions, bool) if mask is None else mask

    has_t = temperature is not None
    t = jnp.asarray(temperature if has_t else 1.0, dtype)
    beta = jnp.asarray(0.5 if beta is None else beta, dtype)
    dtypes = (x.dtype, w.dtype, ref_x.dtype, ref_w.dtype, t.dtype)
    cfg = _Config(kind, has_t, dtypes, label_smoothing)

    heads = (xs, w, rxs, ref_w, t, beta)
    if labels is not None:
        weights = (soft_weight, hard_weight)
        return _distill(
            cfg, lay, heads, valid, labels, weights, ignore_index, reduction
        )
    if method == "precompute" and reduction != "none":
        weights = lay.chunked(valid).astype(dtype)
        total, _ = _fused_total(cfg, *heads, weights, None)
        if reduction == "sum":
            return total
        count = lay.n if mask is None else jnp.sum(mask, dtype=dtype)
        return total / jnp.maximum(jnp.asarray(count, dtype), 1)

    values = _fused_values(cfg, *heads)  # [n_chunks, C]
    values = lay.unchunked(values)
    return u.reduce(values, reduction, mask)


def _distill(cfg, lay, heads, valid, labels, weights, ignore_index, reduction):
    """soft · divergence + hard · CE(labels) in one pass, and both parts."""
    soft_weight, hard_weight = weights
    dtype = heads[4].dtype  # t's
    kept = valid & (labels != ignore_index)
    if reduction == "mean":
        soft_scale = soft_weight / jnp.maximum(jnp.sum(valid, dtype=dtype), 1)
        hard_scale = hard_weight / jnp.maximum(jnp.sum(kept, dtype=dtype), 1)
    else:
        soft_scale, hard_scale = soft_weight, hard_weight
    div_weights = lay.chunked(valid).astype(dtype) * soft_scale
    ce_weights = lay.chunked(kept).astype(dtype) * hard_scale
    safe_labels = jnp.where(kept, labels, 0).astype(jnp.int32)
    hard = (lay.chunked(safe_labels), ce_weights)
    total, (div, ce) = _fused_total(cfg, *heads, div_weights, hard)
    div, ce = lax.stop_gradient((lay.unchunked(div), lay.unchunked(ce)))
    metrics = {
        "divergence": u.reduce(div, reduction, valid),
        "cross_entropy": u.reduce(ce, reduction, kept),
    }
    return total, metrics


# ----------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------


def fused_linear_kl_divergence(
    x: jax.typing.ArrayLike,
    w: jax.typing.ArrayLike,
    ref_x: jax.typing.ArrayLike,
    ref_w: jax.typing.ArrayLike,
    *,
    direction: str = "forward",
    symmetric: bool = False,
    temperature: float | jax.typing.ArrayLike = 1.0,
    reduction: str = "mean",
    where: jax.typing.ArrayLike | None = None,
    chunk_size: int | None = None,
    labels: jax.typing.ArrayLike | None = None,
    ignore_index: int = -100,
    soft_weight: float | jax.typing.ArrayLike = 1.0,
    hard_weight: float | jax.typing.ArrayLike = 1.0,
    label_smoothing: float = 0.0,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    r"""KL divergence between two linear heads, without materialising the logits.

    .. math::

        P = \mathrm{softmax}(x W / T), \quad Q = \mathrm{softmax}(x_{ref} W_{ref} / T),
        \quad \mathrm{KL}(P \| Q) = \sum_v p_v (\log p_v - \log q_v)

    Same value as ``kl_divergence(log_softmax(x @ w), log_softmax(ref_x @ ref_w),
    ...)``, but positions are processed ``chunk_size`` rows at a time, forward
    and backward, so the extra memory is O(chunk_size · V) instead of
    O(positions · V). Matmuls accumulate in float32 (also for bfloat16 inputs);
    gradients flow to ``x``, ``w``, ``ref_x`` and ``ref_w`` (wrap the reference
    in ``jax.lax.stop_gradient`` to freeze it: its gradient work is then
    skipped). First derivatives in reverse mode (``jax.grad``, ``jax.vjp``),
    and in forward mode (``jax.jvp``) for ``"mean"`` and ``"sum"``. Runs on
    sharded inputs: positions over a data axis, the kernels' vocabulary over a
    model axis, with the single-device result.

    Args:
      x: hidden states [..., H] of the trained model (P).
      w: its head kernel [H, V] (flax ``Dense`` layout; add a bias as an extra
        hidden unit of 1s if the head has one).
      ref_x: hidden states [..., H_ref] of the reference model (Q), same
        position shape as ``x``.
      ref_w: the reference head kernel [H_ref, V].
      direction: ``"forward"`` (KL(P‖Q)) or ``"reverse"`` (KL(Q‖P)). Static.
      symmetric: ½(KL(P‖Q) + KL(Q‖P)) in one pass. Static.
      temperature: divides both heads' logits; no T² factor is applied.
      reduction: ``"mean"`` over True positions, ``"sum"`` or ``"none"``. Static.
      where: optional mask (nonzero = kept) broadcastable to ``x.shape[:-1]``;
        masked positions may hold garbage (NaN) and get zero gradient.
      chunk_size: maximum number of positions whose logits exist at once; a
        positive Python int, or None (default) for one from a memory budget:
        one chunk's float32 logits take an eighth of the memory of ``w`` (1,024
        rows for a bf16 4,096 × 128k head), or 16 MiB for small heads. Static.
      labels: optional integer hard labels of shape ``x.shape[:-1]``: the
        result is then ``soft_weight · divergence + hard_weight · CE`` with
        CE the cross-entropy of the untempered student logits at ``labels``,
        from the same pass over each chunk (``"mean"`` or ``"sum"`` only).
      ignore_index: label value that is left out of the cross-entropy. Static.
      soft_weight, hard_weight: weights ≥ 0 of the two parts (traced).
      label_smoothing: ε in [0, 1): CE = (1 − ε) CE(labels) + ε CE(uniform).
        Static.

    Returns:
      A float32 scalar (float64 for float64 inputs), or the per-position values
      of shape ``x.shape[:-1]`` for ``reduction="none"``. With ``labels``,
      ``(loss, {"divergence": ..., "cross_entropy": ...})``: each part's own
      mean (or sum) over its positions, as metrics that carry no gradient.

    Raises:
      ValueError: for an unknown option, a non-positive ``chunk_size``, or
        mismatched shapes (hidden size of ``x`` vs ``w``, vocabulary of ``w``
        vs ``ref_w``, positions of ``x`` vs ``ref_x``).
      TypeError: for a traced value given as a static option, or integer input.

    Example:
      >>> import jax, jax.numpy as jnp, jaxpenalties as jp
      >>> kx, kw, krx, krw = jax.random.split(jax.random.key(0), 4)
      >>> x, w = jax.random.normal(kx, (8, 4)), jax.random.normal(kw, (4, 32))
      >>> rx, rw = jax.random.normal(krx, (8, 6)), jax.random.normal(krw, (6, 32))
      >>> fused = jp.fused_linear_kl_divergence(x, w, rx, rw, chunk_size=3)
      >>> plain = jp.kl_divergence(jax.nn.log_softmax(x @ w),
      ...                          jax.nn.log_softmax(rx @ rw))
      >>> bool(jnp.allclose(fused, plain, rtol=1e-5))
      True

    References:
      Hsu et al., Liger Kernel: Efficient Triton Kernels for LLM Training, 2024
      (fused linear cross-entropy / JSD). Hinton et al., Distilling the
      Knowledge in a Neural Network, 2015.
    """
    u.check_option("direction", direction, u.DIRECTIONS)
    u.check_bool("symmetric", symmetric)
    u.check_option("reduction", reduction, u.REDUCTIONS)
    x, w, ref_x, ref_w = _check_heads(x, w, ref_x, ref_w, chunk_size)
    hard = _check_hard(
        labels, x, w, ignore_index, soft_weight, hard_weight, label_smoothing, reduction
    )
    temperature = u.check_temperature(temperature)
    return _fused_impl(
        x,
        w,
        ref_x,
        ref_w,
        temperature,
        None,
        where,
        kind="symmetric" if symmetric else direction,
        reduction=reduction,
        chunk_size=chunk_size,
        method="precompute",
        **hard,
    )


def fused_linear_js_divergence(
    x: jax.typing.ArrayLike,
    w: jax.typing.ArrayLike,
    ref_x: jax.typing.ArrayLike,
    ref_w: jax.typing.ArrayLike,
    *,
    beta: float = 0.5,
    temperature: float | jax.typing.ArrayLike = 1.0,
    reduction: str = "mean",
    where: jax.typing.ArrayLike | None = None,
    chunk_size: int | None = None,
    labels: jax.typing.ArrayLike | None = None,
    ignore_index: int = -100,
    soft_weight: float | jax.typing.ArrayLike = 1.0,
    hard_weight: float | jax.typing.ArrayLike = 1.0,
    label_smoothing: float = 0.0,
) -> jax.Array | tuple[jax.Array, dict[str, jax.Array]]:
    r"""Generalised Jensen–Shannon divergence between two linear heads, chunked.

    .. math::

        M = \beta P + (1 - \beta) Q, \qquad
        \mathrm{JS}_\beta(P \| Q) = \beta\,\mathrm{KL}(P \| M)
            + (1 - \beta)\,\mathrm{KL}(Q \| M)

    with P = softmax(x @ w / T), Q = softmax(ref_x @ ref_w / T). Same value as
    ``js_divergence`` on the materialised log-softmax logits, with O(chunk_size ·
    V) extra memory forward and backward (see
    :func:`fused_linear_kl_divergence`).

    Args:
      x: hidden states [..., H] of the trained model (P, e.g. the student).
      w: its head kernel [H, V].
      ref_x: reference hidden states [..., H_ref] (Q, e.g. the teacher).
      ref_w: the reference head kernel [H_ref, V].
      beta: mixture weight in the open interval (0, 1); changing it does not
        recompile.
      temperature: divides both heads' logits; no T² factor.
      reduction: ``"mean"``, ``"sum"`` or ``"none"``. Static.
      where: optional mask (nonzero = kept) broadcastable to ``x.shape[:-1]``.
      chunk_size: maximum number of positions whose logits exist at once, or
        None (default) for one from a memory budget (see
        :func:`fused_linear_kl_divergence`). Static.
      labels, ignore_index, soft_weight, hard_weight, label_smoothing: hard
        labels in the same pass, as in :func:`fused_linear_kl_divergence`.

    Returns:
      A scalar, or per-position values of shape ``x.shape[:-1]``; with
      ``labels``, ``(loss, {"divergence": ..., "cross_entropy": ...})``.

    Raises:
      ValueError: β outside (0, 1), unknown option, mismatched shapes.
      TypeError: traced static option, integer input.

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> x, rx = jnp.ones((2, 1)), jnp.ones((2, 1))
      >>> w = jnp.array([[50.0, -50.0]])  # P ≈ one-hot on token 0
      >>> rw = jnp.array([[-50.0, 50.0]])  # Q ≈ one-hot on token 1
      >>> print(f"{jp.fused_linear_js_divergence(x, w, rx, rw):.6f}")  # log 2
      0.693147

    References:
      Agarwal et al., On-Policy Distillation of Language Models: Learning from
      Self-Generated Mistakes (GKD), 2024. Hsu et al., Liger Kernel: Efficient
      Triton Kernels for LLM Training, 2024.
    """
    beta = u.check_beta(beta)
    u.check_option("reduction", reduction, u.REDUCTIONS)
    x, w, ref_x, ref_w = _check_heads(x, w, ref_x, ref_w, chunk_size)
    hard = _check_hard(
        labels, x, w, ignore_index, soft_weight, hard_weight, label_smoothing, reduction
    )
    temperature = u.check_temperature(temperature)
    return _fused_impl(
        x,
        w,
        ref_x,
        ref_w,
        temperature,
        beta,
        where,
        kind="js",
        reduction=reduction,
        chunk_size=chunk_size,
        method="precompute",
        **hard,
    )
