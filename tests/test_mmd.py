"""Tests for mmd.

References are NumPy float64, written from Gretton et al., A Kernel Two-Sample
Test (JMLR 2012): the full kernel matrices from explicit differences aᵢ − bⱼ
(not the ‖a‖² + ‖b‖² − 2a·b form the library uses), the V-statistic (eq. 5),
the U-statistic (Lemma 6) and the linear-time statistic (Lemma 14); the median
heuristic from scipy.spatial.distance.pdist; gradients from finite differences.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.spatial.distance
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxpenalties as jp
from tests.helpers import assert_grads_match_finite_differences, count_compiles

N, M, D = 7, 5, 3  # most tests: x [7, 3], y [5, 3] (linear: y [7, 3])
ESTIMATORS = ("biased", "unbiased", "linear")


def ref_kernel(a, b, sigmas):
    d2 = np.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)
    return sum(np.exp(-d2 / (2 * s**2)) for s in np.atleast_1d(sigmas))


def ref_mmd(x, y, sigmas, estimator):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n, m = len(x), len(y)
    if estimator == "linear":
        pairs = min(n, m) // 2
        if pairs == 0:
            return 0.0
        x1, x2, y1, y2 = x[0 : 2 * pairs : 2], x[1::2], y[0 : 2 * pairs : 2], y[1::2]
        x2, y2 = x2[:pairs], y2[:pairs]

        def k(a, b):
            d2 = np.sum((a - b) ** 2, axis=1)
            return sum(np.exp(-d2 / (2 * s**2)) for s in np.atleast_1d(sigmas))

        return np.mean(k(x1, x2) + k(y1, y2) - k(x1, y2) - k(x2, y1))
    kxx, kyy, kxy = (ref_kernel(a, b, sigmas) for a, b in ((x, x), (y, y), (x, y)))
    if estimator == "biased":
        return kxx.mean() + kyy.mean() - 2 * kxy.mean()
    return (
        (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
        + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        - 2 * kxy.mean()
    )


def ref_median_sigma(x, y):
    """σ = √(med / 2), med = median of the squared distances of distinct
    pooled pairs."""
    z = np.concatenate([x, y]).astype(np.float64)
    return np.sqrt(np.median(scipy.spatial.distance.pdist(z, "sqeuclidean")) / 2)


def sets(seed=0, n=N, m=M, d=D, shift=0.5):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.normal(size=(m, d)) + shift


@functools.partial(jax.jit, static_argnames=("estimator", "chunk_size"))
def mmd_jit(x, y, bandwidth, x_where=None, y_where=None, *, estimator, chunk_size=None):
    return jp.mmd(
        x,
        y,
        bandwidth=bandwidth,
        estimator=estimator,
        x_where=x_where,
        y_where=y_where,
        chunk_size=chunk_size,
    )


mmd_vg = jax.jit(
    jax.value_and_grad(mmd_jit.__wrapped__, argnums=(0, 1)),
    static_argnames=("estimator", "chunk_size"),
)


# ---------------------------------------------------------------------------
# Values against float64 references
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("sigmas", [0.8, (0.5, 1.0, 4.0)])
def test_values_match_gretton_formulas(estimator, sigmas):
    x, y = sets(m=N if estimator == "linear" else M)
    bandwidth = jnp.asarray(np.atleast_1d(sigmas))
    want = ref_mmd(x, y, sigmas, estimator)
    got = mmd_jit(
        jnp.asarray(x, jnp.float32),
        jnp.asarray(y, jnp.float32),
        bandwidth,
        estimator=estimator,
    )
    assert got.dtype == jnp.float32 and got.shape == ()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    with jax.enable_x64(True):
        got64 = jp.mmd(
            jnp.asarray(x), jnp.asarray(y), bandwidth=sigmas, estimator=estimator
        )
        assert got64.dtype == jnp.float64
        np.testing.assert_allclose(got64, want, rtol=1e-12, atol=1e-14)


def test_hand_worked_value_and_identical_sets():
    # One row each, σ = 1: 1 + 1 − 2e^{−½}.
    x, y = jnp.array([[0.0]]), jnp.array([[1.0]])
    np.testing.assert_allclose(
        jp.mmd(x, y, bandwidth=1.0, estimator="biased"), 2 - 2 * np.exp(-0.5), 1e-6
    )
    # P = Q: the V-statistic is 0 to rounding, the U-statistic equals its
    # reference (negative: the diagonal it leaves out is the kernel's maximum).
    a, _ = sets()
    a = np.concatenate([a, a[:2]])  # repeated rows: distance 0 inside x too
    a32 = jnp.asarray(a, jnp.float32)
    biased = jp.mmd(a32, a32, bandwidth=1.0, estimator="biased")
    assert abs(float(biased)) < 1e-6
    unbiased = jp.mmd(a32, a32, bandwidth=1.0)
    np.testing.assert_allclose(unbiased, ref_mmd(a, a, 1.0, "unbiased"), atol=1e-6)
    for estimator in ESTIMATORS:
        grads = jax.grad(
            lambda p, q, e=estimator: jp.mmd(p, q, bandwidth=1.0, estimator=e),
            argnums=(0, 1),
        )(a32, a32)
        assert all(np.isfinite(g).all() for g in grads)


def test_median_heuristic():
    x, y = sets()
    for estimator in ("biased", "unbiased"):
        want = ref_mmd(x, y, ref_median_sigma(x, y), estimator)
        for bandwidth in ("median", None):
            got = jp.mmd(
                jnp.asarray(x, jnp.float32),
                jnp.asarray(y, jnp.float32),
                bandwidth=bandwidth,
                estimator=estimator,
            )
            np.testing.assert_allclose(got, want, rtol=1e-5)
    # Masked: the median is over the kept rows only.
    xm, ym = np.array([1, 0, 1, 1, 0, 1, 1], bool), np.array([0, 1, 1, 1, 1], bool)
    want = ref_mmd(x[xm], y[ym], ref_median_sigma(x[xm], y[ym]), "unbiased")
    got = jp.mmd(
        jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32), x_where=xm, y_where=ym
    )
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # No gradient through the bandwidth: the same as σ given as a constant.
    x32, y32 = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    g_median = jax.grad(jp.mmd)(x32, y32)
    g_fixed = jax.grad(lambda a: jp.mmd(a, y32, bandwidth=ref_median_sigma(x, y)))(x32)
    np.testing.assert_allclose(g_median, g_fixed, rtol=1e-4, atol=1e-7)


def test_median_heuristic_subsample_beyond_1024_rows():
    # 1,300 kept rows (10 of x masked): the median is over the kept rows
    # ⌊j·1300/1024⌋, j < 1024, of the pooled kept rows (x's first).
    x, y = sets(seed=1, n=710, m=600, d=2)
    keep = np.ones(710, bool)
    keep[::71] = False
    z = np.concatenate([x[keep], y])
    sub = z[np.arange(1024) * len(z) // 1024]
    sigma = np.sqrt(np.median(scipy.spatial.distance.pdist(sub, "sqeuclidean")) / 2)
    want = ref_mmd(x[keep], y, sigma, "biased")
    with jax.enable_x64(True):
        got = jp.mmd(jnp.asarray(x), jnp.asarray(y), estimator="biased", x_where=keep)
        np.testing.assert_allclose(got, want, rtol=1e-10)


# ---------------------------------------------------------------------------
# Masks, padding, NaN
# ---------------------------------------------------------------------------

X_KEEP = np.array([1, 1, 0, 1, 1, 0, 1], bool)
Y_KEEP = np.array([1, 0, 1, 1, 1], bool)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_masks_equal_dropping_rows_and_nan_rows_do_not_leak(estimator):
    m = N if estimator == "linear" else M
    x, y = sets(m=m)
    y_keep = X_KEEP[::-1].copy() if estimator == "linear" else Y_KEEP
    want = ref_mmd(x[X_KEEP], y[y_keep], (0.7, 2.0), estimator)
    x_nan, y_nan = x.copy(), y.copy()
    x_nan[~X_KEEP], y_nan[~y_keep] = np.nan, np.inf
    bw = jnp.asarray([0.7, 2.0])
    x32, y32 = jnp.asarray(x_nan, jnp.float32), jnp.asarray(y_nan, jnp.float32)

    value, (gx, gy) = mmd_vg(
        x32, y32, bw, X_KEEP, y_keep.astype(np.int32), estimator=estimator
    )
    np.testing.assert_allclose(value, want, rtol=1e-5, atol=1e-6)
    assert np.isfinite(gx).all() and np.isfinite(gy).all()
    assert not gx[~X_KEEP].any() and not gy[~y_keep].any()
    # The kept rows' gradients are those of the dropped problem.
    _, (gx_drop, gy_drop) = mmd_vg(x32[X_KEEP], y32[y_keep], bw, estimator=estimator)
    np.testing.assert_allclose(gx[X_KEEP], gx_drop, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(gy[y_keep], gy_drop, rtol=1e-4, atol=1e-6)


@settings(max_examples=10, deadline=None)
@given(
    x_keep=st.lists(st.booleans(), min_size=N, max_size=N),
    y_keep=st.lists(st.booleans(), min_size=M, max_size=M),
)
def test_property_any_mask_equals_dropping_rows(x_keep, y_keep):
    x, y = sets(seed=2)
    xk, yk = np.array(x_keep), np.array(y_keep)
    got = mmd_jit(
        jnp.asarray(x, jnp.float32),
        jnp.asarray(y, jnp.float32),
        jnp.asarray([1.5]),
        xk,
        yk,
        estimator="unbiased",
    )
    if xk.sum() < 2 or yk.sum() < 2:
        assert got == 0.0  # too few kept rows: 0, documented
    else:
        want = ref_mmd(x[xk], y[yk], 1.5, "unbiased")
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_leading_axes_are_rows_and_too_few_rows_give_zero():
    x, y = sets(n=8, m=6)
    x3, y3 = x.reshape(2, 4, D), y.reshape(2, 3, D)
    xk = np.array([[1, 1, 0, 1], [0, 1, 1, 1]], bool)
    want = ref_mmd(x[xk.ravel()], y, 1.0, "unbiased")
    got = jp.mmd(
        jnp.asarray(x3, jnp.float32),
        jnp.asarray(y3, jnp.float32),
        bandwidth=1.0,
        x_where=xk,
    )
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # One kept row in x: no U-statistic; 0 with a zero, finite gradient.
    one = np.zeros(N, bool)
    one[3] = True
    x32, y32 = (jnp.asarray(a, jnp.float32) for a in sets())
    for estimator, where in (("unbiased", one), ("biased", np.zeros(N, bool))):
        value, g = jax.value_and_grad(
            lambda a, e=estimator, w=where: jp.mmd(
                a, y32, bandwidth=1.0, estimator=e, x_where=w
            )
        )(x32)
        assert value == 0.0 and not np.asarray(g).any()


# ---------------------------------------------------------------------------
# Gradients, chunking, dtypes, bandwidths
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_gradients_match_finite_differences(estimator):
    x, y = sets(m=N if estimator == "linear" else M)
    with jax.enable_x64(True):

        def f(a, b, sigma):  # chunks of 3 rows: 7 = 3 + 3 + a shifted last block
            return jp.mmd(
                a, b, bandwidth=sigma, estimator=estimator, chunk_size=3, x_where=X_KEEP
            )

        args = (jnp.asarray(x), jnp.asarray(y), jnp.asarray([0.9, 2.5]))
        assert_grads_match_finite_differences(f, args, 1e-6)


@pytest.mark.parametrize("estimator, chunks", [("unbiased", (1, 3)), ("biased", (2,))])
def test_chunked_equals_unchunked(estimator, chunks):
    x, y = (jnp.asarray(a, jnp.float32) for a in sets())
    bw = jnp.asarray([0.6, 1.7])
    want, (wx, wy) = mmd_vg(x, y, bw, estimator=estimator)
    for chunk in chunks:
        got, (gx, gy) = mmd_vg(x, y, bw, estimator=estimator, chunk_size=chunk)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(gx, wx, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(gy, wy, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_are_computed_in_float32(dtype):
    x, y = (jnp.asarray(a, dtype) for a in sets())
    value = jp.mmd(x, y, bandwidth=1.0)
    assert value.dtype == jnp.float32
    want = jp.mmd(x.astype(jnp.float32), y.astype(jnp.float32), bandwidth=1.0)
    np.testing.assert_allclose(value, want, rtol=1e-6)
    gx, gy = jax.grad(lambda a, b: jp.mmd(a, b, bandwidth=1.0), argnums=(0, 1))(x, y)
    assert gx.dtype == dtype and gy.dtype == dtype
    assert np.isfinite(np.asarray(gx, np.float32)).all()


def test_traced_bandwidth_does_not_recompile_and_nonpositive_gives_nan():
    x, y = (jnp.asarray(a, jnp.float32) for a in sets())
    f = jax.jit(lambda a, b, s: jp.mmd(a, b, bandwidth=s))
    jax.block_until_ready((f(x, y, 1.0), jp.mmd(x, y, bandwidth=1.0)))
    with count_compiles() as compiles:
        np.testing.assert_allclose(
            f(x, y, 2.0), ref_mmd(sets()[0], sets()[1], 2.0, "unbiased"), rtol=1e-5
        )
        jax.block_until_ready(jp.mmd(x, y, bandwidth=3.0))
        for bad in (0.0, -1.0):
            assert np.isnan(f(x, y, bad))
        assert compiles() == 0
    g = jax.jit(lambda a, b, s: jp.mmd(a, b, bandwidth=s))
    assert np.isnan(g(x, y, jnp.asarray([1.0, 0.0])))
    # σ can be learnt: its gradient (through the kernel sums' VJP) is finite.
    gs = jax.grad(lambda s: jp.mmd(x, y, bandwidth=s))(jnp.asarray(1.5))
    assert np.isfinite(gs)


# ---------------------------------------------------------------------------
# Random Fourier features
# ---------------------------------------------------------------------------


def test_random_fourier_features_estimate_the_kernel():
    x, y = sets(n=40, m=30, shift=1.0)
    x32, y32 = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    key = jax.random.key(0)
    for estimator in ("biased", "unbiased"):
        want = ref_mmd(x, y, (1.0, 3.0), estimator)
        rff = jp.mmd(
            x32, y32, bandwidth=[1.0, 3.0], estimator=estimator, features=4096, key=key
        )
        np.testing.assert_allclose(rff, want, atol=0.03)
    # Same key, same value; gradients finite.
    f = jax.value_and_grad(
        lambda a: jp.mmd(a, y32, bandwidth="median", features=256, key=key)
    )
    (v1, g1), (v2, _) = f(x32), f(x32)
    assert v1 == v2 and np.isfinite(g1).all()


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_bad_input_is_named():
    x, y = jnp.ones((4, 3)), jnp.ones((5, 3))
    with pytest.raises(ValueError, match=r"`x` and `y`.*\(4, 3\) and \(5, 2\)"):
        jp.mmd(x, jnp.ones((5, 2)))
    with pytest.raises(TypeError, match="`x`.*floating"):
        jp.mmd(jnp.ones((4, 3), jnp.int32), y)
    with pytest.raises(ValueError, match="`y`.*at least one row"):
        jp.mmd(x, jnp.ones((3,)))
    with pytest.raises(ValueError, match="`x`.*at least one row"):
        jp.mmd(jnp.ones((0, 3)), y)
    for bad in (0.0, -1.0, float("inf"), [1.0, 0.0], np.array([2.0, -1.0]), []):
        with pytest.raises(ValueError, match="`bandwidth`"):
            jp.mmd(x, y, bandwidth=bad)
    for bad in ("mean", np.ones((2, 2)), {"s": 1.0}):
        with pytest.raises(ValueError, match="`bandwidth`"):
            jp.mmd(x, y, bandwidth=bad)
    with pytest.raises(ValueError, match="`estimator`.*'quadratic'"):
        jp.mmd(x, y, estimator="quadratic")
    with pytest.raises(ValueError, match="`kernel`"):
        jp.mmd(x, y, kernel="laplace")
    with pytest.raises(ValueError, match="as many rows.*linear"):
        jp.mmd(x, y, estimator="linear")
    with pytest.raises(ValueError, match="`chunk_size`"):
        jp.mmd(x, y, chunk_size=0)
    with pytest.raises(ValueError, match="`key`"):
        jp.mmd(x, y, features=8)
    with pytest.raises(ValueError, match="`key`"):
        jp.mmd(x, y, key=jax.random.key(0))
    with pytest.raises(TypeError, match="`key`"):
        jp.mmd(x, y, features=8, key=0)
    with pytest.raises(ValueError, match="`features`.*linear"):
        jp.mmd(x, x, features=8, key=jax.random.key(0), estimator="linear")
    with pytest.raises(ValueError, match="`y_where`.*\\(5,\\)"):
        jp.mmd(x, y, y_where=jnp.ones(4, bool))
    with pytest.raises(TypeError, match="`estimator`.*static"):
        jax.jit(lambda e: jp.mmd(x, y, estimator=e))(jnp.ones(()))


# ---------------------------------------------------------------------------
# In a training loss; in bounded memory
# ---------------------------------------------------------------------------


def test_penalty_in_regularize_pulls_the_student_towards_the_teacher():
    rng = np.random.default_rng(3)
    inputs = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
    teacher = jnp.asarray(rng.normal(size=(16, 3)) + 2.0, jnp.float32)

    def loss_fn(params, batch):
        hidden = batch["x"] @ params["w"] + params["b"][None, :]
        return jnp.mean(jnp.square(params["w"])), {"student_hidden": hidden}

    penalty = jp.Penalty(
        jp.mmd,
        inputs=("student_hidden", "teacher_hidden"),
        kwargs={"bandwidth": "median"},
        weight=1.0,
    )
    f = jp.regularize(loss_fn, [penalty])
    params = {"w": jnp.zeros((4, 3)), "b": jnp.zeros(3)}
    batch = {"x": inputs, "teacher_hidden": teacher}
    total, aux = f(params, batch)
    value = jp.mmd(inputs @ params["w"] + params["b"][None, :], teacher)
    np.testing.assert_allclose(aux["penalties"]["mmd"]["value"], value, rtol=1e-6)
    np.testing.assert_allclose(total, loss_fn(params, batch)[0] + value, rtol=1e-6)

    @jax.jit
    def step(params):
        (_, aux), grads = jax.value_and_grad(f, has_aux=True)(params, batch)
        new = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
        return new, aux["penalties"]["mmd"]["value"]

    first = None
    for _ in range(30):
        params, value = step(params)
        first = value if first is None else first
    assert value < 0.2 * first


@pytest.mark.parametrize("grad", [False, True])
def test_65536_rows_of_width_4096_compile_in_bounded_memory(grad):
    # Compiled, not run: the n×m float32 kernel matrix alone would be 16 GiB.
    spec = jax.ShapeDtypeStruct((65536, 4096), jnp.float32)

    def f(x, y):
        return jp.mmd(x, y, bandwidth=[1.0, 4.0])

    fn = jax.value_and_grad(f, argnums=(0, 1)) if grad else f
    stats = jax.jit(fn).lower(spec, spec).compile().memory_analysis()
    assert stats.temp_size_in_bytes < 2**30  # measured 0.45 GiB on CPU
