"""Total variation, Amari's α-divergence, skew KL and ULD (dense): values
against float64 / long-double references written from the papers' formulas,
gradients against finite differences, −inf entries, low precision, bad input.

Shapes are few and fixed ([3, 12] and [2, 40]) so that the compiled functions
are shared across cases; the parameters α and λ are dynamic (no recompile)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxpenalties as jp
from jaxpenalties.divergences._run import NotLogProbabilitiesWarning
from tests.helpers import assert_grads_match_finite_differences, count_compiles

L = np.longdouble


# --- references (float64 / long double, from the definitions) --------------


def ref_tv(p, q):
    return 0.5 * np.abs(p - q).sum(-1)


def ref_alpha(p, q, alpha):
    """Amari (Cichocki & Amari 2010): Σ [p^α q^{1−α} − α p − (1−α) q] /
    (α(α − 1)), in long double with expm1 (exact near α = 0, 1 and P = Q)."""
    p, q, alpha = p.astype(L), q.astype(L), L(alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.log(p) - np.log(q)
        if alpha == 1:
            t = np.where(p > 0, p * d - p + q, q)
        elif alpha == 0:
            t = np.where(q > 0, -q * d - q + p, p)
        else:
            t = q * (np.expm1(alpha * d) - alpha * np.expm1(d)) / (alpha * (alpha - 1))
            t = np.where(q > 0, t, p / (1 - alpha))
            t = np.where(p > 0, t, q / alpha)
    return t.sum(-1).astype(np.float64)


def ref_skew(p, q, lam):
    """KL(P ‖ λP + (1−λ)Q) in long double (rel_entr conventions)."""
    p, q = p.astype(L), q.astype(L)
    m = L(lam) * p + (1 - L(lam)) * q
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, p * np.log(p / m) - p + m, m)
    return t.sum(-1).astype(np.float64)


def ref_uld(p, q, top_k=None):
    ps, qs = -np.sort(-p, -1), -np.sort(-q, -1)
    if top_k is not None:
        ps, qs = ps[..., :top_k], qs[..., :top_k]
    n = max(ps.shape[-1], qs.shape[-1])
    ps = np.pad(ps, [(0, 0)] * (ps.ndim - 1) + [(0, n - ps.shape[-1])])
    qs = np.pad(qs, [(0, 0)] * (qs.ndim - 1) + [(0, n - qs.shape[-1])])
    value = np.abs(ps - qs).sum(-1)
    if top_k is not None:
        value = value + np.abs((1 - ps.sum(-1)) - (1 - qs.sum(-1)))
    return value


def _pair(seed, shape=(3, 12), scale=2.0, gap=None):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape) * scale
    y = x + gap * rng.normal(size=shape) if gap else rng.normal(size=shape) * scale
    a, b = scipy.special.log_softmax(x, -1), scipy.special.log_softmax(y, -1)
    return x, y, a, b


ALPHAS = [0.0, 1e-7, 1e-3, 0.3, 0.5, 0.9, 1 - 1e-7, 1.0]
SKEWS = [0.0, 0.1, 0.5, 0.9, 1.0]


# --- values --------------------------------------------------------------------


@pytest.mark.parametrize("gap", [None, 1e-3])
def test_values_match_references_in_float32(gap):
    """float32 inputs, far apart and 1e-3 apart (divergences ≈ 1e-7): each
    value within 2e-6 relative of the long-double reference (no cancellation:
    the terms are ≥ 0), at every α and λ, including the ends."""
    _, _, a, b = _pair(0, gap=gap)
    a32, b32 = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    p, q = np.exp(np.asarray(a32, np.float64)), np.exp(np.asarray(b32, np.float64))
    tv = jp.total_variation(a32, b32, reduction="none")
    np.testing.assert_allclose(tv, ref_tv(p, q), rtol=2e-6)
    for alpha in ALPHAS:
        got = jp.alpha_divergence(a32, b32, alpha=alpha, reduction="none")
        np.testing.assert_allclose(got, ref_alpha(p, q, alpha), rtol=2e-6)
    for lam in SKEWS[:-1]:
        got = jp.skew_kl_divergence(a32, b32, skew=lam, reduction="none")
        np.testing.assert_allclose(got, ref_skew(p, q, lam), rtol=2e-6)
    assert np.all(
        np.asarray(jp.skew_kl_divergence(a32, b32, skew=1.0, reduction="none")) < 1e-12
    )


def test_float64_exact():
    _, _, a, b = _pair(1)
    p, q = np.exp(a), np.exp(b)
    with jax.enable_x64(True):
        a64, b64 = jnp.asarray(a), jnp.asarray(b)
        np.testing.assert_allclose(
            jp.total_variation(a64, b64, reduction="none"), ref_tv(p, q), rtol=1e-13
        )
        for alpha in ALPHAS:
            got = jp.alpha_divergence(a64, b64, alpha=alpha, reduction="none")
            np.testing.assert_allclose(got, ref_alpha(p, q, alpha), rtol=1e-12)
        for lam in SKEWS[:-1]:
            got = jp.skew_kl_divergence(a64, b64, skew=lam, reduction="none")
            np.testing.assert_allclose(got, ref_skew(p, q, lam), rtol=1e-12)
        np.testing.assert_allclose(
            jp.uld_distance(a64, b64[:, :7], from_logits=True, reduction="none"),
            ref_uld(p, scipy.special.softmax(b[:, :7], -1)),
            rtol=1e-13,
        )


def test_limits_and_identities():
    """α = 1 and 0 are the KL of each direction, λ = 0 is KL, direction swaps
    (D_α(Q‖P) = D_{1−α}(P‖Q)), Hellinger at α = ½, TV symmetric; ULD of one
    vocabulary's sorted inputs is 2 TV."""
    _, _, a, b = _pair(2)
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    kl, rkl = jp.kl_divergence(a, b), jp.kl_divergence(a, b, direction="reverse")
    np.testing.assert_allclose(jp.alpha_divergence(a, b, alpha=1.0), kl, rtol=1e-6)
    np.testing.assert_allclose(jp.alpha_divergence(a, b, alpha=0.0), rkl, rtol=1e-6)
    np.testing.assert_allclose(jp.skew_kl_divergence(a, b, skew=0.0), kl, rtol=1e-6)
    np.testing.assert_allclose(
        jp.skew_kl_divergence(a, b, direction="reverse", skew=0.0), rkl, rtol=1e-6
    )
    np.testing.assert_allclose(
        jp.alpha_divergence(a, b, alpha=0.3, direction="reverse"),
        jp.alpha_divergence(a, b, alpha=0.7),
        rtol=1e-6,
    )
    p, q = np.exp(np.asarray(a, np.float64)), np.exp(np.asarray(b, np.float64))
    hellinger2 = 0.5 * ((np.sqrt(p) - np.sqrt(q)) ** 2).sum(-1)
    np.testing.assert_allclose(
        jp.alpha_divergence(a, b, alpha=0.5, reduction="none"),
        4 * hellinger2,
        rtol=2e-6,
    )
    np.testing.assert_allclose(jp.total_variation(a, b), jp.total_variation(b, a))
    sa, sb = -jnp.sort(-a, -1), -jnp.sort(-b, -1)
    np.testing.assert_allclose(
        jp.uld_distance(a, b), 2 * jp.total_variation(sa, sb), rtol=1e-6
    )


