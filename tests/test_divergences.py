"""Tests for kl_divergence, js_divergence and entropy.

References are computed independently in NumPy/SciPy float64
(`scipy.special.rel_entr`, `scipy.spatial.distance.jensenshannon`,
`scipy.stats.entropy`) or by hand, never by the code under test.
"""

import functools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.spatial.distance
import scipy.special
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxpenalties as jp
from tests.helpers import (
    assert_grads_match_finite_differences,
    count_compiles,
    log_softmax32,
    np_log,
    ref_js,
    ref_kl,
)

LOG2 = np.log(2.0)


def random_probs(rng, shape, zero_frac=0.0):
    """Random distributions along the last axis, with ~zero_frac exact zeros."""
    x = rng.gamma(0.5, size=shape)
    if zero_frac:
        x = np.where(rng.random(shape) < zero_frac, 0.0, x)
        x[..., 0] = np.maximum(x[..., 0], 0.1)  # keep every row a distribution
    return x / x.sum(-1, keepdims=True)


# ---------------------------------------------------------------------------
# Values against SciPy
# ---------------------------------------------------------------------------


class TestValues:
    def setup_method(self):
        rng = np.random.default_rng(0)
        self.p = random_probs(rng, (6, 5, 33), zero_frac=0.3)
        # q has full support wherever p does, plus zeros of its own elsewhere.
        q = random_probs(rng, (6, 5, 33), zero_frac=0.3)
        q = np.where(self.p > 0, np.maximum(q, 1e-3), q)
        self.q = q / q.sum(-1, keepdims=True)
        self.lp, self.lq = np_log(self.p), np_log(self.q)

    def test_forward_matches_rel_entr(self):
        got = jp.kl_divergence(self.lp, self.lq, reduction="none")
        np.testing.assert_allclose(got, ref_kl(self.p, self.q), rtol=2e-5, atol=1e-6)
        mean = jp.kl_divergence(self.lp, self.lq)
        np.testing.assert_allclose(mean, ref_kl(self.p, self.q).mean(), rtol=2e-5)
        total = jp.kl_divergence(self.lp, self.lq, reduction="sum")
        np.testing.assert_allclose(total, ref_kl(self.p, self.q).sum(), rtol=2e-5)

    def test_reverse_and_symmetric_match_rel_entr(self):
        # Q has zeros where P has mass, so KL(Q‖P) may be inf: use full support.
        q = np.where(self.q > 0, self.q, 0.0)
        p = np.where(q > 0, np.maximum(self.p, 1e-3), self.p)
        p = p / p.sum(-1, keepdims=True)
        lp = np_log(p)
        lq = np_log(q)
        rev = jp.kl_divergence(lp, lq, direction="reverse", reduction="none")
        np.testing.assert_allclose(rev, ref_kl(q, p), rtol=2e-5, atol=1e-6)
        sym = jp.kl_divergence(lp, lq, symmetric=True, reduction="none")
        expected = 0.5 * (ref_kl(p, q) + ref_kl(q, p))
        np.testing.assert_allclose(sym, expected, rtol=2e-5, atol=1e-6)

    def test_js_matches_scipy_jensenshannon(self):
        got = jp.js_divergence(self.lp, self.lq, reduction="none")
        # SciPy returns the JS *distance* sqrt(JS) (natural log by default).
        dist = scipy.spatial.distance.jensenshannon(self.p, self.q, axis=-1)
        np.testing.assert_allclose(got, dist**2, rtol=2e-5, atol=1e-6)

    @pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
    def test_generalised_js(self, beta):
        got = jp.js_divergence(self.lp, self.lq, beta=beta, reduction="none")
        np.testing.assert_allclose(
            got, ref_js(self.p, self.q, beta), rtol=2e-5, atol=1e-6
        )

    def test_entropy_matches_scipy(self):
        h = scipy.stats.entropy(self.p, axis=-1)
        pen = jp.entropy(self.lp, mode="penalty", reduction="none")
        np.testing.assert_allclose(pen, h, rtol=2e-5, atol=1e-6)
        bonus = jp.entropy(self.lp, reduction="none")  # default mode="bonus": −H
        np.testing.assert_allclose(bonus, -h, rtol=2e-5, atol=1e-6)
        norm = jp.entropy(self.lp, mode="penalty", normalize=True, reduction="none")
        np.testing.assert_allclose(norm, h / np.log(33), rtol=2e-5, atol=1e-6)

    @pytest.mark.parametrize("temperature", [0.5, 2.0])
    def test_temperature_renormalises(self, temperature):
        rng = np.random.default_rng(1)
        x, y = rng.normal(size=(2, 4, 17)) * 3
        p = scipy.special.softmax(x / temperature, axis=-1)
        q = scipy.special.softmax(y / temperature, axis=-1)
        got = jp.kl_divergence(x, y, temperature=temperature, reduction="none")
        np.testing.assert_allclose(got, ref_kl(p, q), rtol=2e-5, atol=1e-6)
        got = jp.js_divergence(x, y, temperature=temperature, reduction="none")
        np.testing.assert_allclose(got, ref_js(p, q), rtol=2e-5, atol=1e-6)
        got = jp.entropy(x, temperature=temperature, mode="penalty", reduction="none")
        np.testing.assert_allclose(got, scipy.stats.entropy(p, axis=-1), rtol=2e-5)
        # A traced temperature gives the same value.
        traced = jax.jit(lambda t: jp.kl_divergence(x, y, temperature=t))(temperature)
        np.testing.assert_allclose(traced, ref_kl(p, q).mean(), rtol=2e-5)

    def test_hand_worked(self):
        # KL([½, ½] ‖ [¼, ¾]) = ½ log 2 + ½ log(2/3)
        p = jnp.log(jnp.array([0.5, 0.5]))
        q = jnp.log(jnp.array([0.25, 0.75]))
        expected = 0.5 * np.log(2) + 0.5 * np.log(2 / 3)
        np.testing.assert_allclose(jp.kl_divergence(p, q), expected, rtol=1e-6)


