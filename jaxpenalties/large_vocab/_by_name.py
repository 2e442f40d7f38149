"""Any divergence of the kernel on the large-vocabulary paths, chosen by name.

``fused_linear_divergence`` (two linear heads, chunked), ``sparse_divergence``
(a dense student against a stored top-k teacher) and
``fused_linear_sparse_divergence`` (a linear-head student against a top-k
teacher) take ``divergence=`` one of :data:`DIVERGENCES`, with that
divergence's parameter (``alpha``, ``skew``, ``beta``) and ``direction``.
Each name is a kind of the one divergence kernel
(:mod:`jaxpenalties._core.kernel`), which every path runs per position or per
chunk: a divergence added to the kernel is available on every path at once.
ULD sorts each side first (:mod:`jaxpenalties._core.uld`); its heads may
have vocabularies of different sizes.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from jaxpenalties._core import checks, chunking, divergence_checks
from jaxpenalties._core.types import (
    Array,
    ArrayLike,
    Direction,
    GradAccumulation,
    Reduction,
    Tail,
)
from jaxpenalties.large_vocab import _fused_run, _fused_sparse, _sparse, _topk

Divergence = Literal[
    "kl", "symmetric_kl", "js", "total_variation", "alpha", "skew_kl", "uld"
]
DIVERGENCES: tuple[str, ...] = get_args(Divergence)

_KINDS = {
    "kl": "forward",
    "symmetric_kl": "symmetric",
    "js": "js",
    "total_variation": "tv",
    "alpha": "alpha",
    "skew_kl": "skew",
    "uld": "uld",
}


def resolve(
    divergence: Any,
    direction: Any,
    alpha: Any,
    skew: Any,
    beta: Any,
    top_k: Any = None,
) -> tuple[str, bool, Any, int | None]:
    """(kernel kind, swap, parameter, top_k) of a divergence by name, with
    every option checked: ``direction`` swaps the asymmetric ones (KL, α, skew
    KL), the parameter is β, α or λ, and ``top_k`` is ULD's only."""
    checks.check_option("divergence", divergence, DIVERGENCES)
    swap = divergence_checks.check_direction(direction)
    if swap and divergence not in ("kl", "alpha", "skew_kl"):
        raise ValueError(
            f"`direction` applies to divergence='kl', 'alpha' or 'skew_kl', got "
            f"direction={direction!r} with divergence={divergence!r}."
        )
    param: Any = None
    if divergence == "js":
        param = divergence_checks.check_beta(beta)
    elif divergence == "alpha":
        param = divergence_checks.check_unit("alpha", alpha)
    elif divergence == "skew_kl":
        param = divergence_checks.check_unit("skew", skew)
    top_k = divergence_checks.check_top_k(top_k)
    if top_k is not None and divergence != "uld":
        raise ValueError(
            f"`top_k` applies to divergence='uld' only, got top_k={top_k!r} with "
            f"divergence={divergence!r}."
        )
    return _KINDS[divergence], swap, param, top_k


