"""Private: the Gaussian-kernel sums of :func:`jaxpenalties.mmd`, in row blocks.

:func:`kernel_sums` returns Sxx = Σᵢⱼ pᵢ pⱼ k(xᵢ, xⱼ), Sxy = Σᵢⱼ pᵢ qⱼ k(xᵢ, yⱼ)
and Syy = Σᵢⱼ qᵢ qⱼ k(yᵢ, yⱼ) (p, q: row weights, 1 kept, 0 masked) with
k = Σ_b exp(−‖a − b‖² · inv_b), inv_b = 1 / (2σ_b²). A scan over blocks of rows
forms one [block, columns] matrix at a time; its custom VJP computes each row's
gradient in the row's own block (∂k(a, b)/∂a = −2 Σ_b inv_b k_b (a − b), so a
row needs only its row of the matrix) and writes it in place: no [n, m] matrix
and no per-block residual is ever stored. :func:`median_inv` gives inv for the
median heuristic, :func:`fourier_embeddings` the random-feature mean
embeddings and :func:`linear_statistic` the linear-time estimate.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxpenalties._core.types import Array

_HIGHEST = lax.Precision.HIGHEST  # distances by matmul in full float32
BLOCK_BYTES = 64 * 2**20  # one block's [block, columns] matrix at most this
MEDIAN_ROWS = 1024  # the median heuristic looks at this many pooled rows at most


def block_rows(rows: int, cols: int, itemsize: int, chunk_size: int | None) -> int:
    """Rows per block: ``chunk_size``, or as many as keep one [block, cols]
    matrix within :data:`BLOCK_BYTES`; at least 1, at most ``rows``."""
    if chunk_size is None:
        chunk_size = BLOCK_BYTES // (itemsize * max(cols, 1))
    return max(1, min(rows, chunk_size))


def sq_distances(a: Array, b: Array, b_sq: Array) -> Array:
    """‖aᵢ − bⱼ‖² = ‖aᵢ‖² + ‖bⱼ‖² − 2 aᵢ·bⱼ, clamped at 0 (rounding can make
    it slightly negative); ``b_sq`` = ‖bⱼ‖²."""
    a_sq = jnp.sum(jnp.square(a), axis=1)
    ab = jnp.matmul(a, b.T, precision=_HIGHEST)
    return jnp.maximum(a_sq[:, None] + b_sq[None, :] - 2 * ab, 0)


def _kernels(d2: Array, inv: Array) -> list[Array]:
    """k_b = exp(−d² · inv_b), one matrix per bandwidth."""
    return [jnp.exp(-d2 * inv[b]) for b in range(inv.shape[0])]


def kernel(d2: Array, inv: Array) -> Array:
    """k = Σ_b exp(−d² · inv_b)."""
    return functools.reduce(jnp.add, _kernels(d2, inv))


def _block(z: Array, w: Array, start: Array, size: int) -> tuple[Array, ...]:
    """Rows [start, start + size) of ``z`` and ``w``, their row indices, and
    which of them are new (the last block is shifted back to fit, so its first
    rows were already covered by the block before)."""
    begin = jnp.minimum(start, z.shape[0] - size)
    rows = begin + jnp.arange(size)
    zb = lax.dynamic_slice_in_dim(z, begin, size)
    wb = lax.dynamic_slice_in_dim(w, begin, size)
    return zb, wb, rows, begin, rows >= start


def _against(
    zb: Array, rows: Array, cols: Array, c: Array, c_sq: Array, self_: bool, diag: bool
) -> tuple[Array, Array]:
    """Squared distances of a block against ``cols`` and the column weights;
    against its own set, the diagonal's d² is exactly 0 and its weight 0 unless
    ``diag`` (the V-statistic keeps k(xᵢ, xᵢ))."""
    d2 = sq_distances(zb, cols, c_sq)
    cw = jnp.broadcast_to(c[None, :], d2.shape)
    if self_:
        eye = rows[:, None] == jnp.arange(cols.shape[0])[None, :]
        d2 = jnp.where(eye, jnp.zeros((), d2.dtype), d2)
        if not diag:
            cw = jnp.where(eye, jnp.zeros((), d2.dtype), cw)
    return d2, cw


def _row_sums(
    z: Array, w: Array, others: tuple, inv: Array, diag: bool, size: int
) -> Array:
    """Σ over rows i of ``z`` of wᵢ Σⱼ cⱼ k(zᵢ, oⱼ), for each (o, c, o_sq,
    self) in ``others``; one scalar per entry."""
    n_blocks = -(-z.shape[0] // size)

    def body(acc: Array, k: Array) -> tuple[Array, None]:
        zb, wb, rows, _, fresh = _block(z, w, k * size, size)
        r = jnp.where(fresh, wb, jnp.zeros((), wb.dtype))
        sums = []
        for o, c, o_sq, self_ in others:
            d2, cw = _against(zb, rows, o, c, o_sq, self_, diag)
            kern = kernel(d2, inv)
            sums.append(jnp.sum(r * jnp.sum(kern * cw, axis=1)))
        return acc + jnp.stack(sums), None

    init = jnp.zeros((len(others),), z.dtype)
    acc, _ = lax.scan(body, init, jnp.arange(n_blocks))
    return acc


def _row_grads(
    z: Array, w: Array, others: tuple, inv: Array, diag: bool, size: int
) -> tuple[Array, Array]:
    """The rows' part of the gradient of Σₑ gₑ Σᵢ wᵢ Σⱼ cⱼ k(zᵢ, oⱼ) in ``z``,
    and (for the entries whose ``with_inv`` is set) its gradient in inv;
    ``others`` entries are (o, c, o_sq, self, g, with_inv)."""
    n_blocks = -(-z.shape[0] // size)

    def body(carry: tuple[Array, Array], k: Array) -> tuple[tuple, None]:
        dz, dinv = carry
        zb, wb, rows, begin, fresh = _block(z, w, k * size, size)
        r = jnp.where(fresh, wb, jnp.zeros((), wb.dtype))
        grad = jnp.zeros_like(zb)
        for o, c, o_sq, self_, g, with_inv in others:
            d2, cw = _against(zb, rows, o, c, o_sq, self_, diag)
            kernels = _kernels(d2, inv)
            # G = Σ_b inv_b k_b cⱼ, its diagonal 0 (the term's zᵢ − zᵢ is 0).
            weighted = [inv[b] * kern for b, kern in enumerate(kernels)]
            gmat = functools.reduce(jnp.add, weighted) * cw
            if self_:
                eye = rows[:, None] == jnp.arange(o.shape[0])[None, :]
                gmat = jnp.where(eye, jnp.zeros((), gmat.dtype), gmat)
            # Σᵢⱼ over one set is symmetric: zᵢ is a row and a column (2×).
            scale = -4 * g if self_ else -2 * g
            pull = zb * jnp.sum(gmat, axis=1)[:, None]
            pull = pull - jnp.matmul(gmat, o, precision=_HIGHEST)
            grad = grad + scale * wb[:, None] * pull
            if with_inv:
                dk = [jnp.sum(r * jnp.sum(-d2 * kn * cw, axis=1)) for kn in kernels]
                dinv = dinv + g * jnp.stack(dk)
        dz = lax.dynamic_update_slice_in_dim(dz, grad, begin, axis=0)
        return (dz, dinv), None

    # Every row is written by its block: the carry starts as z itself, not a
    # zero [rows, d] buffer (the two scans' zeros were one buffer, then copied).
    init = (z, jnp.zeros_like(inv))
    (dz, dinv), _ = lax.scan(body, init, jnp.arange(n_blocks))
    return dz, dinv


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def kernel_sums(
    x: Array, y: Array, p: Array, q: Array, inv: Array, diag: bool, bx: int, by: int
) -> Array:
    """[Sxx, Sxy, Syy] (see the module docstring), Sxx and Syy without their
    diagonal unless ``diag``; in blocks of ``bx`` rows of x, ``by`` rows of y."""
    x_sq, y_sq = jnp.sum(jnp.square(x), axis=1), jnp.sum(jnp.square(y), axis=1)
    xx, xy, yy = (x, p, x_sq, True), (y, q, y_sq, False), (y, q, y_sq, True)
    sxx, sxy = _row_sums(x, p, (xx, xy), inv, diag, bx)
    (syy,) = _row_sums(y, q, (yy,), inv, diag, by)
    return jnp.stack([sxx, sxy, syy])


def _sums_fwd(
    x: Array, y: Array, p: Array, q: Array, inv: Array, diag: bool, bx: int, by: int
) -> tuple[Array, tuple]:
    return kernel_sums(x, y, p, q, inv, diag, bx, by), (x, y, p, q, inv)


def _sums_bwd(diag: bool, bx: int, by: int, res: tuple, g: Array) -> tuple:
    x, y, p, q, inv = res
    x_sq, y_sq = jnp.sum(jnp.square(x), axis=1), jnp.sum(jnp.square(y), axis=1)
    # Sxy is a sum over x rows and over y rows: each scan takes its rows' part;
    # Sxy's inv gradient is counted once, in the x scan.
    xx, xy = (x, p, x_sq, True, g[0], True), (y, q, y_sq, False, g[1], True)
    yy, yx = (y, q, y_sq, True, g[2], True), (x, p, x_sq, False, g[1], False)
    dx, dinv_x = _row_grads(x, p, (xx, xy), inv, diag, bx)
    dy, dinv_y = _row_grads(y, q, (yy, yx), inv, diag, by)
    return dx, dy, jnp.zeros_like(p), jnp.zeros_like(q), dinv_x + dinv_y


kernel_sums.defvjp(_sums_fwd, _sums_bwd)


def linear_statistic(
    x: Array, y: Array, p: Array, q: Array, inv: Array, masked: bool
) -> Array:
    """(1/P) Σᵢ k(x₂ᵢ, x₂ᵢ₊₁) + k(y₂ᵢ, y₂ᵢ₊₁) − k(x₂ᵢ, y₂ᵢ₊₁) − k(x₂ᵢ₊₁, y₂ᵢ)
    over P = ⌊min(n, m)/2⌋ pairs of kept rows taken in order; 0 when P = 0."""
    if masked:  # kept rows first, in their order
        x = x[jnp.argsort((p == 0).astype(jnp.int32), stable=True)]
        y = y[jnp.argsort((q == 0).astype(jnp.int32), stable=True)]
    half = x.shape[0] // 2
    x1, x2, y1, y2 = x[0 : 2 * half : 2], x[1::2], y[0 : 2 * half : 2], y[1::2]

    def k(a: Array, b: Array) -> Array:
        return kernel(jnp.sum(jnp.square(a - b), axis=1), inv)

    h = k(x1, x2) + k(y1, y2) - k(x1, y2) - k(x2, y1)
    kept = jnp.minimum(jnp.sum(p > 0), jnp.sum(q > 0))
    pairs = kept // 2
    h = jnp.where(jnp.arange(half) < pairs, h, jnp.zeros((), h.dtype))
    return jnp.sum(h) / jnp.maximum(pairs, 1).astype(h.dtype)


def median_inv(x: Array, y: Array, p: Array, q: Array) -> Array:
    """inv = 1 / median of ‖zᵢ − zⱼ‖² over pairs i < j of the pooled kept rows
    z (x's kept rows, then y's), i.e. σ² = median / 2; 1 when that median is
    not > 0. With more than :data:`MEDIAN_ROWS` kept rows, z is the fixed
    subsample of kept rows number ⌊j·K / S⌋, j < S = MEDIAN_ROWS, K kept."""
    x, y = lax.stop_gradient(x), lax.stop_gradient(y)
    size = min(MEDIAN_ROWS, x.shape[0] + y.shape[0])
    kept_x, kept_y = jnp.cumsum(p > 0), jnp.cumsum(q > 0)  # int32 ranks + 1
    n_x = kept_x[-1]
    n_all = n_x + kept_y[-1]
    j = jnp.arange(size)
    # ⌊j·K / S⌋ without overflow: K = a·S + b, j·b < S².
    spread = j * (n_all // size) + (j * (n_all % size)) // size
    rank = jnp.where(n_all >= size, spread, j)
    valid = rank < n_all
    ix = jnp.minimum(jnp.searchsorted(kept_x, rank + 1), x.shape[0] - 1)
    iy = jnp.searchsorted(kept_y, jnp.maximum(rank - n_x, 0) + 1)
    iy = jnp.minimum(iy, y.shape[0] - 1)
    z = jnp.where((rank < n_x)[:, None], x[ix], y[iy])
    d2 = sq_distances(z, z, jnp.sum(jnp.square(z), axis=1))
    pairs = valid[:, None] & valid[None, :] & (j[:, None] < j[None, :])
    med = jnp.nanmedian(jnp.where(pairs, d2, jnp.nan))
    med = jnp.where(med > 0, med, jnp.ones((), med.dtype))
    return (1 / med)[None]


def fourier_embeddings(
    x: Array, y: Array, p: Array, q: Array, inv: Array, features: int, key: Array
) -> tuple[Array, Array, Array, Array]:
    """Random Fourier features φ(a) = [cos Ω_b a, sin Ω_b a]_b / √D with
    Ω_b ~ N(0, 2 inv_b I) (so φ(a)·φ(b) estimates Σ_b k_b(a, b)): returns
    Σᵢ pᵢ φ(xᵢ), Σⱼ qⱼ φ(yⱼ), Σᵢ pᵢ ‖φ(xᵢ)‖² and Σⱼ qⱼ ‖φ(yⱼ)‖²."""
    shape = (inv.shape[0], x.shape[1], features)
    omega = jax.random.normal(key, shape, x.dtype) * jnp.sqrt(2 * inv)[:, None, None]
    omega = jnp.moveaxis(omega, 0, 1).reshape(x.shape[1], -1)  # [d, B·D]
    scale = 1 / jnp.sqrt(jnp.asarray(features, x.dtype))

    def embed(z: Array, w: Array) -> tuple[Array, Array]:
        proj = jnp.matmul(z, omega, precision=_HIGHEST)
        phi = jnp.concatenate([jnp.cos(proj), jnp.sin(proj)], axis=1) * scale
        return jnp.matmul(w, phi, precision=_HIGHEST), jnp.sum(
            w * jnp.sum(jnp.square(phi), axis=1)
        )

    (sx, nx), (sy, ny) = embed(x, p), embed(y, q)
    return sx, sy, nx, ny