# ---------------------------------------------------------------------------
# Exactness: no clamps, 0 log 0 = 0, +inf where the truth is +inf
# ---------------------------------------------------------------------------


class TestExactness:
    def test_log_ratio_of_150_nats(self):
        # P = δ₀, Q = [e^-150, 1 − e^-150]: KL(P‖Q) = 0 − (−150) = 150 exactly.
        p = jnp.array([0.0, -jnp.inf])
        q = jnp.array([-150.0, 0.0])
        np.testing.assert_allclose(jp.kl_divergence(p, q), 150.0, rtol=1e-7)

    def test_zero_times_log_zero(self):
        p = jnp.log(jnp.array([0.5, 0.5, 0.0]))
        q = jnp.log(jnp.array([0.5, 0.5, 0.0]))
        for fn in (
            jp.kl_divergence,
            functools.partial(jp.kl_divergence, direction="reverse"),
            functools.partial(jp.kl_divergence, symmetric=True),
            jp.js_divergence,
        ):
            assert fn(p, q) == 0.0
        np.testing.assert_allclose(jp.entropy(p, mode="penalty"), LOG2, rtol=1e-6)

    def test_infinite_where_q_has_no_mass(self):
        p = jnp.log(jnp.array([0.5, 0.5]))
        q = jnp.log(jnp.array([1.0, 0.0]))
        assert jp.kl_divergence(p, q) == jnp.inf
        assert jp.kl_divergence(p, q, symmetric=True) == jnp.inf
        np.testing.assert_allclose(
            jp.kl_divergence(p, q, direction="reverse"), np.log(2), rtol=1e-6
        )
        # JS is always finite.
        np.testing.assert_allclose(
            jp.js_divergence(p, q),
            ref_js(np.array([0.5, 0.5]), np.array([1.0, 0])),
            rtol=1e-6,
        )

    def test_infinite_even_when_p_underflows(self):
        # p = e^-200 > 0 underflows in float32, but q = 0 there: KL is +inf.
        p = jnp.array([0.0, -200.0])
        q = jnp.array([0.0, -jnp.inf])
        assert jp.kl_divergence(p, q) == jnp.inf
        assert jp.kl_divergence(p, q, symmetric=True) == jnp.inf

    def test_extreme_logits(self):
        rng = np.random.default_rng(2)
        x = rng.uniform(-1e4, 1e4, size=(3, 50))
        y = rng.uniform(-1e4, 1e4, size=(3, 50))
        lp = scipy.special.log_softmax(x, axis=-1)
        lq = scipy.special.log_softmax(y, axis=-1)
        # float64 reference with the same conventions.
        p = np.exp(lp)
        expected = np.sum(np.where(p > 0, p * (lp - lq), 0.0), -1)

        def f(a, b):
            return jp.kl_divergence(
                jax.nn.log_softmax(a), jax.nn.log_softmax(b), reduction="sum"
            )

        np.testing.assert_allclose(
            f(x.astype(np.float32), y.astype(np.float32)), expected.sum(), rtol=1e-4
        )
        grads = jax.grad(f, argnums=(0, 1))(x.astype(np.float32), y.astype(np.float32))
        assert all(np.isfinite(g).all() for g in grads)
        x32, y32 = x.astype(np.float32), y.astype(np.float32)
        g_js = jax.grad(
            lambda a: jp.js_divergence(jax.nn.log_softmax(a), jax.nn.log_softmax(y32))
        )(x32)
        g_h = jax.grad(lambda a: jp.entropy(jax.nn.log_softmax(a)))(x32)
        assert np.isfinite(g_js).all() and np.isfinite(g_h).all()