def test_logits_temperature_where_and_reductions():
    x, y, _, _ = _pair(3)
    t = 1.7
    a, b = scipy.special.log_softmax(x / t, -1), scipy.special.log_softmax(y / t, -1)
    p, q = np.exp(a), np.exp(b)
    where = np.array([True, False, True])
    x32, y32 = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    cases = [
        (jp.total_variation, {}, ref_tv(p, q)),
        (jp.alpha_divergence, {"alpha": 0.3}, ref_alpha(p, q, 0.3)),
        (jp.skew_kl_divergence, {"skew": 0.1}, ref_skew(p, q, 0.1)),
        (jp.uld_distance, {}, ref_uld(p, q)),
    ]
    for fn, kw, ref in cases:
        got = fn(x32, y32, from_logits=True, temperature=t, where=where, **kw)
        np.testing.assert_allclose(got, ref[where].mean(), rtol=2e-6)
        none = fn(x32, y32, from_logits=True, temperature=t, reduction="none", **kw)
        np.testing.assert_allclose(none, ref, rtol=2e-6)
        total, metrics = fn(
            x32,
            y32,
            from_logits=True,
            temperature=t,
            reduction="sum",
            extremes=True,
            **kw,
        )
        np.testing.assert_allclose(total, ref.sum(), rtol=2e-6)
        np.testing.assert_allclose(metrics["max"], ref.max(), rtol=2e-6)
        # Another axis: the distribution along axis 0.
        moved = fn(x32.T, y32.T, axis=0, from_logits=True, temperature=t, **kw)
        np.testing.assert_allclose(moved, ref.mean(), rtol=2e-6)


