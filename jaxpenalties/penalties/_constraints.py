"""Structural constraints on representations: orthogonality and consistency.

:func:`orthogonality` never forms an n×n Gram matrix when there are more rows
than dimensions: every mode is computed exactly from the smaller of X Xᵀ and
Xᵀ X (they share their nonzero eigenvalues and their Frobenius norm).
:func:`consistency` compares paired outputs (clean vs augmented inputs).
"""

from __future__ import annotations

import functools
from typing import get_args

import jax
import jax.numpy as jnp

from jaxpenalties import divergences
from jaxpenalties._core import checks, divergence_checks, numerics
from jaxpenalties._core.types import (
    ArrayLike,
    ConsistencyMetric,
    OrthogonalityAxis,
    OrthogonalityMode,
    Reduction,
)

ORTHOGONALITY_MODES: tuple[str, ...] = get_args(OrthogonalityMode)
ORTHOGONALITY_AXES: tuple[str, ...] = get_args(OrthogonalityAxis)
CONSISTENCY_METRICS: tuple[str, ...] = get_args(ConsistencyMetric)

_HIGHEST = jax.lax.Precision.HIGHEST  # Gram matrices in full float32 everywhere


def _rows(x: jax.Array, axis: OrthogonalityAxis) -> jax.Array:
    """The [n, d] matrix whose rows are constrained (see `orthogonality`)."""
    if x.ndim == 2:
        return x
    batch, seq, dim = x.shape
    if axis == "rows":  # one row per (batch, seq) position
        return x.reshape(batch * seq, dim)
    if axis == "sequence":  # row s = x[:, s, :], flattened over (batch, dim)
        return jnp.swapaxes(x, 0, 1).reshape(seq, batch * dim)
    return jnp.moveaxis(x, -1, 0).reshape(dim, batch * seq)  # row k = x[..., k]


def _unit(x: jax.Array) -> jax.Array:
    """Unit-L2 vectors along the last axis; a zero vector (or one whose squared
    norm underflows) is left as is, so it stays zero with a finite gradient."""
    sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    ok = sq >= jnp.finfo(x.dtype).tiny
    return x / jnp.sqrt(jnp.where(ok, sq, jnp.ones((), x.dtype)))


def _spectral_radius(e: jax.Array) -> jax.Array:
    """max |λ(E)| for a symmetric E, with a gradient that is finite everywhere.

    The eigenvectors V come from ``eigh`` under ``stop_gradient``; the values
    are then recomputed as Rayleigh quotients vᵢᵀ E vᵢ (equal to λᵢ). Their
    gradient vᵢ vᵢᵀ is the eigenvalue derivative, without the 1/(λᵢ − λⱼ)
    eigenvector terms that are inf at repeated eigenvalues.
    """
    _, v = jnp.linalg.eigh(jax.lax.stop_gradient(e))
    rayleigh = jnp.sum(v * jnp.matmul(e, v, precision=_HIGHEST), axis=0)
    return jnp.max(jnp.abs(rayleigh), initial=0.0)  # 0 for a 0×0 matrix


@functools.partial(jax.jit, static_argnames=("mode", "normalize", "axis"))
def _orthogonality_impl(
    x: jax.Array,
    *,
    mode: OrthogonalityMode,
    normalize: bool,
    axis: OrthogonalityAxis,
) -> jax.Array:
    (x,) = numerics.upcast(x)
    x = _rows(x, axis)
    if normalize:
        x = _unit(x)
    n, d = x.shape
    if n <= d:
        # Few rows: G = X Xᵀ (n×n) is the smaller Gram matrix; use it directly.
        g = jnp.matmul(x, x.T, precision=_HIGHEST)
        eye = jnp.eye(n, dtype=x.dtype)
        if mode == "soft":
            return jnp.sum(jnp.square(jnp.where(eye > 0, 0, g)))
        if mode == "hard":
            return jnp.sum(jnp.square(g - eye))
        return jnp.square(_spectral_radius(g - eye))
    # Many rows: C = Xᵀ X (d×d). G and C share their d eigenvalues μⱼ, and G has
    # n − d more eigenvalues equal to 0, i.e. G − I has the eigenvalue −1 with
    # multiplicity n − d. Hence, with ‖G‖_F = ‖C‖_F and G_ii = ‖xᵢ‖²:
    #   soft = ‖G‖²_F − Σᵢ ‖xᵢ‖⁴ = ‖C‖²_F − Σᵢ ‖xᵢ‖⁴
    #   hard = Σⱼ (μⱼ − 1)² + (n − d) = ‖C − I‖²_F + (n − d)
    #   spectral = max(maxⱼ |μⱼ − 1|, 1)²
    c = jnp.matmul(x.T, x, precision=_HIGHEST)
    eye = jnp.eye(d, dtype=x.dtype)
    if mode == "soft":
        row_sq = jnp.sum(jnp.square(x), axis=1)
        return jnp.sum(jnp.square(c)) - jnp.sum(jnp.square(row_sq))
    if mode == "hard":
        return jnp.sum(jnp.square(c - eye)) + (n - d)
    return jnp.square(jnp.maximum(_spectral_radius(c - eye), 1))


