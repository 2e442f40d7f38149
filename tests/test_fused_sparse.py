"""Fused top-k teacher divergences equal the dense sparse ones on
log_softmax(x @ w), in value and gradient."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpenalties as jp
from tests.helpers import position_weighted_sum

H, V, K = 5, 13, 4


def inputs(dtype=jnp.float64, seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(2, 5, H)), dtype)
    w = jnp.asarray(rng.normal(size=(H, V)), dtype)
    teacher = jax.nn.log_softmax(jnp.asarray(2 * rng.normal(size=(2, 5, V)), dtype))
    idx = jnp.argsort(-teacher, axis=-1)[..., :K]
    return x, w, idx, jnp.take_along_axis(teacher, idx, -1)


WHERE = jnp.ones((2, 5), bool).at[1, 2].set(False)

CASES = [
    ("kl", dict(tail="renormalize", temperature=0.7)),
    ("kl", dict(tail="bucket", direction="reverse", reduction="sum")),
    ("kl", dict(tail="bucket", symmetric=True, reduction="none")),
    ("js", dict(tail="renormalize", beta=0.3)),
    ("js", dict(tail="bucket")),
]


@pytest.mark.parametrize("kind,kw", CASES)
def test_matches_the_dense_student_in_float64(kind, kw):
    fused = {
        "kl": jp.fused_linear_sparse_kl_divergence,
        "js": jp.fused_linear_sparse_js_divergence,
    }[kind]
    dense = {"kl": jp.sparse_kl_divergence, "js": jp.sparse_js_divergence}[kind]

    def f(x, w, t):
        return position_weighted_sum(
            fused(x, w, idx, t, where=WHERE, chunk_size=3, **kw)
        )

    def g(x, w, t):
        return position_weighted_sum(
            dense(jax.nn.log_softmax(x @ w), idx, t, where=WHERE, **kw)
        )

    with jax.enable_x64(True):
        x, w, idx, t = inputs()
        got = jax.value_and_grad(f, (0, 1, 2))(x, w, t)
        want = jax.value_and_grad(g, (0, 1, 2))(x, w, t)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_jit_float32_and_errors():
    x, w, idx, t = inputs(jnp.float32)
    f = functools.partial(jp.fused_linear_sparse_js_divergence, chunk_size=4)
    np.testing.assert_allclose(
        jax.jit(f)(x, w, idx, t),
        jp.sparse_js_divergence(jax.nn.log_softmax(x @ w), idx, t),
        rtol=2e-5,
    )
    with pytest.raises(ValueError, match="teacher_indices"):
        f(x, w, idx.at[0, 0, 0].set(V), t)
    with pytest.raises(ValueError, match="kernel `w`"):
        f(x, w[:2], idx, t)
    with pytest.raises(ValueError, match="temperature"):
        jp.fused_linear_sparse_kl_divergence(
            x, w, idx, t, tail="bucket", temperature=2.0
        )


@pytest.mark.parametrize("bad", [-1, V, "repeated"])
def test_traced_bad_index_is_nan_at_its_position_and_masked_garbage_is_not(bad):
    # An index outside [0, V) or repeated at a kept position gives NaN there,
    # in the value and in the gradient it sends to x and w; garbage at a
    # masked position (WHERE[1, 2]) is never read.
    with jax.enable_x64(True):
        x, w, idx, t = inputs()
        i = idx.at[1, 3, 0].set(idx[1, 3, 2] if bad == "repeated" else bad)
        i = i.at[1, 2].set(jnp.asarray([-5, 3, 3, V + 9]))

        @jax.jit
        def ours(x, w, i):
            return jp.fused_linear_sparse_kl_divergence(
                x, w, i, t, where=WHERE, reduction="none", chunk_size=3
            )

        others = np.asarray(WHERE).copy()
        others[1, 3] = False

        def dense(x, w):
            return jp.sparse_kl_divergence(
                jax.nn.log_softmax(x @ w), idx, t, where=others, reduction="none"
            )

        got = np.asarray(ours(x, w, i))
        assert np.isnan(got[1, 3]) and got[1, 2] == 0.0
        np.testing.assert_allclose(got[others], dense(x, w)[others], rtol=1e-10)
        gx, gw = jax.grad(lambda x, w: jnp.sum(ours(x, w, i)), (0, 1))(x, w)
        assert np.isnan(gx[1, 3]).all() and np.isnan(gw).any()
        assert np.all(gx[1, 2] == 0.0)
        ex = jax.grad(lambda x: jnp.sum(dense(x, w)))(x)
        np.testing.assert_allclose(gx[others], ex[others], rtol=1e-10, atol=1e-12)