def test_masked_rows_hold_garbage():
    _, _, a, b = _pair(4)
    a = np.asarray(a, np.float32)
    a[1] = np.nan
    where = jnp.array([1, 0, 1])
    for fn in (
        jp.total_variation,
        functools.partial(jp.alpha_divergence, alpha=0.4),
        functools.partial(jp.skew_kl_divergence, skew=0.2),
        jp.uld_distance,
    ):
        v, g = jax.value_and_grad(
            lambda a, fn=fn: fn(a, jnp.asarray(b, jnp.float32), where=where)
        )(jnp.asarray(a))
        assert np.isfinite(v) and np.isfinite(g).all() and not np.any(g[1])


# --- −inf entries, extreme logits, low precision -----------------------------


def test_zero_mass_entries():
    """p = q = 0 adds 0; where only one side has mass the true values: finite
    for TV, α ∈ (0, 1) and λ > 0, +inf at the KL ends; gradients finite."""
    a = jnp.log(jnp.array([0.5, 0.5, 0.0, 0.0]))
    b = jnp.log(jnp.array([0.5, 0.0, 0.5, 0.0]))
    cases = [
        (jp.total_variation, {}, 0.5),
        (jp.alpha_divergence, {"alpha": 0.5}, 2.0),  # 4 (1 − ½)
        (jp.alpha_divergence, {"alpha": 0.25}, (1 - 0.5) / (0.25 * 0.75)),
        (jp.skew_kl_divergence, {"skew": 0.5}, 0.5 * np.log(2)),  # M = ½ ¼ ¼ 0
        (jp.alpha_divergence, {"alpha": 0.0}, np.inf),
        (jp.alpha_divergence, {"alpha": 1.0}, np.inf),
        (jp.skew_kl_divergence, {"skew": 0.0}, np.inf),
        (jp.uld_distance, {}, 0.0),
    ]
    for fn, kw, want in cases:
        v, g = jax.value_and_grad(lambda a, b, fn=fn, kw=kw: fn(a, b, **kw), (0, 1))(
            a, b
        )
        np.testing.assert_allclose(v, want, rtol=1e-6)
        assert all(np.isfinite(x).all() for x in g), (fn, kw, g)


def test_extreme_logits_and_half_precision():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(3, 12)) * 1e4, jnp.float32)
    y = jnp.asarray(rng.normal(size=(3, 12)) * 1e4, jnp.float32)
    fns = [
        jp.total_variation,
        functools.partial(jp.alpha_divergence, alpha=0.3),
        functools.partial(jp.skew_kl_divergence, skew=0.1),
        jp.uld_distance,
    ]
    for fn in fns:
        v, g = jax.value_and_grad(lambda x, fn=fn: fn(x, y, from_logits=True))(x)
        assert np.isfinite(v) and np.isfinite(g).all()
    _, _, a, b = _pair(6)
    for dtype in (jnp.bfloat16, jnp.float16):
        a16, b16 = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
        for fn in fns:
            got = fn(a16, b16, from_logits=True)
            assert got.dtype == jnp.float32
            want = fn(
                a16.astype(jnp.float32), b16.astype(jnp.float32), from_logits=True
            )
            np.testing.assert_allclose(got, want, rtol=1e-6)


# --- gradients -------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "tv",
        "alpha_0.3",
        "alpha_0",
        "alpha_1",
        "skew_0.1",
        "skew_0",
        "skew_rev",
        "uld",
        "uld_topk",
    ],
)
def test_gradients_match_finite_differences(name):
    fns = {
        "tv": jp.total_variation,
        "alpha_0.3": functools.partial(jp.alpha_divergence, alpha=0.3),
        "alpha_0": functools.partial(jp.alpha_divergence, alpha=0.0),
        "alpha_1": functools.partial(jp.alpha_divergence, alpha=1.0),
        "skew_0.1": functools.partial(jp.skew_kl_divergence, skew=0.1),
        "skew_0": functools.partial(jp.skew_kl_divergence, skew=0.0),
        "skew_rev": functools.partial(
            jp.skew_kl_divergence, skew=0.3, direction="reverse"
        ),
        "uld": jp.uld_distance,
        "uld_topk": functools.partial(jp.uld_distance, top_k=4),
    }
    fn = fns[name]
    x, y, _, _ = _pair(7, shape=(2, 9))
    with jax.enable_x64(True):
        x, y = jnp.asarray(x), jnp.asarray(y)
        if name.startswith("uld"):
            y = y[:, :6]  # another vocabulary
        for kw in ({"from_logits": True}, {"from_logits": True, "temperature": 1.3}):
            f = functools.partial(fn, **kw)
            assert_grads_match_finite_differences(f, (x, y), 1e-6)
        a, b = jax.nn.log_softmax(x), jax.nn.log_softmax(y)
        assert_grads_match_finite_differences(fn, (a, b), 1e-6)