def orthogonality(
    x: ArrayLike,
    *,
    mode: OrthogonalityMode = "soft",
    normalize: bool = True,
    axis: OrthogonalityAxis = "rows",
) -> jax.Array:
    r"""Orthogonality penalty on the rows of ``x``, with Gram matrix G = X Xᵀ.

    .. math::

        \text{soft} = \sum_{i \ne j} G_{ij}^2, \qquad
        \text{hard} = \|G - I\|_F^2, \qquad
        \text{spectral} = \|G - I\|_2^2 = \max_i |\lambda_i(G) - 1|^2

    Every mode is exact and computed from the smaller Gram matrix: for n rows
    of dimension d with n > d, from C = Xᵀ X (d×d), using ‖G‖_F = ‖C‖_F, tr G =
    tr C, and the fact that G − I has the eigenvalues μⱼ − 1 of C − I plus −1
    (n − d times). Cost O(n·d·min(n, d) + min(n, d)³), memory O(n·d + min(n,
    d)²): 40,000 rows of dimension 32 never build a 40,000² matrix.
    ``"spectral"`` (SRIP) uses ``eigh`` with gradients through Rayleigh
    quotients, which stay finite at repeated eigenvalues (orthonormal,
    identical or zero rows).

    Rows of ``x``:

    * 2-D ``[n, d]``: its rows (``axis`` is ignored).
    * 3-D ``[batch, seq, dim]``: ``"rows"`` = one row per (batch, seq)
      position, ``[batch·seq, dim]``; ``"sequence"`` = one row per sequence
      position s, ``x[:, s, :]`` flattened, ``[seq, batch·dim]``;
      ``"vocabulary"`` = one row per last-axis feature k, ``x[..., k]``
      flattened, ``[dim, batch·seq]``.

    Args:
      x: a floating 2-D or 3-D array.
      mode: ``"soft"``, ``"hard"`` or ``"spectral"``. Static.
      normalize: L2-normalise the rows first (cosine Gram matrix); a zero row
        stays zero with finite gradients. Static.
      axis: ``"rows"``, ``"sequence"`` or ``"vocabulary"`` for 3-D input.
        Static.

    Returns:
      A float32 scalar (float64 for float64 input).

    Raises:
      ValueError: for an unknown option or an input that is not 2-D or 3-D.
      TypeError: for a traced option or a non-floating input.

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> x = jnp.array([[1.0, 0.0], [1.0, 1.0]])  # rows at 45°: G₀₁ = 1/√2
      >>> print(f"{jp.orthogonality(x):.4f}")  # 2 · (1/√2)²
      1.0000
      >>> print(f"{jp.orthogonality(x, mode='spectral'):.4f}")  # (1/√2)²
      0.5000

    References:
      Bansal et al., Can We Gain More from Orthogonality Regularizations in
      Training Deep CNNs? (SRIP), 2018. Brock et al., Neural Photo Editing with
      Introspective Adversarial Networks (orthogonal regularisation), 2017.
    """
    checks.check_option("mode", mode, ORTHOGONALITY_MODES)
    checks.check_bool("normalize", normalize)
    checks.check_option("axis", axis, ORTHOGONALITY_AXES)
    x = checks.check_floating("x", x)
    if x.ndim not in (2, 3):
        raise ValueError(
            "Expected `x` to be 2-D [rows, dim] or 3-D [batch, seq, dim], got "
            f"shape {x.shape}."
        )
    return _orthogonality_impl(x, mode=mode, normalize=normalize, axis=axis)