# ---------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------

ALL_DIVERGENCES = {
    "forward": jp.kl_divergence,
    "reverse": functools.partial(jp.kl_divergence, direction="reverse"),
    "symmetric": functools.partial(jp.kl_divergence, symmetric=True),
    "js": jp.js_divergence,
    "js_0.2": functools.partial(jp.js_divergence, beta=0.2),
    "forward_T2": functools.partial(jp.kl_divergence, temperature=2.0),
    "js_T0.5": functools.partial(jp.js_divergence, temperature=0.5),
}


def _logits_with_neg_inf(rng, shape, shared_col, own_col):
    x = rng.normal(size=shape)
    x[..., shared_col] = -np.inf
    x[..., own_col] = -np.inf
    return x


@pytest.mark.parametrize("name", sorted(ALL_DIVERGENCES))
def test_gradients_match_finite_differences_with_neg_inf(name):
    """−inf in both inputs at a shared entry; −inf in P only where Q has mass
    (forward KL finite). Gradient by finite differences in float64."""
    fn = ALL_DIVERGENCES[name]
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        x = _logits_with_neg_inf(rng, (3, 7), shared_col=2, own_col=4)
        y = rng.normal(size=(3, 7))
        y[..., 2] = -np.inf
        if name in ("reverse", "symmetric"):
            x, y = y, x  # keep the value finite: zeros of the reversed side
        a = jnp.asarray(jax.nn.log_softmax(jnp.asarray(x)))
        b = jnp.asarray(jax.nn.log_softmax(jnp.asarray(y)))
        if name == "symmetric":
            # Symmetric KL is finite only when the supports agree.
            a = a.at[..., 4].set(-jnp.inf)
            b = b.at[..., 4].set(-jnp.inf)
            a = jax.nn.log_softmax(a)
            b = jax.nn.log_softmax(b)
        value = fn(a, b)
        assert np.isfinite(value)
        g = jax.grad(fn, argnums=(0, 1))(a, b)
        assert all(np.isfinite(gi).all() for gi in g)
        assert_grads_match_finite_differences(fn, (a, b), 1e-5)


def test_entropy_gradient_with_neg_inf():
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        x = rng.normal(size=(4, 9))
        x[:, 3] = -np.inf
        a = jax.nn.log_softmax(jnp.asarray(x))
        for mode in ("bonus", "penalty"):
            fn = functools.partial(jp.entropy, mode=mode)
            assert np.isfinite(jax.grad(fn)(a)).all()
            assert_grads_match_finite_differences(fn, (a,), 1e-5)
        fn = functools.partial(jp.entropy, temperature=1.7, normalize=True)
        assert_grads_match_finite_differences(fn, (a,), 1e-5)