def test_gradient_with_respect_to_temperature():
    x, y, _, _ = _pair(8, shape=(2, 9))
    with jax.enable_x64(True):
        x, y = jnp.asarray(x), jnp.asarray(y)
        for fn in (
            jp.total_variation,
            functools.partial(jp.alpha_divergence, alpha=0.6),
            functools.partial(jp.skew_kl_divergence, skew=0.2),
            jp.uld_distance,
        ):
            f = lambda t, fn=fn: fn(x, y, from_logits=True, temperature=t)  # noqa: E731
            assert_grads_match_finite_differences(f, (jnp.asarray(1.4),), 1e-6)


# --- ULD -------------------------------------------------------------------------


def test_uld_different_vocabularies_and_top_k():
    rng = np.random.default_rng(9)
    xs, xt = rng.normal(size=(2, 40)) * 2, rng.normal(size=(2, 25)) * 2
    ps, pt = scipy.special.softmax(xs, -1), scipy.special.softmax(xt, -1)
    s32, t32 = jnp.asarray(xs, jnp.float32), jnp.asarray(xt, jnp.float32)
    got = jp.uld_distance(s32, t32, from_logits=True, reduction="none")
    np.testing.assert_allclose(got, ref_uld(ps, pt), rtol=2e-6)
    # Student and teacher swapped: the distance is symmetric.
    np.testing.assert_allclose(
        jp.uld_distance(t32, s32, from_logits=True, reduction="none"), got, rtol=1e-6
    )
    for k in (1, 5, 25, 40, 100):
        got = jp.uld_distance(s32, t32, from_logits=True, top_k=k, reduction="none")
        np.testing.assert_allclose(got, ref_uld(ps, pt, top_k=k), rtol=2e-6)
    # k ≥ both vocabularies: the tails are empty, the full distance.
    np.testing.assert_allclose(
        jp.uld_distance(s32, t32, from_logits=True, top_k=40, reduction="none"),
        ref_uld(ps, pt),
        rtol=2e-6,
    )
    # A stored top-k teacher (log-probs of the full teacher, k = 8 entries).
    k = 8
    top = np.sort(np.log(pt), -1)[:, ::-1][:, :k].copy()
    np.random.default_rng(0).shuffle(top, axis=1)  # any order
    stored = jp.uld_distance(
        jnp.asarray(np.log(ps), jnp.float32), jnp.asarray(top, jnp.float32), top_k=k
    )
    np.testing.assert_allclose(stored, ref_uld(ps, pt, top_k=k).mean(), rtol=2e-6)
    # Hand-worked: [.6 .3 .1] vs [.7 .2 .05 .05] (sorted): .1 + .1 + .05 + .05.
    hand = jp.uld_distance(
        jnp.log(jnp.array([0.1, 0.6, 0.3])), jnp.log(jnp.array([0.05, 0.7, 0.2, 0.05]))
    )
    np.testing.assert_allclose(hand, 0.3, rtol=1e-6)


def test_uld_gradient_goes_back_through_the_sort():
    """d ULD / d log p_v = sign(p↓ − q↓ at v's rank) p_v (no ties)."""
    p = np.array([0.1, 0.5, 0.25, 0.15])
    q = np.array([0.3, 0.05, 0.65])
    g = jax.grad(jp.uld_distance)(
        jnp.log(jnp.asarray(p, jnp.float32)), jnp.log(jnp.asarray(q, jnp.float32))
    )
    # ranks of p: .5 .25 .15 .1 against .65 .3 .05 0: signs − − + +
    want = np.array([1.0, -1.0, -1.0, 1.0]) * p
    np.testing.assert_allclose(g, want, rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.floats(0.0, 1.0),
    st.floats(0.01, 5.0),
)
def test_properties(seed, param, scale):
    """Bounds and orderings that hold for every input: 0 ≤ TV ≤ 1, ULD ≤ 2 TV
    (sorting only brings the vectors closer), 0 ≤ SKL_λ ≤ −log λ, α and skew
    ≥ 0, D_α(P‖Q) = D_{1−α}(Q‖P)."""
    _, _, a, b = _pair(seed, scale=scale)
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    tv = np.asarray(jp.total_variation(a, b, reduction="none"))
    assert np.all(tv >= 0) and np.all(tv <= 1 + 1e-6)
    uld = np.asarray(jp.uld_distance(a, b, reduction="none"))
    assert np.all(uld <= 2 * tv + 1e-6)
    skl = np.asarray(jp.skew_kl_divergence(a, b, skew=param, reduction="none"))
    assert np.all(skl >= 0)
    if param > 1e-30:
        assert np.all(skl <= -np.log(param) * (1 + 1e-6) + 1e-7)
    da = jp.alpha_divergence(a, b, alpha=param, reduction="none")
    db = jp.alpha_divergence(b, a, alpha=1 - param, reduction="none")
    assert np.all(np.asarray(da) >= 0)
    np.testing.assert_allclose(da, db, rtol=1e-5, atol=1e-7)