@functools.partial(jax.jit, static_argnames=("metric", "reduction"))
def _consistency_impl(
    a: jax.Array,
    b: jax.Array,
    where: jax.Array | None,
    *,
    metric: ConsistencyMetric,
    reduction: Reduction,
) -> jax.Array:
    a, b = numerics.upcast(a, b)
    mask = checks.broadcast_where(where, a.shape[:-1])
    a = numerics.sanitize(a, mask)
    b = numerics.sanitize(b, mask)
    if metric in ("mse", "l1"):
        diff = a - b
        values = jnp.square(diff) if metric == "mse" else diff * jnp.sign(diff)
        if mask is not None:
            mask = jnp.broadcast_to(mask[..., None], values.shape)
        return numerics.reduce(values, reduction, mask)
    # cosine: 1 − âᵀb̂ with safely normalised vectors (a zero vector has
    # cosine similarity 0 with everything, and finite gradients).
    values = 1 - jnp.sum(_unit(a) * _unit(b), axis=-1)
    return numerics.reduce(values, reduction, mask)


def consistency(
    a: ArrayLike,
    b: ArrayLike,
    *,
    metric: ConsistencyMetric = "mse",
    reduction: Reduction = "mean",
    where: ArrayLike | None = None,
) -> jax.Array:
    r"""Consistency between paired outputs (e.g. clean vs augmented input).

    * ``"mse"``: (a − b)², and ``"l1"``: ``|a − b|``, elementwise. ``"mean"`` is the
      mean over all elements (the usual MSE / MAE), ``"sum"`` the total, and
      ``"none"`` returns the elementwise values (shape of ``a``).
    * ``"cosine"``: 1 − cos(a, b) along the last axis, one value per position;
      a zero vector has cosine similarity 0 (value 1) with finite gradients.
    * ``"kl"``: symmetric KL ½(KL(A‖B) + KL(B‖A)) of log-probabilities along the
      last axis, one value per position (:func:`jaxpenalties.kl_divergence`
      with ``symmetric=True``; exact, as there).

    For ``"cosine"`` and ``"kl"``, ``"none"`` returns shape ``a.shape[:-1]``.

    Args:
      a: a floating array (for ``"kl"``: log-probabilities).
      b: the paired array, same shape (no broadcasting).
      metric: ``"mse"``, ``"l1"``, ``"cosine"`` or ``"kl"``. Static.
      reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``. Static.
      where: optional mask (nonzero = kept) broadcastable to the position shape
        ``a.shape[:-1]``; masked positions (all their elements) contribute
        nothing and the mean is over the unmasked ones.

    Returns:
      A scalar, or the values described above for ``reduction="none"``.

    Raises:
      ValueError: for an unknown option, mismatched shapes or a scalar input.
      TypeError: for a traced option or non-floating input.

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> a = jnp.array([[1.0, 0.0], [0.0, 2.0]])
      >>> b = jnp.array([[0.0, 0.0], [0.0, 1.0]])
      >>> print(jp.consistency(a, b))  # (1 + 0 + 0 + 1) / 4
      0.5
      >>> print(jp.consistency(a, b, metric="cosine", reduction="none"))
      [1. 0.]

    References:
      Sajjadi et al., Regularization With Stochastic Transformations and
      Perturbations for Deep Semi-Supervised Learning, 2016. Xie et al.,
      Unsupervised Data Augmentation for Consistency Training, 2020.
    """
    checks.check_option("metric", metric, CONSISTENCY_METRICS)
    checks.check_option("reduction", reduction, checks.REDUCTIONS)
    if metric == "kl":
        divergence_checks.check_pair(a, b, -1, names=("a", "b"))
        value = divergences.kl_divergence(
            a, b, symmetric=True, reduction=reduction, where=where
        )
        return value
    a = checks.check_floating("a", a)
    b = checks.check_floating("b", b)
    checks.check_same_shape("a", a, "b", b)
    checks.normalize_axis(-1, a.ndim)  # a scalar has no last axis
    return _consistency_impl(a, b, where, metric=metric, reduction=reduction)
