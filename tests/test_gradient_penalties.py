"""Tests for gradient_penalty, interpolated_gradient_penalty and
output_magnitude_penalty.

Input gradients of the test critics are written out analytically in NumPy
float64 (linear: ∇ = w; quadratic: ∇ = 2x; one-hidden-layer tanh MLP:
∇ = Wᵀ(v ⊙ (1 − tanh²(W x)))), never taken from the code under test.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import jaxpenalties as jp
from tests.helpers import assert_grads_match_finite_differences, count_compiles


def mlp(params, x):
    """A small critic: one score per example, examples independent."""
    w, v = params
    return jnp.tanh(x.reshape(x.shape[0], -1) @ w.T) @ v


def np_mlp_input_grads(params, x):
    w, v = (np.asarray(p, np.float64) for p in params)
    x = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    h = np.tanh(x @ w.T)
    return (v * (1 - h**2)) @ w  # [batch, features]


def make_mlp(rng, features=6, hidden=5):
    w = rng.normal(size=(hidden, features)).astype(np.float32)
    v = rng.normal(size=(hidden,)).astype(np.float32)
    return (jnp.asarray(w), jnp.asarray(v))


# ---------------------------------------------------------------------------
# gradient_penalty
# ---------------------------------------------------------------------------


def test_linear_critic_by_hand():
    # f(x) = 3 x₀ + 4 x₁: ‖∇‖ = 5 for every example -> (5 − 1)² = 16.
    fn = lambda x: 3.0 * x[:, 0] + 4.0 * x[:, 1]  # noqa: E731
    x = jnp.arange(6.0).reshape(3, 2)
    assert jp.gradient_penalty(fn, x) == 16.0
    assert jp.gradient_penalty(fn, x, target_norm=5.0) == 0.0
    assert jp.gradient_penalty(fn, x, target_norm=0.0, reduction="sum") == 75.0
    np.testing.assert_array_equal(
        jp.gradient_penalty(fn, x, reduction="none"), [16.0, 16.0, 16.0]
    )


def test_quadratic_critic_per_example_norms():
    # f(x)ᵢ = Σ xᵢⱼ² -> ∇ = 2 xᵢ: per-example norms 2‖xᵢ‖ (not a batch norm).
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 2, 3)).astype(np.float32)
    fn = lambda x: jnp.sum(x**2, axis=(1, 2))  # noqa: E731
    norms = 2 * np.linalg.norm(x.reshape(5, -1).astype(np.float64), axis=1)
    got = jp.gradient_penalty(fn, x, target_norm=1.5, reduction="none")
    np.testing.assert_allclose(got, (norms - 1.5) ** 2, rtol=1e-5)
    np.testing.assert_allclose(
        jp.gradient_penalty(fn, x, target_norm=1.5),
        ((norms - 1.5) ** 2).mean(),
        rtol=1e-5,
    )


def test_mlp_critic_matches_analytic_input_gradients():
    rng = np.random.default_rng(1)
    params = make_mlp(rng)
    x = rng.normal(size=(7, 6)).astype(np.float32)
    norms = np.linalg.norm(np_mlp_input_grads(params, x), axis=1)
    got = jp.gradient_penalty(functools.partial(mlp, params), x, reduction="none")
    np.testing.assert_allclose(got, (norms - 1) ** 2, rtol=1e-5, atol=1e-6)
    # [batch, 1] scores (a flax Dense(1) head) are accepted too.
    fn = lambda x: mlp(params, x)[:, None]  # noqa: E731
    np.testing.assert_allclose(
        jp.gradient_penalty(fn, x, reduction="none"), got, rtol=1e-6
    )


def test_double_backprop_matches_finite_differences_under_jit():
    # d/dparams of the penalty (gradient of a gradient), float64.
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        w, v = (jnp.asarray(p, jnp.float64) for p in make_mlp(rng))
        x = jnp.asarray(rng.normal(size=(4, 6)))

        @jax.jit
        def loss(w, v):
            return jp.gradient_penalty(lambda x: mlp((w, v), x), x, target_norm=0.5)

        assert_grads_match_finite_differences(loss, (w, v), 1e-6)
        g = jax.jit(jax.grad(loss, argnums=(0, 1)))(w, v)
        eager = jax.grad(
            lambda w, v: jp.gradient_penalty(
                lambda x: mlp((w, v), x), x, target_norm=0.5
            ),
            argnums=(0, 1),
        )(w, v)
        for a, b in zip(g, eager, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-12)


def test_zero_input_gradient_has_finite_gradients():
    # f(x; w) = x @ w with w = 0: ∇ₓ f = 0, the norm's kink. Value t², and the
    # gradient w.r.t. w is finite (0 from the safe norm).
    x = jnp.ones((3, 4))
    loss = lambda w: jp.gradient_penalty(lambda x: x @ w, x)  # noqa: E731
    w = jnp.zeros(4)
    assert loss(w) == 1.0
    assert np.isfinite(jax.grad(loss)(w)).all()
    assert np.isfinite(
        jax.grad(lambda x: jp.gradient_penalty(lambda x: x @ w, x))(x)
    ).all()


def test_low_precision_inputs():
    fn = lambda x: 3.0 * x[:, 0] + 4.0 * x[:, 1]  # noqa: E731
    for dtype in (jnp.bfloat16, jnp.float16):
        out = jp.gradient_penalty(fn, jnp.ones((2, 2), dtype))
        assert out.dtype == jnp.float32
        assert out == 16.0


def test_gradient_penalty_errors():
    x = jnp.ones((3, 2))
    with pytest.raises(ValueError, match=r"one score per example.*\(3,\).*\(3, 2\)"):
        jp.gradient_penalty(lambda x: x, x)
    with pytest.raises(ValueError, match=r"one score per example.*got \(\)"):
        jp.gradient_penalty(lambda x: jnp.sum(x), x)
    with pytest.raises(ValueError, match="leading batch axis"):
        jp.gradient_penalty(lambda x: x, jnp.float32(1.0))
    with pytest.raises(
        ValueError, match=r"`target_norm` to be a finite number >= 0, got -1"
    ):
        jp.gradient_penalty(lambda x: x[:, 0], x, target_norm=-1.0)
    with pytest.raises(ValueError, match=r"`reduction`.*'max'"):
        jp.gradient_penalty(lambda x: x[:, 0], x, reduction="max")
    with pytest.raises(TypeError, match="floating-point"):
        jp.gradient_penalty(lambda x: x[:, 0], jnp.ones((3, 2), jnp.int32))


# ---------------------------------------------------------------------------
# interpolated_gradient_penalty (WGAN-GP)
# ---------------------------------------------------------------------------


def test_interpolation_one_uniform_per_example():
    # Critic Σ x²: ∇ at x̂ᵢ = εᵢ·1 is 2εᵢ·1, norm 2εᵢ√d, so target_norm=0 and
    # reduction="none" return (2εᵢ√d)²: the εᵢ can be read back.
    batch, d = 2000, 4
    real, fake = jnp.ones((batch, d)), jnp.zeros((batch, d))
    fn = lambda x: jnp.sum(x**2, axis=1)  # noqa: E731
    key = jax.random.key(0)
    gp = jp.interpolated_gradient_penalty(
        fn, real, fake, key=key, target_norm=0.0, reduction="none"
    )
    eps = np.sqrt(np.asarray(gp, np.float64)) / (2 * np.sqrt(d))
    assert np.all((eps >= 0) & (eps <= 1))
    assert len(np.unique(eps)) > batch * 0.99  # one ε per example
    assert scipy.stats.kstest(eps, "uniform").pvalue > 1e-3  # ε ~ U(0, 1)
    # Same key -> same result; another key -> another one.
    again = jp.interpolated_gradient_penalty(
        fn, real, fake, key=key, target_norm=0.0, reduction="none"
    )
    np.testing.assert_array_equal(gp, again)
    other = jp.interpolated_gradient_penalty(
        fn, real, fake, key=jax.random.key(1), target_norm=0.0, reduction="none"
    )
    assert not np.allclose(gp, other)
    # Raw uint32 keys work too.
    jp.interpolated_gradient_penalty(fn, real, fake, key=jax.random.PRNGKey(0))


def test_interpolates_lie_between_real_and_fake():
    # With real == fake every interpolate is real: same as gradient_penalty.
    rng = np.random.default_rng(3)
    params = make_mlp(rng)
    x = rng.normal(size=(6, 6)).astype(np.float32)
    critic = functools.partial(mlp, params)
    got = jp.interpolated_gradient_penalty(
        critic, x, x, key=jax.random.key(3), reduction="none"
    )
    np.testing.assert_allclose(got, jp.gradient_penalty(critic, x, reduction="none"))


def test_wgan_gp_step_under_jit_and_grad():
    rng = np.random.default_rng(4)
    params = make_mlp(rng)
    real = jnp.asarray(rng.normal(size=(8, 6)).astype(np.float32))
    fake = jnp.asarray(rng.normal(size=(8, 6)).astype(np.float32))

    @jax.jit
    def critic_loss(params, key):
        critic = functools.partial(mlp, params)
        wasserstein = jnp.mean(critic(fake)) - jnp.mean(critic(real))
        gp = jp.interpolated_gradient_penalty(
            critic, real, jax.lax.stop_gradient(fake), key=key
        )
        return wasserstein + 10.0 * gp

    key = jax.random.key(5)
    grads = jax.grad(critic_loss)(params, key)
    assert all(np.isfinite(g).all() for g in grads)
    np.testing.assert_allclose(
        critic_loss(params, key),
        jnp.mean(mlp(params, fake))
        - jnp.mean(mlp(params, real))
        + 10.0
        * jp.interpolated_gradient_penalty(
            functools.partial(mlp, params), real, fake, key=key
        ),
        rtol=1e-6,
    )


def test_interpolated_errors():
    fn = lambda x: x[:, 0]  # noqa: E731
    with pytest.raises(ValueError, match=r"`real` and `fake`.*\(3, 2\) and \(3, 4\)"):
        jp.interpolated_gradient_penalty(
            fn, jnp.ones((3, 2)), jnp.ones((3, 4)), key=jax.random.key(0)
        )
    with pytest.raises(TypeError, match="key"):
        jp.interpolated_gradient_penalty(fn, jnp.ones((3, 2)), jnp.ones((3, 2)))


# ---------------------------------------------------------------------------
# output_magnitude_penalty
# ---------------------------------------------------------------------------


def test_output_magnitude_matches_numpy():
    rng = np.random.default_rng(6)
    y = rng.normal(size=(5, 3, 4)).astype(np.float32)
    rms = np.sqrt((y.astype(np.float64) ** 2).reshape(5, -1).mean(1))
    for target in (0.0, 1.0, 2.5):
        want = (rms - target) ** 2
        got = jp.output_magnitude_penalty(y, target=target, reduction="none")
        np.testing.assert_allclose(got, want, rtol=1e-5)
        np.testing.assert_allclose(
            jp.output_magnitude_penalty(y, target=target), want.mean(), rtol=1e-5
        )
        np.testing.assert_allclose(
            jp.output_magnitude_penalty(y, target=target, reduction="sum"),
            want.sum(),
            rtol=1e-5,
        )
    # 1-D: each example's output is a scalar, RMS = |y|: (3 − 1)², (1 − 1)²
    np.testing.assert_array_equal(
        jp.output_magnitude_penalty(jnp.array([-3.0, 1.0]), reduction="none"),
        [4.0, 0.0],
    )


def test_output_magnitude_gradients():
    rng = np.random.default_rng(7)
    with jax.enable_x64(True):
        y = jnp.asarray(rng.normal(size=(3, 4)))
        fn = functools.partial(jp.output_magnitude_penalty, target=0.7)
        assert_grads_match_finite_differences(fn, (y,), 1e-6)
    # Zero outputs: the RMS kink; gradient finite.
    g = jax.grad(jp.output_magnitude_penalty)(jnp.zeros((2, 3)))
    assert np.isfinite(g).all()
    assert jp.output_magnitude_penalty(jnp.zeros((2, 3))) == 1.0


def test_output_magnitude_no_recompile_and_errors():
    y = jnp.ones((2, 3))
    jp.output_magnitude_penalty(y, target=0.5)
    with count_compiles() as compiles:
        jp.output_magnitude_penalty(y, target=1.5)
        assert compiles() == 0
        # An array target is a (strongly typed) new signature once, then reused.
        jp.output_magnitude_penalty(y, target=jnp.float32(2.0))
        jp.output_magnitude_penalty(y, target=jnp.float32(3.0))
        assert compiles() <= 1
    with pytest.raises(ValueError, match=r"`target` to be a finite number >= 0"):
        jp.output_magnitude_penalty(y, target=-0.5)
    with pytest.raises(ValueError, match="leading batch axis"):
        jp.output_magnitude_penalty(jnp.float32(1.0))
    with pytest.raises(ValueError, match=r"`reduction`.*'max'"):
        jp.output_magnitude_penalty(y, reduction="max")