# --- options: traced, bad input -------------------------------------------------


def test_traced_parameters_do_not_recompile_and_out_of_range_gives_nan():
    _, _, a, b = _pair(10)
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    f = jax.jit(
        lambda a, b, al, lam: (
            jp.alpha_divergence(a, b, alpha=al),
            jp.skew_kl_divergence(a, b, skew=lam),
        )
    )
    f(a, b, 0.2, 0.2)
    with count_compiles() as n:
        for v in (0.0, 0.5, 1.0):
            got = f(a, b, v, v)
            np.testing.assert_allclose(
                got[0], jp.alpha_divergence(a, b, alpha=v), rtol=1e-6
            )
        assert n() == 0
    for bad in (-0.1, 1.5, np.nan):
        va, vs = f(a, b, bad, bad)
        assert np.isnan(va) and np.isnan(vs)
        g = jax.grad(lambda a, bad=bad: f(a, b, bad, bad)[0])(a)
        assert np.isnan(g).all()


def test_bad_input():
    a = jnp.zeros((2, 4))
    with pytest.raises(ValueError, match="`alpha`"):
        jp.alpha_divergence(a, a, alpha=1.5)
    with pytest.raises(ValueError, match="`alpha`"):
        jp.alpha_divergence(a, a, alpha=-0.01)
    with pytest.raises(ValueError, match="`skew`"):
        jp.skew_kl_divergence(a, a, skew=2.0)
    with pytest.raises(ValueError, match="`direction`"):
        jp.skew_kl_divergence(a, a, direction="backward")
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(2, 5\)"):
        jp.total_variation(a, jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"\(2, 4\).*\(3, 5\)"):
        jp.uld_distance(a, jnp.zeros((3, 5)))
    with pytest.raises(ValueError, match="`top_k`"):
        jp.uld_distance(a, a, top_k=0)
    with pytest.raises(TypeError, match="`top_k`"):
        jax.jit(lambda k: jp.uld_distance(a, a, top_k=k))(2)
    with pytest.raises(ValueError, match="at least one entry"):
        jp.uld_distance(a, jnp.zeros((2, 0)))
    with pytest.raises(TypeError):
        jp.uld_distance(jnp.zeros((2, 4), jnp.int32), a)
    with pytest.warns(NotLogProbabilitiesWarning, match="total_variation"):
        jp.total_variation(a, a)  # zeros are logits, not log-probs
    with pytest.warns(NotLogProbabilitiesWarning, match="uld_distance") as record:
        jp.uld_distance(a, jnp.zeros((2, 7)))
    assert record[0].filename == __file__  # points at the caller
    # A stored top-k teacher holds less than mass 1 by design: no warning.
    jp.uld_distance(
        jnp.log(jnp.full((2, 4), 0.25)), jnp.log(jnp.full((2, 2), 0.3)), top_k=2
    )


def test_second_derivatives():
    """The kernel's derivative rule is itself differentiable: Hessians against
    finite differences of the gradient (float64), finite with −inf entries."""
    x, y, _, _ = _pair(11, shape=(2, 6))
    with jax.enable_x64(True):
        x, y = jnp.asarray(x), jnp.asarray(y)
        b = jax.nn.log_softmax(y).at[:, :2].set(-jnp.inf)
        a = jax.nn.log_softmax(x).at[:, 0].set(-jnp.inf)
        for fn in (
            functools.partial(jp.alpha_divergence, alpha=0.3),
            functools.partial(jp.skew_kl_divergence, skew=0.2),
        ):
            f = functools.partial(fn, from_logits=True)
            jax.test_util.check_grads(
                f, (x, y), order=2, modes=["rev"], atol=1e-5, rtol=1e-5
            )
            assert np.isfinite(jax.hessian(lambda a, fn=fn: fn(a, b))(a)).all()
