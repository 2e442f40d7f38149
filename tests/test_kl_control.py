"""KL controllers (pure state, jittable, no recompiles) and KL in the reward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpenalties as jp
from tests.helpers import count_compiles


def reference_adaptive(coef, target, horizon, kls, n_steps):
    """Ziegler et al. 2019 / TRL AdaptiveKLController, in float64 by hand."""
    out = []
    for kl in kls:
        error = np.clip(kl / target - 1, -0.2, 0.2)
        coef = coef * (1 + error * n_steps / horizon)
        out.append(coef)
    return np.array(out)


def test_adaptive_controller_matches_the_formula_under_jit_without_recompiling():
    ctl = jp.adaptive_kl_controller(0.2, target=6.0, horizon=1000.0)
    kls = [9.0, 7.0, 6.0, 5.5, 1.0, 12.0]
    update = jax.jit(ctl.update, static_argnums=())
    state = ctl.init()
    state = update(state, jnp.float32(kls[0]), 64)
    got = [float(state.coef)]
    with count_compiles() as compiles:
        for kl in kls[1:]:
            state = update(state, jnp.float32(kl), 64)
            got.append(float(state.coef))
        assert compiles() == 0
    want = reference_adaptive(0.2, 6.0, 1000.0, kls, 64)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got[0] > 0.2 and got[4] < got[3]  # up above target, down below


def test_controller_coefficient_feeds_regularize_without_recompiling():
    def loss_fn(params, batch):
        return jnp.sum(params["w"] ** 2), {"lp": jax.nn.log_softmax(params["w"])}

    kl = jp.Penalty(jp.kl_divergence, inputs=("lp", "ref"), name="kl")
    f = jp.regularize(loss_fn, [kl])
    params = {"w": jnp.asarray([[0.5, -0.5, 1.0]])}
    batch = {"ref": jax.nn.log_softmax(jnp.zeros((1, 3)))}
    ctl = jp.adaptive_kl_controller(0.1, target=0.01, horizon=10.0)

    @jax.jit
    def step(params, state):
        total, aux = f(params, batch, weights={"kl": state.coef})
        kl_value = aux["penalties"]["kl"]["value"]
        return total, ctl.update(state, kl_value, 1)

    state = ctl.init()
    step(params, state)
    kl_value = float(jp.kl_divergence(jax.nn.log_softmax(params["w"]), batch["ref"]))
    for _ in range(3):
        with count_compiles() as compiles:
            total, new = step(params, state)
            assert compiles() == 0
        want = 0.5**2 * 2 + 1.0 + float(state.coef) * kl_value
        np.testing.assert_allclose(total, want, rtol=1e-5)
        state = new


def test_fixed_controller_and_validation():
    ctl = jp.fixed_kl_controller(0.05)
    assert float(ctl.update(ctl.init(), 100.0, 10).coef) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="target"):
        jp.adaptive_kl_controller(0.1, target=0.0, horizon=10)
    with pytest.raises(ValueError, match="init_coef"):
        jp.adaptive_kl_controller(jnp.asarray(-1.0), target=1.0, horizon=10)


def test_kl_in_the_reward_matches_the_per_token_formula():
    rng = np.random.default_rng(0)
    lp = jnp.asarray(-rng.uniform(0.1, 3, size=(2, 5)), jnp.float32)
    ref = jnp.asarray(-rng.uniform(0.1, 3, size=(2, 5)), jnp.float32)
    rewards = jnp.zeros((2, 5)).at[:, -1].set(jnp.asarray([1.0, -0.5]))
    mask = jnp.asarray([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    for est in ("k1", "k3"):
        got = jp.kl_penalized_rewards(rewards, lp, ref, 0.2, estimator=est, where=mask)
        log_r = np.asarray(ref, np.float64) - np.asarray(lp, np.float64)
        kl = -log_r if est == "k1" else np.expm1(log_r) - log_r
        want = np.where(np.asarray(mask) != 0, np.asarray(rewards) - 0.2 * kl, 0.0)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # A reward, not a loss: no gradient through the penalty.
    g = jax.grad(lambda lp: jnp.sum(jp.kl_penalized_rewards(rewards, lp, ref, 0.2)))(lp)
    np.testing.assert_array_equal(g, 0.0)
    with pytest.raises(ValueError, match="same shape"):
        jp.kl_penalized_rewards(rewards[:, :3], lp, ref, 0.1)


def test_adaptive_coefficient_never_goes_negative():
    # TRL's multiplier 1 + e·n/h is 1 − 0.2·512/100 = −0.024 here: β would turn
    # negative (a KL *bonus*). Ours floors the multiplier at 0: β = 0, exactly.
    ctl = jp.adaptive_kl_controller(0.1, target=6.0, horizon=100.0)
    for update in (ctl.update, jax.jit(ctl.update)):
        state = update(ctl.init(), observed_kl=0.0, n_steps=512)
        assert float(state.coef) == 0.0
        # β = 0 stays 0 (multiplicative), whatever is observed later.
        assert float(update(state, 100.0, 1).coef) == 0.0
    # Over a grid of (kl, n_steps) the coefficient is max(TRL's, 0): TRL's
    # numbers (float64, by hand) wherever TRL's β stays positive.
    for kl in (0.0, 3.0, 5.9, 6.0, 7.0, 50.0):
        for n in (1, 100, 499, 500, 501, 5000):
            got = float(jax.jit(ctl.update)(ctl.init(), kl, n).coef)
            trl = reference_adaptive(0.1, 6.0, 100.0, [kl], n)[0]
            assert got >= 0.0
            # atol: float32 cancellation in 1 + e·n/h near 0 (n ≈ 500).
            np.testing.assert_allclose(got, max(trl, 0.0), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_observation_leaves_the_state_unchanged(bad):
    ctl = jp.adaptive_kl_controller(0.2, target=6.0, horizon=1000.0)
    update = jax.jit(ctl.update)
    state = update(ctl.init(), 9.0, 64)
    same = update(state, jnp.float32(bad), 64)
    assert float(same.coef) == float(state.coef)
    # The next finite observation continues from there (no NaN sticks).
    after = update(same, 7.0, 64)
    want = reference_adaptive(0.2, 6.0, 1000.0, [9.0, 7.0], 64)[-1]
    np.testing.assert_allclose(after.coef, want, rtol=1e-6)


def test_zero_coefficient_gives_exactly_the_rewards():
    # log π_ref = −inf at the first token: k1 = +inf, and 0 · inf would be NaN.
    rewards = jnp.asarray([[0.5, 0.0, 1.0]])
    lp = jnp.asarray([[-1.0, -2.0, -0.5]])
    ref = jnp.asarray([[-jnp.inf, -2.5, -0.5]])
    for est in ("k1", "k2", "k3"):
        got = jp.kl_penalized_rewards(rewards, lp, ref, 0.0, estimator=est)
        np.testing.assert_array_equal(got, rewards)
        # A traced β = 0 (a controller's state) as well.
        traced = jax.jit(
            lambda c, est=est: jp.kl_penalized_rewards(
                rewards, lp, ref, c, estimator=est
            )
        )(jnp.float32(0.0))
        np.testing.assert_array_equal(traced, rewards)
    # β > 0 keeps the true value: −inf where the reference excludes the token.
    got = jp.kl_penalized_rewards(rewards, lp, ref, 0.1)
    assert got[0, 0] == -np.inf
    np.testing.assert_allclose(got[0, 1:], [0.0 - 0.1 * 0.5, 1.0], rtol=1e-6)


def test_kl_controller_is_exported():
    assert "KLController" in jp.__all__
    assert jp.KLController is jp.rl.KLController
    for ctl in (
        jp.fixed_kl_controller(0.05),
        jp.adaptive_kl_controller(0.1, target=6.0, horizon=100.0),
    ):
        assert isinstance(ctl, jp.KLController)
        assert ctl._fields == ("init", "update")
