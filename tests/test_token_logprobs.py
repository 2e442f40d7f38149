"""fused_linear_token_logprobs: sampled-token log-probs and entropies straight
from hidden states, exact against log_softmax(x @ w / T) gathered."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpenalties as jp

H, V = 6, 23


def inputs(seed=0, dtype=jnp.float64, positions=(2, 7)):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=positions + (H,)), dtype)
    w = jnp.asarray(rng.normal(size=(H, V)), dtype)
    tokens = jnp.asarray(rng.integers(0, V, size=positions))
    return x, w, tokens


def reference(x, w, tokens, t=1.0, where=None):
    """Materialised log_softmax, gathered; entropy −Σ p log p (plain jnp)."""
    a = jax.nn.log_softmax(x @ w / t)
    lp = jnp.take_along_axis(a, tokens[..., None], -1)[..., 0]
    ent = -jnp.sum(jnp.exp(a) * a, -1)
    if where is not None:
        lp, ent = jnp.where(where, lp, 0.0), jnp.where(where, ent, 0.0)
    return lp, ent


def weighted(f):
    """A scalar with a different cotangent per position and per output."""

    def g(*args):
        lp, ent = f(*args)
        c1 = jnp.arange(1, lp.size + 1, dtype=lp.dtype).reshape(lp.shape)
        return jnp.sum(c1 * lp) + jnp.sum(jnp.sqrt(c1) * ent)

    return g


@pytest.mark.parametrize("t", [1.0, 0.7])
def test_values_entropy_and_gradients_match_float64_reference(t):
    with jax.enable_x64(True):
        x, w, tokens = inputs()
        where = jnp.ones((2, 7), bool).at[1, 3].set(False)

        def ours(x, w, t):
            return jp.fused_linear_token_logprobs(
                x, w, tokens, temperature=t, where=where, chunk_size=4, entropy=True
            )

        def ref(x, w, t):
            return reference(x, w, tokens, t, where)

        got, want = ours(x, w, t), ref(x, w, t)
        for g, e in zip(got, want, strict=True):
            assert g.dtype == jnp.float64
            np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-12)
        argnums = (0, 1) if t == 1.0 else (0, 1, 2)
        t = jnp.asarray(t)
        g1 = jax.grad(weighted(ours), argnums)(x, w, t)
        g2 = jax.grad(weighted(ref), argnums)(x, w, t)
        for a, b in zip(g1, g2, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_masked_garbage_reaches_neither_value_nor_gradient_and_jit_vmap():
    x, w, tokens = inputs(dtype=jnp.float32)
    where = jnp.ones((2, 7), bool).at[0, 1].set(False)
    x_bad = x.at[0, 1].set(jnp.nan)
    tokens_bad = tokens.at[0, 1].set(-100)
    f = functools.partial(jp.fused_linear_token_logprobs, where=where, chunk_size=3)
    lp = jax.jit(f)(x_bad, w, tokens_bad)
    want, _ = reference(x, w, tokens, where=where)
    np.testing.assert_allclose(lp, want, rtol=1e-5, atol=1e-6)
    g = jax.grad(lambda x: jnp.sum(f(x, w, tokens_bad)))(x_bad)
    assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[0, 1] == 0)
    rows = jax.vmap(lambda x, t: jp.fused_linear_token_logprobs(x, w, t))(x, tokens)
    np.testing.assert_allclose(rows, reference(x, w, tokens)[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [-1, V, 2**32 + 3])
def test_traced_token_outside_the_vocabulary_is_nan_at_its_position(bad):
    # Under jit the range cannot be checked: that position's log-prob and the
    # gradient it sends are NaN, never a clipped token's (0 or V - 1) number.
    with jax.enable_x64(True):
        x, w, tokens = inputs()
        tokens = jnp.asarray(np.asarray(tokens), jnp.int64)
        others = np.ones((2, 7), bool)
        others[1, 4] = False

        @jax.jit
        def ours(x, w, tokens):
            return jp.fused_linear_token_logprobs(
                x, w, tokens, chunk_size=4, entropy=True
            )

        lp, ent = ours(x, w, tokens.at[1, 4].set(bad))
        want_lp, want_ent = reference(x, w, tokens)
        assert np.isnan(lp[1, 4])
        np.testing.assert_allclose(lp[others], want_lp[others], rtol=1e-12)
        np.testing.assert_allclose(ent, want_ent, rtol=1e-12)  # H needs no token
        gx, gw = jax.grad(
            lambda x, w: jnp.sum(ours(x, w, tokens.at[1, 4].set(bad))[0]), (0, 1)
        )(x, w)
        assert np.isnan(gx[1, 4]).all() and np.isnan(gw).any()
        ex = jax.grad(
            lambda x: jnp.sum(jnp.where(others, reference(x, w, tokens)[0], 0))
        )(x)
        np.testing.assert_allclose(gx[others], ex[others], rtol=1e-10, atol=1e-12)


def test_bf16_head_and_a_grpo_style_k3_kl():
    x, w, tokens = inputs(dtype=jnp.bfloat16)
    ref_w = (w.astype(jnp.float32) * 0.9).astype(jnp.bfloat16)

    def loss(x, w):
        lp = jp.fused_linear_token_logprobs(x, w, tokens, chunk_size=4)
        ref = jp.fused_linear_token_logprobs(x, jax.lax.stop_gradient(ref_w), tokens)
        return jp.kl_estimate(lp, jax.lax.stop_gradient(ref), estimator="k3")

    value, (gx, gw) = jax.value_and_grad(loss, (0, 1))(x, w)
    assert value.dtype == jnp.float32 and gx.dtype == gw.dtype == jnp.bfloat16

    def dense(x, w):
        lp, _ = reference(x.astype(jnp.float32), w.astype(jnp.float32), tokens)
        rf, _ = reference(x.astype(jnp.float32), ref_w.astype(jnp.float32), tokens)
        return jp.kl_estimate(lp, jax.lax.stop_gradient(rf), estimator="k3")

    np.testing.assert_allclose(value, dense(x, w), rtol=1e-4)
    _, (ex, ew) = jax.value_and_grad(dense, (0, 1))(x, w)
    np.testing.assert_allclose(gx.astype(jnp.float32), ex, rtol=3e-2, atol=3e-3)
    np.testing.assert_allclose(gw.astype(jnp.float32), ew, rtol=3e-2, atol=3e-3)


def test_memory_is_flat_in_positions():
    # value_and_grad w.r.t. (x, w) of the summed log-probs: no [n, V] buffer.
    h, v = 64, 16384
    w = jax.ShapeDtypeStruct((h, v), jnp.float32)

    def temp(n):
        x = jax.ShapeDtypeStruct((n, h), jnp.float32)
        tok = jax.ShapeDtypeStruct((n,), jnp.int32)

        def f(x, w, tok):
            return jnp.sum(jp.fused_linear_token_logprobs(x, w, tok, chunk_size=128))

        step = jax.jit(jax.value_and_grad(f, (0, 1)))
        return step.lower(x, w, tok).compile().memory_analysis().temp_size_in_bytes

    small, large = temp(2048), temp(16384)
    assert large < 1.1 * small + 16384 * h * 4 * 2, (small, large)
    assert large < 0.1 * 16384 * v * 4


def test_bad_inputs_are_named():
    x, w, tokens = inputs(dtype=jnp.float32)
    f = jp.fused_linear_token_logprobs
    with pytest.raises(TypeError, match="`tokens` to be an integer"):
        f(x, w, tokens.astype(jnp.float32))
    with pytest.raises(ValueError, match="`tokens` to have the position shape"):
        f(x, w, tokens[:, :3])
    with pytest.raises(ValueError, match=r"`tokens` in \[0, 23\)"):
        f(x, w, tokens.at[0, 0].set(23))
    with pytest.raises(ValueError, match="kernel `w`"):
        f(x, w[:3], tokens)
    with pytest.raises(ValueError, match="temperature"):
        f(x, w, tokens, temperature=0.0)
    with pytest.raises(ValueError, match="`where` to be broadcastable"):
        f(x, w, tokens, where=np.ones((3, 7), bool))
    with pytest.raises(ValueError, match="`w` .* at least one entry"):
        f(x, w[:, :0], tokens)
