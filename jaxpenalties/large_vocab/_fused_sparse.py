"""Top-k teacher divergences for a student given as hidden states and its head.

The student's log-probs ``log_softmax(x @ w)`` are formed a chunk of positions at
a time (the layout of the fused divergences) and compared with the stored top-k
teacher by the same exact kernel as :mod:`._sparse`, with the same
``tail`` and ``temperature`` conventions. Each chunk's computation is rematerialised in
the backward pass (:mod:`._head_scan`), so the extra memory is
O(chunk_size · V) in both passes, and the weight gradient is summed over chunks
by the rule every fused path shares (``grad_accumulation``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxpenalties._core import checks, chunking, divergence_checks, numerics
from jaxpenalties._core.types import (
    Array,
    ArrayLike,
    Direction,
    GradAccumulation,
    Reduction,
    Tail,
)
from jaxpenalties.large_vocab import _head_checks as head_checks
from jaxpenalties.large_vocab import _head_scan, _topk
from jaxpenalties.large_vocab import _head_transform as head_transform


def _chunk_values(
    z: Array,
    parts: tuple[Array, Array, Array],
    shared: tuple[Array | None, float | None, Any],
    *,
    kind: str,
    swap: bool,
    tail: str,
) -> Array:
    """One chunk's per-position divergences from its raw logits z [C, V]
    (mapped by the head's bias, scale and soft-cap, when given)."""
    indices, teacher, mask = parts
    t, beta, tr = shared
    student = jax.nn.log_softmax(head_transform.apply(tr, z), axis=-1)
    return _topk.divergence(
        student,
        indices,
        teacher,
        t,
        mask,
        beta,
        kind=kind,
        swap=swap,
        tail=tail,
        reduction="none",
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "kind",
        "swap",
        "tail",
        "reduction",
        "chunk_size",
        "grad_accumulation",
    ),
)
def _impl(
    x: Array,
    w: Array,
    indices: Array,
    teacher: Array,
    t: Array | None,
    mask: Array | None,
    tr: head_transform.Transform | None,
    beta: float | None,
    *,
    kind: str,
    swap: bool,
    tail: str,
    reduction: str,
    chunk_size: int | None,
    grad_accumulation: str,
) -> Array:
    lay = chunking.layout(x, w, chunk_size)
    valid = jnp.ones(lay.positions, bool) if mask is None else mask
    # Masked rows of x are zeroed (a NaN there would reach dw = xᵀ · dz);
    # ``_topk.divergence`` masks the indices and the teacher's rows itself.
    xs = lay.chunked(numerics.sanitize(x, mask))
    parts = (lay.chunked(indices), lay.chunked(teacher), lay.chunked(valid))
    f = functools.partial(_chunk_values, kind=kind, swap=swap, tail=tail)
    dtype = numerics.compute_dtype(x, w, teacher)
    shared = (t, beta, head_transform.prepare(tr, dtype))
    values = _head_scan.head_scan(f, dtype, grad_accumulation, xs, w, parts, shared)
    return numerics.reduce(lay.unchunked(values), reduction, mask)


def _check(
    x: ArrayLike,
    w: ArrayLike,
    top_k: tuple[ArrayLike, ArrayLike],
    tail: str,
    temperature: float | ArrayLike,
    reduction: str,
    where: ArrayLike | None,
    chunk_size: int | None,
    transform: tuple[Any, Any, Any] = (None, None, None),
) -> tuple[Any, ...]:
    """Validates everything eagerly; ``top_k`` is (indices, teacher log-probs),
    ``transform`` (bias, logit_scale, softcap)."""
    x, w = head_checks.check_linear_head(x, w, chunk_size)
    tr = head_transform.check("", *transform, w.shape[1])
    student_shape = x.shape[:-1] + (w.shape[1],)
    indices, teacher, t, mask = head_checks.check_teacher(
        student_shape, top_k[0], top_k[1], tail, temperature, reduction, where
    )
    t = None if t is None else jnp.asarray(t, numerics.compute_dtype(x, w, teacher))
    return x, w, indices, teacher, t, mask, tr