def fused_linear_divergence(
    x: ArrayLike,
    w: ArrayLike,
    ref_x: ArrayLike,
    ref_w: ArrayLike,
    *,
    divergence: Divergence,
    direction: Direction = "forward",
    alpha: float | ArrayLike = 0.5,
    skew: float | ArrayLike = 0.1,
    beta: float = 0.5,
    top_k: int | None = None,
    temperature: float | ArrayLike = 1.0,
    reduction: Reduction = "mean",
    where: ArrayLike | None = None,
    chunk_size: int | None = None,
    labels: ArrayLike | None = None,
    ignore_index: int = -100,
    soft_weight: float | ArrayLike = 1.0,
    hard_weight: float | ArrayLike = 1.0,
    label_smoothing: float = 0.0,
    grad_accumulation: GradAccumulation = "float32",
    bias: ArrayLike | None = None,
    ref_bias: ArrayLike | None = None,
    logit_scale: float | ArrayLike | None = None,
    ref_logit_scale: float | ArrayLike | None = None,
    softcap: float | ArrayLike | None = None,
    ref_softcap: float | ArrayLike | None = None,
) -> Array | tuple[Array, dict[str, Array]]:
    r"""Any divergence between two linear heads, without materialising logits.

    P = softmax(x @ w / T), Q = softmax(ref_x @ ref_w / T), and the value of
    the dense function of the same name on the materialised log-softmax
    logits: ``"kl"`` (:func:`kl_divergence`), ``"symmetric_kl"``, ``"js"``
    (:func:`js_divergence`, with ``beta``), ``"total_variation"``,
    ``"alpha"`` (:func:`alpha_divergence`, with ``alpha``), ``"skew_kl"``
    (:func:`skew_kl_divergence`, with ``skew``) or ``"uld"``
    (:func:`uld_distance`, with ``top_k``; ``w`` [H, V] and ``ref_w``
    [H_ref, V_ref] may then have vocabularies of different sizes). Positions
    are processed ``chunk_size`` rows at a time forward and backward, exactly
    as :func:`fused_linear_kl_divergence`, whose other arguments (hard
    ``labels`` in the same pass, ``grad_accumulation``, sharding) work the
    same way.

    Args:
      x, w, ref_x, ref_w: as in :func:`fused_linear_kl_divergence`.
      divergence: one of the names above. Static.
      direction: ``"reverse"`` exchanges P and Q (for ``"kl"``, ``"alpha"``
        and ``"skew_kl"``). Static.
      alpha: α in [0, 1] for ``"alpha"``; may be traced (no recompile; NaN
        outside [0, 1]).
      skew: λ in [0, 1] for ``"skew_kl"``; may be traced likewise.
      beta: JS's β in (0, 1), a Python float, for ``"js"``.
      top_k: ULD's truncation (its k largest entries per side and a tail
        bucket), or None for the full sorted vectors. Static.
      temperature, reduction, where, chunk_size: as in
        :func:`fused_linear_kl_divergence`.
      labels, ignore_index, soft_weight, hard_weight: hard labels in the same
        pass, as in :func:`fused_linear_kl_divergence`.
      label_smoothing, grad_accumulation: likewise.
      bias, ref_bias, logit_scale, ref_logit_scale, softcap, ref_softcap: each
        head's logits c · tanh(s · (x @ w + b) / c) before the temperature,
        as in :func:`fused_linear_kl_divergence` (``ref_bias`` [V_ref]).

    Returns:
      A scalar, or per-position values for ``reduction="none"``; with
      ``labels``, ``(loss, {"divergence": ..., "cross_entropy": ...})``.

    Raises:
      ValueError: an unknown divergence or option, a parameter outside its
        range, an option given to a divergence it does not apply to,
        mismatched shapes (vocabularies must match but for ULD).

    Example:
      >>> import jax, jax.numpy as jnp, jaxpenalties as jp
      >>> kx, kw, krx, krw = jax.random.split(jax.random.key(0), 4)
      >>> x, w = jax.random.normal(kx, (8, 4)), jax.random.normal(kw, (4, 32))
      >>> rx, rw = jax.random.normal(krx, (8, 6)), jax.random.normal(krw, (6, 48))
      >>> fused = jp.fused_linear_divergence(x, w, rx, rw, divergence="uld",
      ...                                    chunk_size=3)
      >>> plain = jp.uld_distance(x @ w, rx @ rw, from_logits=True)
      >>> bool(jnp.allclose(fused, plain, rtol=1e-5))
      True

    References:
      Boizard et al., Towards Cross-Tokenizer Distillation: the Universal
      Logit Distillation Loss, 2024. Hsu et al., Liger Kernel, 2024.
    """
    kind, swap, param, top_k = resolve(divergence, direction, alpha, skew, beta, top_k)
    hard = (labels, ignore_index, soft_weight, hard_weight, label_smoothing)
    return _fused_run.run(
        (x, w, ref_x, ref_w),
        kind,
        swap,
        param,
        temperature,
        reduction,
        where,
        chunk_size,
        hard,
        grad_accumulation,
        top_k,
        (bias, logit_scale, softcap, ref_bias, ref_logit_scale, ref_softcap),
    )


def _sparse_kind(divergence: Any, *names: Any) -> tuple[str, bool, Any]:
    kind, swap, param, _ = resolve(divergence, *names)
    if kind == "uld":
        raise ValueError(
            "divergence='uld' compares sorted probabilities and needs no teacher "
            "indices: use uld_distance(student_logprobs, teacher_logprobs, "
            "top_k=k) for a stored top-k teacher, or fused_linear_divergence."
        )
    return kind, swap, param


