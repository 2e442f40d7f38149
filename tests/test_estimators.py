"""Tests for kl_estimate (k1/k2/k3 from sampled-token log-probabilities)."""

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxpenalties as jp
from tests.helpers import assert_grads_match_finite_differences, count_compiles


def np_estimates(logp, ref):
    """NumPy float64 reference, straight from the definitions (r = π_ref / π)."""
    log_r = ref - logp
    r = np.exp(log_r)
    return {"k1": -log_r, "k2": 0.5 * log_r**2, "k3": (r - 1) - log_r}


def test_values_match_definitions():
    rng = np.random.default_rng(0)
    logp = np.log(rng.uniform(0.01, 1, size=(4, 9)))
    ref = np.log(rng.uniform(0.01, 1, size=(4, 9)))
    expected = np_estimates(logp, ref)
    for name, values in expected.items():
        got = jp.kl_estimate(logp, ref, estimator=name, reduction="none")
        np.testing.assert_allclose(got, values, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(
            jp.kl_estimate(logp, ref, estimator=name), values.mean(), rtol=1e-5
        )
        np.testing.assert_allclose(
            jp.kl_estimate(logp, ref, estimator=name, reduction="sum"),
            values.sum(),
            rtol=1e-5,
        )


def test_hand_worked_k3():
    # r = 0.25 / 0.5 = ½: k3 = (½ − 1) − log ½ = log 2 − ½ = 0.19314718...
    got = jp.kl_estimate(jnp.log(0.5), jnp.log(0.25))
    np.testing.assert_allclose(got, np.log(2) - 0.5, rtol=1e-6)


def test_k1_and_k3_are_unbiased_for_kl():
    """Average over many tokens sampled from π estimates KL(π‖π_ref).

    Tolerance: 6 standard errors of the sample mean (estimated from the same
    samples); with a fixed key the test is deterministic and cannot flake.
    """
    key_logits, key_ref, key_sample = jax.random.split(jax.random.key(0), 3)
    vocab, n = 50, 200_000
    logits = 2.0 * jax.random.normal(key_logits, (vocab,))
    ref_logits = logits + 0.7 * jax.random.normal(key_ref, (vocab,))
    logp = np.asarray(jax.nn.log_softmax(logits), np.float64)
    ref = np.asarray(jax.nn.log_softmax(ref_logits), np.float64)
    exact = scipy.special.rel_entr(np.exp(logp), np.exp(ref)).sum()  # KL(π‖π_ref)
    tokens = jax.random.categorical(key_sample, logits, shape=(n,))
    lp_t = jnp.asarray(logp[tokens], jnp.float32)
    ref_t = jnp.asarray(ref[tokens], jnp.float32)
    for name in ("k1", "k3"):
        values = np.asarray(
            jp.kl_estimate(lp_t, ref_t, estimator=name, reduction="none"), np.float64
        )
        stderr = values.std() / np.sqrt(n)
        assert abs(values.mean() - exact) < 6 * stderr, (name, values.mean(), exact)
        # Our mean reduction agrees with the float64 mean of per-token values.
        np.testing.assert_allclose(
            jp.kl_estimate(lp_t, ref_t, estimator=name), values.mean(), rtol=1e-4
        )
    # k3 has lower variance than k1 here (its raison d'être).
    k1 = np.asarray(jp.kl_estimate(lp_t, ref_t, estimator="k1", reduction="none"))
    k3 = np.asarray(jp.kl_estimate(lp_t, ref_t, estimator="k3", reduction="none"))
    assert k3.var() < k1.var()


def test_max_log_ratio_clamps_before_exp():
    logp = jnp.array([-120.0, -1.0, -3.0])
    ref = jnp.array([-1.0, -120.0, -2.0])  # log r = 119, −119, 1
    unclamped = jp.kl_estimate(logp, ref, reduction="none")
    assert unclamped[0] == jnp.inf  # exp(119) overflows float32: the true value
    got = jp.kl_estimate(logp, ref, max_log_ratio=10.0, reduction="none")
    log_r = np.clip(np.array([119.0, -119.0, 1.0]), -10, 10)
    np.testing.assert_allclose(got, np.expm1(log_r) - log_r, rtol=1e-6)
    g = jax.grad(lambda lp: jp.kl_estimate(lp, ref, max_log_ratio=10.0))(logp)
    assert np.isfinite(g).all()


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        logp = jnp.asarray(np.log(rng.uniform(0.05, 1, size=(3, 4))))
        ref = jnp.asarray(np.log(rng.uniform(0.05, 1, size=(3, 4))))
        for name in ("k1", "k2", "k3"):

            def f(a, b, name=name):
                return jp.kl_estimate(a, b, estimator=name)

            assert_grads_match_finite_differences(f, (logp, ref), 1e-6)


def test_where_and_garbage():
    rng = np.random.default_rng(2)
    logp = np.log(rng.uniform(0.05, 1, size=(4, 5)))
    ref = np.log(rng.uniform(0.05, 1, size=(4, 5)))
    mask = rng.random((4, 5)) < 0.6
    bad_lp = np.where(mask, logp, np.nan)
    bad_ref = np.where(mask, ref, np.inf)
    for name in ("k1", "k2", "k3"):
        got = jp.kl_estimate(bad_lp, bad_ref, estimator=name, where=mask)
        np.testing.assert_allclose(
            got, np_estimates(logp, ref)[name][mask].mean(), rtol=1e-5
        )
        g = jax.grad(lambda a, name=name: jp.kl_estimate(a, bad_ref, where=mask))(
            bad_lp
        )
        assert np.isfinite(g).all() and np.all(np.asarray(g)[~mask] == 0)
    empty = np.zeros((4, 5), bool)
    assert jp.kl_estimate(bad_lp, bad_ref, where=empty) == 0.0


def test_token_impossible_under_both_contributes_zero():
    logp = jnp.array([-jnp.inf, -1.0])
    ref = jnp.array([-jnp.inf, -1.0])
    for name in ("k1", "k2", "k3"):
        assert jp.kl_estimate(logp, ref, estimator=name) == 0.0
    # Impossible under the reference only: the estimate is +inf (the truth).
    assert jp.kl_estimate(jnp.array([-1.0]), jnp.array([-jnp.inf])) == jnp.inf


def test_dtypes():
    logp = jnp.log(jnp.array([0.5, 0.25], jnp.bfloat16))
    ref = jnp.log(jnp.array([0.25, 0.25], jnp.bfloat16))
    got = jp.kl_estimate(logp, ref)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(
        got, jp.kl_estimate(logp.astype(jnp.float32), ref.astype(jnp.float32))
    )


def test_errors():
    x = jnp.zeros((2, 3))
    with pytest.raises(ValueError, match="`estimator`.*'k1', 'k2', 'k3'.*'k4'"):
        jp.kl_estimate(x, x, estimator="k4")
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(3,\)"):
        jp.kl_estimate(x, jnp.zeros(3))
    with pytest.raises(ValueError, match="`max_log_ratio`.*> 0"):
        jp.kl_estimate(x, x, max_log_ratio=-1.0)
    with pytest.raises(TypeError, match="`estimator` must be a static Python"):
        jp.kl_estimate(x, x, estimator=jnp.array(1))


@settings(max_examples=50, deadline=None)
@given(
    hnp.arrays(np.float32, (16,), elements=st.floats(-30, 0, width=32)),
    hnp.arrays(np.float32, (16,), elements=st.floats(-30, 0, width=32)),
)
def test_k2_k3_nonnegative_and_zero_at_equal(logp, ref):
    for name in ("k2", "k3"):
        values = jp.kl_estimate(logp, ref, estimator=name, reduction="none")
        assert np.all(np.asarray(values) >= 0)
        same = jp.kl_estimate(logp, logp, estimator=name, reduction="none")
        np.testing.assert_array_equal(same, 0.0)


def test_max_value_clips_each_estimate_and_its_gradient():
    logp = jnp.asarray([-100.0, -1.0, -2.0])
    ref = jnp.asarray([-1.0, -1.5, -2.0])  # log r = 99, -0.5, 0
    plain = jp.kl_estimate(logp, ref, reduction="none")
    assert np.isposinf(plain[0])  # e^99 overflows float32
    got = jp.kl_estimate(logp, ref, max_value=10.0, reduction="none")
    r = np.exp(-0.5)
    np.testing.assert_allclose(got, [10.0, r - 1 + 0.5, 0.0], rtol=1e-6)
    g = jax.grad(lambda lp: jp.kl_estimate(lp, ref, max_value=10.0, reduction="sum"))(
        logp
    )
    np.testing.assert_allclose(g, [0.0, 1 - r, 0.0], rtol=1e-6, atol=1e-7)
    k1 = jp.kl_estimate(logp, ref, estimator="k1", max_value=3.0, reduction="none")
    np.testing.assert_allclose(k1, [-3.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="max_value"):
        jp.kl_estimate(logp, ref, max_value=jnp.asarray(-1.0))


def test_extremes_report_the_per_position_spike_a_mean_hides():
    # One spiky position among quiet ones; masked garbage is ignored.
    p = jax.nn.log_softmax(jnp.asarray([[0.0, 0.0], [5.0, -5.0], [0.1, 0.0]]))
    q = jax.nn.log_softmax(jnp.zeros((3, 2)))
    where = jnp.asarray([1, 1, 0])
    per = np.asarray(jp.kl_divergence(p, q, reduction="none"))
    mean, m = jp.kl_divergence(p, q, where=where, extremes=True)
    np.testing.assert_allclose(mean, per[:2].mean(), rtol=1e-6)
    np.testing.assert_allclose(m["max"], per[1], rtol=1e-6)
    np.testing.assert_allclose(m["min"], per[0], atol=1e-7)
    for f in (
        lambda: jp.js_divergence(p, q, extremes=True),
        lambda: jp.entropy(p, extremes=True),
        lambda: jp.kl_estimate(p[:, 0], q[:, 0], extremes=True),
    ):
        value, metrics = f()
        assert set(metrics) == {"max", "min"} and metrics["max"] >= metrics["min"]
    # regularize reports them beside the value.
    pen = jp.Penalty(jp.kl_divergence, inputs=("p", "q"), kwargs={"extremes": True})
    _, aux = jp.regularize(lambda params, b: 0.0, [pen])({}, {"p": p, "q": q})
    np.testing.assert_allclose(aux["penalties"]["kl_divergence"]["max"], per.max())
    # Nothing kept: 0, never ±inf.
    _, m = jp.kl_divergence(p, q, where=jnp.zeros(3), extremes=True)
    assert float(m["max"]) == 0.0 and float(m["min"]) == 0.0


def verl_low_var_kl(logprob, ref_logprob, max_log_ratio=20.0, max_value=10.0):
    """verl's ``kl_penalty_forward(..., "low_var_kl")`` in float64 NumPy:
    log r clamped to ±20, k3 = r − log r − 1, clamped to ±10."""
    kl = np.clip(ref_logprob - logprob, -max_log_ratio, max_log_ratio)
    return np.clip(np.exp(kl) - kl - 1, -max_value, max_value)


def test_kl_penalized_rewards_reproduce_verls_low_var_kl_reward():
    # verl's apply_kl_penalty: rewards = scores − β · low_var_kl · mask.
    # |log r| = 25 at the first two tokens: both clamps act there.
    log_r = np.array([[25.0, -25.0, 2.5, -0.7], [1.3, -3.0, 19.5, 0.4]])
    logp = np.array([[-30.0, -1.0, -4.0, -0.5], [-2.0, -3.5, -25.0, -1.2]])
    ref = logp + log_r
    mask = np.array([[1, 1, 1, 1], [1, 1, 1, 0]])
    scores = np.where(mask, np.array([[0.3, -1.2, 0.8, 1.0], [2.0, -0.4, 1.5, 0.0]]), 0)
    beta = 0.05
    with jax.enable_x64(True):
        args = (jnp.asarray(scores), jnp.asarray(logp), jnp.asarray(ref), beta)
        got = jp.kl_penalized_rewards(
            *args, estimator="k3", max_log_ratio=20.0, max_value=10.0, where=mask
        )
        assert got.dtype == jnp.float64
        want = scores - beta * verl_low_var_kl(logp, ref) * mask
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
        # Each clamp is applied as kl_estimate applies it: with a bound on the
        # value too large to act, log r = ±25 is clamped to ±20 (e^20 − 21).
        got = jp.kl_penalized_rewards(
            *args, estimator="k3", max_log_ratio=20.0, max_value=1e12, where=mask
        )
        want = scores - beta * verl_low_var_kl(logp, ref, 20.0, 1e12) * mask
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
        unclamped = jp.kl_penalized_rewards(*args, estimator="k3", where=mask)
        assert float(unclamped[0, 0]) < float(got[0, 0])  # e^25 − 26 > e^20 − 21
        # Same numbers as kl_estimate with the same options.
        kl = jp.kl_estimate(
            jnp.asarray(logp),
            jnp.asarray(ref),
            max_log_ratio=3.0,
            max_value=4.0,
            reduction="none",
            where=mask,
        )
        got = jp.kl_penalized_rewards(
            *args, max_log_ratio=3.0, max_value=4.0, estimator="k3", where=mask
        )
        np.testing.assert_allclose(
            got, np.where(mask, scores - beta * kl, 0), rtol=1e-12
        )


def test_kl_penalized_rewards_clamps_are_traced_and_never_recompile():
    rewards = jnp.zeros((2, 4)).at[:, -1].set(1.0)
    logp = jnp.asarray([[-30.0, -1.0, -4.0, -0.5], [-2.0, -3.5, -25.0, -1.2]])
    ref = logp + jnp.asarray([[25.0, -25.0, 2.5, -0.7], [1.3, -3.0, 19.5, 0.4]])

    @jax.jit
    def step(c, m):
        return jp.kl_penalized_rewards(
            rewards, logp, ref, 0.1, estimator="k3", max_log_ratio=c, max_value=m
        )

    def eager(c, m):
        return jp.kl_penalized_rewards(
            rewards, logp, ref, 0.1, estimator="k3", max_log_ratio=c, max_value=m
        )

    step(jnp.float32(20.0), jnp.float32(10.0))
    eager(20.0, 10.0)
    eager(jnp.float32(20.0), jnp.float32(10.0))
    with count_compiles() as compiles:
        for c, m in ((15.0, 5.0), (3.0, 1e6), (0.5, 0.25)):
            traced = step(jnp.float32(c), jnp.float32(m))
            for got in (traced, eager(c, m), eager(jnp.float32(c), jnp.float32(m))):
                want = jp.kl_estimate(
                    logp, ref, max_log_ratio=c, max_value=m, reduction="none"
                )
                want = np.asarray(rewards) - 0.1 * np.asarray(want)
                np.testing.assert_allclose(got, want, rtol=1e-6)
        assert compiles() == 0
    # Validated as kl_estimate validates them.
    with pytest.raises(ValueError, match="`max_log_ratio`.*> 0"):
        eager(0.0, 10.0)
    with pytest.raises(ValueError, match="`max_value`.*> 0"):
        eager(20.0, jnp.asarray(-1.0))