def test_gradient_through_log_softmax_matches_numpy_closed_form():
    # d KL(P‖Q)/d logits_p = p ⊙ (log p − log q − KL) (closed form, float64).
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(2, 11))
    with jax.enable_x64(True):
        g = jax.grad(
            lambda u: jp.kl_divergence(jax.nn.log_softmax(u), jax.nn.log_softmax(y))
        )(jnp.asarray(x))
    lp = scipy.special.log_softmax(x)
    lq = scipy.special.log_softmax(y)
    p = np.exp(lp)
    kl = np.sum(p * (lp - lq))
    np.testing.assert_allclose(g, p * (lp - lq - kl), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------
# where, reductions, axis, dtypes
# ---------------------------------------------------------------------------

POSITIONWISE = {
    "kl": jp.kl_divergence,
    "kl_sym": functools.partial(jp.kl_divergence, symmetric=True),
    "js": jp.js_divergence,
    "entropy": lambda p, q, **kw: jp.entropy(p, **kw),
}


@pytest.mark.parametrize("name", sorted(POSITIONWISE))
def test_where_masks_garbage_and_equals_boolean_indexing(name):
    fn = POSITIONWISE[name]
    rng = np.random.default_rng(6)
    p = np_log(random_probs(rng, (4, 6, 9)))
    q = np_log(random_probs(rng, (4, 6, 9)))
    mask = rng.random((4, 6)) < 0.5
    mask[0, 0] = True
    p_bad = np.where(mask[..., None], p, np.nan)
    q_bad = np.where(mask[..., None], q, -np.inf)
    for reduction in ("mean", "sum"):
        got = fn(p_bad, q_bad, reduction=reduction, where=mask)
        expected = fn(p[mask], q[mask], reduction=reduction)
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    none = fn(p_bad, q_bad, reduction="none", where=mask)
    assert none.shape == (4, 6)
    assert np.all(np.asarray(none)[~mask] == 0.0)
    grads = jax.grad(lambda a, b: fn(a, b, where=mask), argnums=(0, 1))(p_bad, q_bad)
    ref = jax.grad(lambda a, b: fn(a, b, where=mask), argnums=(0, 1))(p, q)
    for g, r in zip(grads, ref, strict=True):
        assert np.isfinite(g).all()
        assert np.all(np.asarray(g)[~mask] == 0.0)
        np.testing.assert_allclose(g, r, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(POSITIONWISE))
def test_fully_masked_batch_is_zero_with_zero_gradient(name):
    fn = POSITIONWISE[name]
    p = jnp.full((3, 5), jnp.nan)
    mask = jnp.zeros((3,), bool)
    assert fn(p, p, where=mask) == 0.0
    assert fn(p, p, where=mask, reduction="sum") == 0.0
    g = jax.grad(lambda a: fn(a, a, where=mask))(p)
    assert np.all(np.asarray(g) == 0.0)


def test_where_broadcasts_over_positions():
    rng = np.random.default_rng(7)
    p = np_log(random_probs(rng, (2, 3, 5)))
    q = np_log(random_probs(rng, (2, 3, 5)))
    per_seq = np.array([True, False, True])  # broadcast over the batch axis
    got = jp.kl_divergence(p, q, where=per_seq)
    expected = jp.kl_divergence(p[:, per_seq], q[:, per_seq])
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_axis_equals_moveaxis():
    rng = np.random.default_rng(8)
    p = np_log(random_probs(rng, (3, 4, 5)))
    q = np_log(random_probs(rng, (3, 4, 5)))
    for axis in (0, 1, -2):
        pm, qm = np.moveaxis(p, -1, axis), np.moveaxis(q, -1, axis)
        for fn in POSITIONWISE.values():
            got = fn(pm, qm, axis=axis, reduction="none")
            np.testing.assert_allclose(got, fn(p, q, reduction="none"), rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs_computed_in_float32(dtype):
    rng = np.random.default_rng(9)
    p = jnp.asarray(np_log(random_probs(rng, (8, 64), 0.2)), dtype)
    q = jnp.asarray(np_log(random_probs(rng, (8, 64))), dtype)
    for name, fn in POSITIONWISE.items():
        got = fn(p, q)
        assert got.dtype == jnp.float32, name
        # Same as computing in float32 on the (already rounded) inputs.
        ref = fn(p.astype(jnp.float32), q.astype(jnp.float32))
        np.testing.assert_allclose(got, ref, rtol=1e-6)
        g = jax.grad(lambda a, fn=fn: fn(a, q))(p)
        assert g.dtype == dtype and np.isfinite(np.asarray(g, np.float32)).all()


def test_float64_inputs_give_float64_under_x64():
    rng = np.random.default_rng(10)
    p, q = (random_probs(rng, (3, 6)) for _ in range(2))
    with jax.enable_x64(True):
        got = jp.kl_divergence(np.log(p), np.log(q), reduction="none")
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, ref_kl(p, q), rtol=1e-13)


def test_vmap_equals_batch():
    rng = np.random.default_rng(11)
    p = np_log(random_probs(rng, (5, 4, 7)))
    q = np_log(random_probs(rng, (5, 4, 7)))
    for fn in POSITIONWISE.values():
        batched = fn(p, q, reduction="none")
        mapped = jax.vmap(lambda a, b, fn=fn: fn(a, b, reduction="none"))(p, q)
        np.testing.assert_allclose(mapped, batched, rtol=1e-6)


def test_temperature_and_beta_changes_do_not_recompile():
    rng = np.random.default_rng(12)
    p, q = log_softmax32(rng.normal(size=(2, 3, 8)))
    jp.kl_divergence(p, q, temperature=2.0)
    jp.js_divergence(p, q, beta=0.3)
    with count_compiles() as compiles:
        jp.kl_divergence(p, q, temperature=3.0)
        jp.kl_divergence(p, q, temperature=0.7)
        jp.js_divergence(p, q, beta=0.6)
        jp.js_divergence(p, q, beta=0.1, temperature=2.5)
        assert compiles() == 1  # only the js call that adds a temperature
        # A new static option does compile (the counter is live).
        jp.kl_divergence(p, q, temperature=3.0, reduction="sum")
        assert compiles() == 2


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class TestErrors:
    p = jnp.zeros((2, 3))

    def test_unknown_option_values(self):
        with pytest.raises(
            ValueError, match="`direction`.*'forward', 'reverse'.*'sideways'"
        ):
            jp.kl_divergence(self.p, self.p, direction="sideways")
        with pytest.raises(ValueError, match="`reduction`.*'avg'"):
            jp.js_divergence(self.p, self.p, reduction="avg")
        with pytest.raises(ValueError, match="`mode`.*'bonus'.*'reward'"):
            jp.entropy(self.p, mode="reward")
        with pytest.raises(ValueError, match="`symmetric`.*Python bool"):
            jp.kl_divergence(self.p, self.p, symmetric="yes")

    def test_shape_mismatch_names_both_shapes(self):
        with pytest.raises(ValueError, match=r"\(2, 3\) and \(2, 4\)"):
            jp.kl_divergence(self.p, jnp.zeros((2, 4)))
        with pytest.raises(ValueError, match=r"\(2, 3\) and \(1, 3\)"):
            jp.js_divergence(self.p, jnp.zeros((1, 3)))

    def test_beta_outside_open_interval(self):
        for beta in (0.0, 1.0, -0.1, 1.5):
            with pytest.raises(ValueError, match="`beta`.*open interval"):
                jp.js_divergence(self.p, self.p, beta=beta)

    def test_traced_static_option_is_a_type_error(self):
        with pytest.raises(TypeError, match="`symmetric` must be a static Python"):
            jax.jit(lambda s: jp.kl_divergence(self.p, self.p, symmetric=s))(True)
        with pytest.raises(TypeError, match="`beta` must be a static Python"):
            jax.jit(lambda b: jp.js_divergence(self.p, self.p, beta=b))(0.5)

    def test_bad_where(self):
        with pytest.raises(ValueError, match=r"`where`.*\(2,\).*\(3,\)"):
            jp.kl_divergence(self.p, self.p, where=jnp.ones(3, bool))
        with pytest.raises(TypeError, match="`where`.*boolean or numeric"):
            jp.kl_divergence(self.p, self.p, where=jnp.ones(2, jnp.complex64))

    def test_numeric_where_means_nonzero_is_kept(self):
        # TRL's int completion_mask works as is; a float mask too.
        p = jax.nn.log_softmax(jnp.arange(12.0).reshape(2, 2, 3))
        q = jax.nn.log_softmax(jnp.arange(12.0)[::-1].reshape(2, 2, 3))
        mask = jnp.array([[1, 0], [0, 2]])
        want = jp.kl_divergence(p, q, where=mask != 0)
        for m in (mask, mask.astype(jnp.float32), mask.astype(jnp.uint8)):
            np.testing.assert_array_equal(jp.kl_divergence(p, q, where=m), want)
            np.testing.assert_array_equal(
                jp.kl_estimate(p[..., 0], q[..., 0], where=m),
                jp.kl_estimate(p[..., 0], q[..., 0], where=mask != 0),
            )

    def test_bad_axis_and_inputs(self):
        with pytest.raises(ValueError, match="`axis`"):
            jp.kl_divergence(self.p, self.p, axis=2)
        with pytest.raises(TypeError, match="`p_logprobs`.*floating"):
            jp.kl_divergence(jnp.zeros(3, int), jnp.zeros(3))
        with pytest.raises(ValueError, match="`temperature`.*> 0"):
            jp.kl_divergence(self.p, self.p, temperature=0.0)
        with pytest.raises(ValueError, match="normalize"):
            jp.entropy(jnp.zeros((2, 1)), normalize=True)


# ---------------------------------------------------------------------------
# Properties (hypothesis): few shapes, many values
# ---------------------------------------------------------------------------

LOGITS = hnp.arrays(
    np.float64,
    (3, 6),
    elements=st.floats(-20, 20, allow_nan=False, allow_subnormal=False),
)
MASKS = hnp.arrays(np.bool_, (3, 6))
PROPS = settings(max_examples=40, deadline=None)


def _with_zeros(x, m):
    # -inf logits (zero probabilities) where m is True, keeping one entry per row.
    m = m.copy()
    m[:, 0] = False
    return np.where(m, -np.inf, x)


@PROPS
@given(LOGITS, LOGITS, MASKS)
def test_kl_nonnegative_and_zero_iff_equal(x, y, m):
    a = log_softmax32(_with_zeros(x, m))
    b = log_softmax32(y)
    kl = np.asarray(jp.kl_divergence(a, b, reduction="none"))
    assert np.all(kl >= -1e-6)
    np.testing.assert_array_equal(jp.kl_divergence(a, a, reduction="none"), 0.0)
    # Strictly positive where the distributions differ noticeably.
    diff = np.abs(np.exp(a) - np.exp(b)).sum(-1)
    assert np.all(kl[diff > 1e-2] > 0)


@PROPS
@given(LOGITS, LOGITS, MASKS, MASKS)
def test_js_bounded_by_log2(x, y, m1, m2):
    a, b = log_softmax32(_with_zeros(x, m1)), log_softmax32(_with_zeros(y, m2))
    js = np.asarray(jp.js_divergence(a, b, reduction="none"))
    assert np.all(js >= -1e-6) and np.all(js <= LOG2 + 1e-6)
    np.testing.assert_allclose(
        js,
        ref_js(np.exp(a.astype(np.float64)), np.exp(b.astype(np.float64))),
        atol=2e-6,
    )


@PROPS
@given(LOGITS, LOGITS)
def test_symmetric_is_mean_of_directions_and_reverse_is_swapped(x, y):
    a, b = log_softmax32(x), log_softmax32(y)
    fwd = jp.kl_divergence(a, b, reduction="none")
    rev = jp.kl_divergence(a, b, direction="reverse", reduction="none")
    sym = jp.kl_divergence(a, b, symmetric=True, reduction="none")
    swapped = jp.kl_divergence(b, a, reduction="none")
    np.testing.assert_array_equal(rev, swapped)
    np.testing.assert_allclose(sym, 0.5 * (fwd + rev), rtol=1e-5, atol=1e-5)


@PROPS
@given(LOGITS, LOGITS, MASKS)
def test_where_equals_boolean_indexing_property(x, y, m):
    a, b = log_softmax32(x), log_softmax32(y)
    mask = m[:, 0]
    got = jp.kl_divergence(a, b, where=mask, symmetric=True)
    expected = jp.kl_divergence(a[mask], b[mask], symmetric=True) if mask.any() else 0.0
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@PROPS
@given(LOGITS, LOGITS)
def test_jit_equals_no_jit(x, y):
    a, b = log_softmax32(x), log_softmax32(y)
    for fn in POSITIONWISE.values():
        jitted = fn(a, b, reduction="none")
        with jax.disable_jit():
            eager = fn(a, b, reduction="none")
        np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("t", [1.0, 0.5])
def test_from_logits_equals_log_softmax_inputs_in_value_and_gradient(t):
    rng = np.random.default_rng(3)
    x = jnp.asarray(5 * rng.normal(size=(3, 9)), jnp.float32)
    y = jnp.asarray(5 * rng.normal(size=(3, 9)), jnp.float32)
    ls = jax.nn.log_softmax
    pairs = [
        (
            lambda x, y: jp.kl_divergence(x, y, from_logits=True, temperature=t),
            lambda x, y: jp.kl_divergence(ls(x / t), ls(y / t)),
        ),
        (
            lambda x, y: jp.js_divergence(x, y, from_logits=True, temperature=t),
            lambda x, y: jp.js_divergence(ls(x / t), ls(y / t)),
        ),
        (
            lambda x, y: jp.entropy(x, from_logits=True, temperature=t),
            lambda x, y: jp.entropy(ls(x / t)),
        ),
    ]
    for ours, ref in pairs:
        np.testing.assert_allclose(ours(x, y), ref(x, y), rtol=1e-5, atol=1e-6)
        for g, e in zip(
            jax.grad(ours, (0, 1))(x, y), jax.grad(ref, (0, 1))(x, y), strict=True
        ):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------
# Non-finite in, non-finite out
# ---------------------------------------------------------------------------

_X = jnp.array([[1.0, 2.0, 0.5, -1.0], [0.0, 0.3, 0.2, 0.1]])
_Y = jnp.array([[0.3, 2.0, 0.1, 0.0], [1.0, -0.3, 0.2, 0.4]])


def _tempered_paths():
    sg = jax.lax.stop_gradient
    h = jnp.eye(2, 3)  # hidden states [2, 3] for the fused heads
    w = jnp.arange(12.0).reshape(3, 4) / 5  # [3, 4]
    idx = jnp.array([[1, 0], [3, 2]])
    return {
        "entropy": lambda t: jp.entropy(_X, from_logits=True, temperature=t),
        "kl": lambda t: jp.kl_divergence(_X, _Y, from_logits=True, temperature=t),
        "symmetric": lambda t: jp.kl_divergence(_X, _Y, symmetric=True, temperature=t),
        "js": lambda t: jp.js_divergence(_X, _Y, from_logits=True, temperature=t),
        "sparse kl": lambda t: jp.sparse_kl_divergence(
            jax.nn.log_softmax(_X), idx, jnp.log(jnp.full((2, 2), 0.5)), temperature=t
        ),
        "fused kl": lambda t: jp.fused_linear_kl_divergence(
            h, w, sg(h), sg(w[:, ::-1]), temperature=t
        ),
        "token logprobs": lambda t: jnp.sum(
            jp.fused_linear_token_logprobs(h, w, jnp.array([1, 2]), temperature=t)
        ),
    }


@pytest.mark.parametrize("path", sorted(_tempered_paths()))
@pytest.mark.parametrize("temperature", [-1.0, 0.0])
def test_traced_non_positive_temperature_gives_nan(path, temperature):
    """A traced T ≤ 0 cannot be refused: every value and the gradient w.r.t. T
    are NaN (a concrete one is refused eagerly), never a plausible number."""
    f = _tempered_paths()[path]
    t = jnp.float32(temperature)
    value, grad = jax.jit(jax.value_and_grad(f))(t)
    assert np.isnan(value), value
    assert np.isnan(grad), grad
    # A positive traced T still gives the concrete result.
    np.testing.assert_allclose(jax.jit(f)(jnp.float32(2.0)), f(2.0), rtol=1e-6)


def test_positive_infinite_logprob_is_not_hidden():
    """A +inf log-prob is no distribution: entropy, KL and JS are non-finite
    (the entropy's rounding floor at 0 does not hide it)."""
    a = jnp.array([[jnp.inf, -1.0, -2.0], [-1.0, -1.5, -0.9]])
    b = jnp.log(jnp.array([[0.2, 0.3, 0.5], [0.2, 0.3, 0.5]]))
    for value in (
        jp.entropy(a, reduction="none"),
        jp.kl_divergence(a, b, reduction="none"),
        jp.js_divergence(a, b, reduction="none"),
    ):
        assert not np.isfinite(value[0]), value
        assert np.isfinite(value[1]), value


def _kl_from_logits_extended(x, y, temperature=1.0):
    """KL(softmax(x / T) ‖ softmax(y / T)) per row, the plain formula in
    NumPy's extended precision (x87 long double: 64-bit mantissa), from the
    same float32 logits: a reference ~2000× finer than float64 rounding."""
    x = np.asarray(x, np.longdouble) / np.longdouble(temperature)
    y = np.asarray(y, np.longdouble) / np.longdouble(temperature)
    a = x - x.max(-1, keepdims=True)
    a = a - np.log(np.exp(a).sum(-1, keepdims=True))
    b = y - y.max(-1, keepdims=True)
    b = b - np.log(np.exp(b).sum(-1, keepdims=True))
    return (np.exp(a) * (a - b)).sum(-1)


_extended = pytest.mark.skipif(
    np.finfo(np.longdouble).eps > 1e-18,
    reason="NumPy's long double is not extended precision on this platform",
)


@_extended
@pytest.mark.parametrize("eps", [1e-6, 1e-3, 1.0])
def test_forward_kl_of_near_equal_logits_is_nonnegative_and_exact(eps):
    """KL from logits is ≥ 0 per position and close to the exact value also
    where it is ≈ 0 (each term p φ(d) ≥ 0; the plain formula gave −2.6e-7 for
    a true 1e-12), in both directions, tempered, and in the fused head."""
    rng = np.random.default_rng(19)
    x = (3 * rng.normal(size=(48, 700))).astype(np.float32)
    y = (x + eps * rng.normal(size=x.shape)).astype(np.float32)
    cases = {
        "forward": (
            jp.kl_divergence(x, y, from_logits=True, reduction="none"),
            _kl_from_logits_extended(x, y),
        ),
        "reverse": (
            jp.kl_divergence(
                x, y, from_logits=True, direction="reverse", reduction="none"
            ),
            _kl_from_logits_extended(y, x),
        ),
        "T = 2.5": (
            jp.kl_divergence(x, y, from_logits=True, temperature=2.5, reduction="none"),
            _kl_from_logits_extended(x, y, 2.5),
        ),
        "log-probs at T = 2.5": (
            jp.kl_divergence(
                log_softmax32(x), log_softmax32(y), temperature=2.5, reduction="none"
            ),
            _kl_from_logits_extended(log_softmax32(x), log_softmax32(y), 2.5),
        ),
        "fused": (
            jp.fused_linear_kl_divergence(
                jnp.eye(48, dtype=jnp.float32),
                x,
                jnp.eye(48, dtype=jnp.float32),
                y,
                reduction="none",
                chunk_size=16,
            ),
            _kl_from_logits_extended(x, y),
        ),
    }
    for name, (got, ref) in cases.items():
        got = np.asarray(got, np.float64)
        assert (got >= 0).all(), (name, got.min())
        np.testing.assert_allclose(got, np.float64(ref), rtol=2e-3, err_msg=name)


def test_forward_kl_near_zero_keeps_the_conventions():
    """The near-zero form keeps 0 · log 0 = 0 (also where both are −inf), +inf
    where q = 0 < p, and ≥ 0 at an extreme temperature."""
    x = jnp.array([[0.0, -jnp.inf, 1.0, -jnp.inf], [0.0, 2.0, 1.0, -1.0]])
    y = jnp.array([[0.0, 3.0, 1.0, -jnp.inf], [0.0, -jnp.inf, 1.0, -1.0]])
    got = jp.kl_divergence(x, y, from_logits=True, reduction="none")
    p = scipy.special.softmax(np.array([0.0, 1.0]))
    q = scipy.special.softmax(np.array([0.0, 3.0, 1.0]))[[0, 2]]
    np.testing.assert_allclose(got[0], ref_kl(p, q), rtol=1e-6)
    assert got[1] == np.inf
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=(8, 300)), jnp.float32)
    hot = jp.kl_divergence(
        z, z + 1e-6 * z[::-1], from_logits=True, temperature=1e6, reduction="none"
    )
    assert (np.asarray(hot) >= 0).all()