def fused_linear_sparse_kl_divergence(
    x: ArrayLike,
    w: ArrayLike,
    teacher_indices: ArrayLike,
    teacher_logprobs: ArrayLike,
    *,
    direction: Direction = "forward",
    symmetric: bool = False,
    tail: Tail = "renormalize",
    temperature: float | ArrayLike = 1.0,
    reduction: Reduction = "mean",
    where: ArrayLike | None = None,
    chunk_size: int | None = None,
    grad_accumulation: GradAccumulation = "float32",
    bias: ArrayLike | None = None,
    logit_scale: float | ArrayLike | None = None,
    softcap: float | ArrayLike | None = None,
) -> Array:
    r"""KL between a linear-head student P = softmax(x W) and a top-k teacher Q.

    Same value as ``sparse_kl_divergence(log_softmax(x @ w), teacher_indices,
    teacher_logprobs, ...)`` (see :func:`sparse_kl_divergence` for ``tail`` and
    ``temperature``), without the [positions, V] student log-probs: positions
    are processed ``chunk_size`` rows at a time, forward and backward.

    Args:
      x: student hidden states [..., H].
      w: the student head kernel [H, V].
      teacher_indices: integer [..., k], distinct entries in [0, V) (checked
        when concrete; under ``jit`` a bad row gives NaN at its position, in
        the value and the gradient).
      teacher_logprobs: the teacher's log-probs of those entries [..., k].
      direction: ``"forward"`` (KL(P‖Q)) or ``"reverse"`` (KL(Q‖P)). Static.
      symmetric: ½(KL(P‖Q) + KL(Q‖P)). Static.
      tail: ``"renormalize"`` or ``"bucket"``. Static.
      temperature: T (``"renormalize"`` only); no T² factor.
      reduction: ``"mean"``, ``"sum"`` or ``"none"``. Static.
      where: optional mask (nonzero = kept) broadcastable to ``x.shape[:-1]``.
      chunk_size: positions whose logits exist at once, or None for the
        memory budget of :func:`fused_linear_kl_divergence`. Static.
      grad_accumulation: how ``w``'s gradient is summed over chunks:
        ``"float32"`` (default) or ``"param"`` (in ``w``'s dtype), as in
        :func:`fused_linear_kl_divergence`. Static.
      bias: optional bias [V] of the head (x @ w + bias); gets its gradient.
      logit_scale: optional logit scale s, finite and nonzero (a number or a
        scalar array, which may be traced and gets its gradient).
      softcap: optional soft-cap c > 0 (a number or a scalar array, which may
        be traced and gets its gradient; a traced c ≤ 0 gives NaN). The
        logits are c · tanh(s · (x @ w + b) / c), in this order (bias, scale,
        soft-cap, as in Hugging Face's Cohere and Gemma 2), before the
        temperature.

    Returns:
      A float32 scalar (float64 for float64 inputs), or per-position values.

    Example:
      >>> import jax, jax.numpy as jnp, jaxpenalties as jp
      >>> kx, kw = jax.random.split(jax.random.key(0))
      >>> x, w = jax.random.normal(kx, (6, 4)), jax.random.normal(kw, (4, 20))
      >>> idx = jnp.tile(jnp.arange(5), (6, 1))
      >>> teacher = jnp.log(jnp.full((6, 5), 0.15))
      >>> fused = jp.fused_linear_sparse_kl_divergence(x, w, idx, teacher,
      ...                                              chunk_size=4)
      >>> dense = jp.sparse_kl_divergence(jax.nn.log_softmax(x @ w), idx, teacher)
      >>> bool(jnp.allclose(fused, dense, rtol=1e-5))
      True

    References:
      Hinton, Vinyals and Dean, Distilling the Knowledge in a Neural Network,
      2015. Hsu et al., Liger Kernel: Efficient Triton Kernels for LLM
      Training, 2024.
    """
    kind, swap = divergence_checks.check_kl_direction(direction, symmetric)
    top_k = (teacher_indices, teacher_logprobs)
    checks.check_option("grad_accumulation", grad_accumulation, chunking.ACCUMULATIONS)
    transform = (bias, logit_scale, softcap)
    args = _check(
        x, w, top_k, tail, temperature, reduction, where, chunk_size, transform
    )
    return _impl(
        *args,
        None,
        kind=kind,
        swap=swap,
        tail=tail,
        reduction=reduction,
        chunk_size=chunk_size,
        grad_accumulation=grad_accumulation,
    )