def sparse_divergence(
    student_logprobs: ArrayLike,
    teacher_indices: ArrayLike,
    teacher_logprobs: ArrayLike,
    *,
    divergence: Divergence,
    direction: Direction = "forward",
    alpha: float | ArrayLike = 0.5,
    skew: float | ArrayLike = 0.1,
    beta: float = 0.5,
    tail: Tail = "renormalize",
    temperature: float | ArrayLike = 1.0,
    reduction: Reduction = "mean",
    where: ArrayLike | None = None,
) -> Array:
    r"""Any divergence of the kernel between a dense student and a top-k teacher.

    The conventions of :func:`sparse_kl_divergence` (P the student, Q the
    teacher, over the k teacher entries renormalised or with one tail bucket
    per side), for ``divergence`` = ``"kl"``, ``"symmetric_kl"``, ``"js"``,
    ``"total_variation"``, ``"alpha"`` or ``"skew_kl"``, with their parameter
    and ``direction`` as in :func:`fused_linear_divergence`. (ULD ignores
    token identities: a stored top-k teacher is ``uld_distance(student,
    teacher_logprobs, top_k=k)``.)

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> student = jnp.log(jnp.array([0.5, 0.25, 0.25]))
      >>> idx, teacher = jnp.array([0, 1]), jnp.log(jnp.array([0.25, 0.5]))
      >>> tv = jp.sparse_divergence(student, idx, teacher, tail="bucket",
      ...                           divergence="total_variation")
      >>> print(f"{tv:.4f}")  # ½ (¼ + ¼ + 0)
      0.2500
    """
    kind, swap, param = _sparse_kind(divergence, direction, alpha, skew, beta)
    arrays = (student_logprobs, teacher_indices, teacher_logprobs)
    args = _sparse._check_inputs(*arrays, tail, temperature, reduction, where)
    return _topk.divergence(
        *args, param, kind=kind, swap=swap, tail=tail, reduction=reduction
    )


def fused_linear_sparse_divergence(
    x: ArrayLike,
    w: ArrayLike,
    teacher_indices: ArrayLike,
    teacher_logprobs: ArrayLike,
    *,
    divergence: Divergence,
    direction: Direction = "forward",
    alpha: float | ArrayLike = 0.5,
    skew: float | ArrayLike = 0.1,
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
    r"""Any divergence of the kernel between a linear-head student and a top-k
    teacher: :func:`sparse_divergence` on ``log_softmax(x @ w)``, chunked as
    :func:`fused_linear_sparse_kl_divergence` (with its ``bias``,
    ``logit_scale`` and ``softcap`` of the student's head).

    Example:
      >>> import jax, jax.numpy as jnp, jaxpenalties as jp
      >>> kx, kw = jax.random.split(jax.random.key(0))
      >>> x, w = jax.random.normal(kx, (6, 4)), jax.random.normal(kw, (4, 20))
      >>> idx = jnp.tile(jnp.arange(5), (6, 1))
      >>> teacher = jnp.log(jnp.full((6, 5), 0.15))
      >>> f = jp.fused_linear_sparse_divergence(x, w, idx, teacher, tail="bucket",
      ...                                       divergence="alpha", chunk_size=4)
      >>> d = jp.sparse_divergence(jax.nn.log_softmax(x @ w), idx, teacher,
      ...                          tail="bucket", divergence="alpha")
      >>> bool(jnp.allclose(f, d, rtol=1e-5))
      True
    """
    kind, swap, param = _sparse_kind(divergence, direction, alpha, skew, beta)
    checks.check_option("grad_accumulation", grad_accumulation, chunking.ACCUMULATIONS)
    top = (teacher_indices, teacher_logprobs)
    transform = (bias, logit_scale, softcap)
    args = _fused_sparse._check(
        x, w, top, tail, temperature, reduction, where, chunk_size, transform
    )
    return _fused_sparse._impl(
        *args,
        param,
        kind=kind,
        swap=swap,
        tail=tail,
        reduction=reduction,
        chunk_size=chunk_size,
        grad_accumulation=grad_accumulation,
    )
