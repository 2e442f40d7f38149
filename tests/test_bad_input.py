"""Bad or extreme input never becomes a silent number: concrete arrays are
validated like Python numbers, extreme temperatures stay finite, JS and entropy
are never negative, and non-array leaves are named by their path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxpenalties as jp

RNG = np.random.default_rng(0)
LOGITS = jnp.asarray(RNG.normal(size=(6, 32)), jnp.float32)
A = jax.nn.log_softmax(LOGITS)
B = jax.nn.log_softmax(jnp.asarray(RNG.normal(size=(6, 32)), jnp.float32))


# ---------------------------------------------------------------------------
# Temperature: the greedy limit, never NaN; inf and bad concrete arrays rejected
# ---------------------------------------------------------------------------

TEMPERATURES = [1e-45, 1e-38, 1e-30, 1e-20, 1e-10, 1e-6, 1e-2, 0.5, 3.0, 1e10, 1e30]


@pytest.mark.parametrize("t", TEMPERATURES)
def test_temperature_sweep_gives_no_nan_and_finite_entropy_and_js(t):
    for tt in (t, jnp.float32(t)):
        h = jp.entropy(LOGITS, mode="penalty", temperature=tt, reduction="none")
        js = jp.js_divergence(A, B, temperature=tt, reduction="none")
        kl = jp.kl_divergence(A, B, temperature=tt, reduction="none")
        for v in (h, js):
            assert np.all(np.isfinite(v)), (t, v)
            assert np.all(np.asarray(v) >= 0)
        assert not np.any(np.isnan(kl))
        assert np.all(np.asarray(kl) >= 0)
        grads = jax.grad(
            lambda a, b, tt=tt: (
                jp.js_divergence(a, b, temperature=tt) + jp.entropy(a, temperature=tt)
            ),
            (0, 1),
        )(A, B)
        for g in grads:
            assert not np.any(np.isnan(g)), t


def test_tiny_temperature_is_the_greedy_limit():
    # log_softmax(logits / T) → one-hot at the argmax: entropy 0, as the issue's
    # reference entropy(log_softmax(logits / T)) gives.
    h = jp.entropy(LOGITS, mode="penalty", temperature=1e-10, reduction="none")
    np.testing.assert_array_equal(h, 0.0)
    g = jax.grad(lambda x: jp.entropy(x, temperature=1e-10))(LOGITS)
    assert np.all(np.isfinite(g))
    # JS of two greedy distributions: 0 if the argmaxes agree, log 2 if not.
    js = jp.js_divergence(A, B, temperature=1e-30, reduction="none")
    same = np.argmax(A, -1) == np.argmax(B, -1)
    np.testing.assert_allclose(js, np.where(same, 0.0, np.log(2)), atol=1e-6)
    # KL: P is one-hot, so KL = −log q(argmax p) at temperature T, huge but
    # finite in float32 (≈ 1e30); float64 SciPy-style reference.
    kl = jp.kl_divergence(A, B, temperature=1e-30, reduction="none")
    b64 = np.asarray(B, np.float64) / 1e-30
    log_q = b64 - b64.max(-1, keepdims=True)  # log_softmax; the sum is 1 + tiny
    want = -log_q[np.arange(6), np.argmax(A, -1)]
    np.testing.assert_allclose(kl, want, rtol=1e-6)
    assert np.all(np.where(same, kl == 0, kl > 1e29))


@pytest.mark.parametrize(
    "bad", [float("inf"), jnp.asarray(jnp.inf), jnp.asarray(jnp.nan), jnp.asarray(-1.0)]
)
def test_bad_temperatures_raise_for_every_type(bad):
    for f in (
        lambda t: jp.kl_divergence(A, B, temperature=t),
        lambda t: jp.js_divergence(A, B, temperature=t),
        lambda t: jp.entropy(A, temperature=t),
        lambda t: jp.fused_linear_kl_divergence(
            jnp.ones((2, 3)),
            jnp.ones((3, 4)),
            jnp.ones((2, 3)),
            jnp.ones((3, 4)),
            temperature=t,
        ),
    ):
        with pytest.raises(ValueError, match="`temperature` to be a finite number > 0"):
            f(bad)


# ---------------------------------------------------------------------------
# Weights and bounds: concrete arrays checked like numbers
# ---------------------------------------------------------------------------


def test_regularize_weight_overrides_are_checked_for_every_concrete_type():
    def loss_fn(params, batch):
        return jnp.sum(params["w"] ** 2)

    f = jp.regularize(loss_fn, [jp.Penalty(jp.l2, inputs=("params",), name="l2")])
    params = {"w": jnp.ones(3)}
    for bad in (
        float("inf"),
        jnp.asarray(jnp.nan),
        jnp.asarray(jnp.inf),
        -1.0,
        jnp.asarray(-1.0),
        np.float32(np.nan),
    ):
        with pytest.raises(ValueError, match=r"weights\['l2'\]"):
            f(params, None, weights={"l2": bad})
    # A traced weight cannot be checked: it is used as given (no recompile).
    total, _ = jax.jit(lambda w: f(params, None, weights={"l2": w}))(2.0)
    np.testing.assert_allclose(total, 3.0 + 2.0 * 3.0)


def test_penalty_bounds_are_checked_for_concrete_jax_arrays():
    x = jnp.ones(3)
    with pytest.raises(ValueError, match="`l1_ratio` to be in"):
        jp.elastic_net(x, l1_ratio=jnp.asarray(1.5))
    with pytest.raises(ValueError, match="`clip` to be a finite number > 0"):
        jp.l2(x, clip=jnp.asarray(-1.0))
    with pytest.raises(ValueError, match="`max_log_ratio`"):
        jp.kl_estimate(x, x, max_log_ratio=jnp.asarray(jnp.nan))


# ---------------------------------------------------------------------------
# JS and entropy ≥ 0, exactly 0 at identical inputs
# ---------------------------------------------------------------------------


def test_js_of_identical_inputs_is_exactly_zero_with_zero_gradient():
    for beta in (0.5, 0.1, 0.77):
        v = jp.js_divergence(A, A, beta=beta, reduction="none")
        np.testing.assert_array_equal(v, 0.0)
        g = jax.grad(lambda a, beta=beta: jp.js_divergence(a, A, beta=beta))(A)
        np.testing.assert_array_equal(g, 0.0)


logprob_rows = st.lists(
    st.floats(-30, 30, allow_nan=False, width=32), min_size=8, max_size=8
).map(lambda v: jax.nn.log_softmax(jnp.asarray(v, jnp.float32)))


@settings(max_examples=60, deadline=None)
@given(p=logprob_rows, q=logprob_rows, t=st.sampled_from([1.0, 1e-3, 0.3, 7.0]))
def test_property_js_and_entropy_are_never_negative(p, q, t):
    for a, b in ((p, q), (p, p), (q, q)):
        assert float(jp.js_divergence(a, b, beta=0.3, temperature=t)) >= 0
        assert float(jp.js_divergence(a, b, temperature=t)) >= 0
    assert float(jp.js_divergence(p, p, temperature=t)) == 0
    assert float(jp.entropy(p, mode="penalty", temperature=t)) >= 0
    assert float(jp.entropy(p, mode="bonus", temperature=t)) <= 0


# ---------------------------------------------------------------------------
# Non-array leaves: the leaf path in the message
# ---------------------------------------------------------------------------


def test_string_leaves_are_named_by_their_path():
    with pytest.raises(TypeError, match=r"x\['name'\]"):
        jp.l2({"w": jnp.ones(2), "name": "dense"})
    with pytest.raises(TypeError, match="center"):
        jp.l2({"w": jnp.ones(2)}, center={"w": "zero"})