def fused_linear_sparse_js_divergence(
    x: ArrayLike,
    w: ArrayLike,
    teacher_indices: ArrayLike,
    teacher_logprobs: ArrayLike,
    *,
    beta: float = 0.5,
    tail: Tail = "renormalize",
    temperature: float | ArrayLike = 1.0,
    reduction: Reduction = "mean",
    where: ArrayLike | None = None,
    chunk_size: int | None = None,
    grad_accumulation: GradAccumulation = "float32",
    bias: ArrayLike | None = None,
    logit_scale: float | ArrayLike | None = None,
    softcap: float | ArrayLike | None = None,
) -> Array:
    r"""Generalised JS between a linear-head student and a top-k teacher.

    Same value as ``sparse_js_divergence(log_softmax(x @ w), ...)``, chunked as
    :func:`fused_linear_sparse_kl_divergence`.

    Args:
      x: student hidden states [..., H].
      w: the student head kernel [H, V].
      teacher_indices: integer [..., k], distinct entries in [0, V).
      teacher_logprobs: the teacher's log-probs of those entries [..., k].
      beta: mixture weight in the open interval (0, 1), a Python float, as in
        :func:`jaxpenalties.sparse_js_divergence`.
      tail: ``"renormalize"`` or ``"bucket"``. Static.
      temperature: T (``"renormalize"`` only); no T² factor.
      reduction: ``"mean"``, ``"sum"`` or ``"none"``. Static.
      where: optional mask (nonzero = kept) broadcastable to ``x.shape[:-1]``.
      chunk_size: positions whose logits exist at once, or None. Static.
      grad_accumulation: ``"float32"`` (default) or ``"param"``, as in
        :func:`fused_linear_kl_divergence`. Static.
      bias, logit_scale, softcap: the student head's logits c · tanh(s ·
        (x @ w + b) / c), as in :func:`fused_linear_sparse_kl_divergence`.

    Returns:
      A float32 scalar (float64 for float64 inputs), or per-position values.

    Example:
      >>> import jax, jax.numpy as jnp, jaxpenalties as jp
      >>> x, w = jnp.ones((3, 1)), jnp.array([[40.0, -40.0, -40.0]])
      >>> idx = jnp.tile(jnp.array([1, 2]), (3, 1))  # the teacher's top-2
      >>> teacher = jnp.log(jnp.full((3, 2), 0.5))
      >>> js = jp.fused_linear_sparse_js_divergence(x, w, idx, teacher,
      ...                                           tail="bucket")
      >>> print(f"{js:.4f}")  # disjoint supports: log 2
      0.6931

    References:
      Agarwal et al., On-Policy Distillation of Language Models (GKD), 2024.
    """
    beta = divergence_checks.check_beta(beta)
    top_k = (teacher_indices, teacher_logprobs)
    checks.check_option("grad_accumulation", grad_accumulation, chunking.ACCUMULATIONS)
    transform = (bias, logit_scale, softcap)
    args = _check(
        x, w, top_k, tail, temperature, reduction, where, chunk_size, transform
    )
    return _impl(
        *args,
        beta,
        kind="js",
        swap=False,
        tail=tail,
        reduction=reduction,
        chunk_size=chunk_size,
        grad_accumulation=grad_accumulation,
    )
