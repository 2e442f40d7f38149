"""Every kernel divergence on the large-vocabulary paths, chosen by name:
fused through two linear heads (ULD with vocabularies of different sizes),
against a stored top-k teacher, and fused against one; each equal to the
dense function on the materialised log-probs, value and gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpenalties as jp
from tests.helpers import (
    assert_grads_match_finite_differences,
    count_compiles,
    position_weighted_sum,
    random_heads,
)

DENSE = {
    "kl": jp.kl_divergence,
    "symmetric_kl": functools.partial(jp.kl_divergence, symmetric=True),
    "js": functools.partial(jp.js_divergence, beta=0.3),
    "total_variation": jp.total_variation,
    "alpha": functools.partial(jp.alpha_divergence, alpha=0.3),
    "skew_kl": functools.partial(jp.skew_kl_divergence, skew=0.2),
    "uld": jp.uld_distance,
}
OPTIONS = {"js": {"beta": 0.3}, "alpha": {"alpha": 0.3}, "skew_kl": {"skew": 0.2}}


def _heads(v_ref=24, seed=0, dtype=jnp.float32):
    x, w, rx, rw = random_heads((2, 5), 6, 5, 24, seed=seed, dtype=dtype, logit_std=3)
    if v_ref != 24:
        rw = jnp.asarray(np.random.default_rng(seed + 1).normal(size=(5, v_ref)), dtype)
    return x, w, rx, rw


def _dense(name, x, w, rx, rw, **kw):
    return DENSE[name](x @ w, rx @ rw, from_logits=True, **kw)


@pytest.mark.parametrize("name", sorted(DENSE))
def test_fused_equals_dense_value_and_gradients(name):
    v_ref = 31 if name == "uld" else 24
    heads = _heads(v_ref)
    where = jnp.array([[1, 1, 0, 1, 1], [1, 0, 1, 1, 1]])
    opts = OPTIONS.get(name, {})

    def fused(*h):
        return jp.fused_linear_divergence(
            *h, divergence=name, chunk_size=3, where=where, temperature=1.3, **opts
        )

    def dense(*h):
        return _dense(name, *h, where=where, temperature=1.3)

    v, g = jax.value_and_grad(fused, argnums=(0, 1, 2, 3))(*heads)
    vr, gr = jax.value_and_grad(dense, argnums=(0, 1, 2, 3))(*heads)
    np.testing.assert_allclose(v, vr, rtol=2e-5)
    for a, b in zip(g, gr, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)
    # Per-position values and their gradients (the recomputing backward pass).
    none = functools.partial(jp.fused_linear_divergence, divergence=name)

    def per_position(*h):
        return position_weighted_sum(none(*h, chunk_size=4, reduction="none", **opts))

    def per_position_dense(*h):
        return position_weighted_sum(_dense(name, *h, reduction="none"))

    got = jax.grad(per_position, argnums=(0, 1))(*heads)
    want = jax.grad(per_position_dense, argnums=(0, 1))(*heads)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize("name", ["alpha", "skew_kl", "uld"])
def test_reverse_direction_labels_and_top_k(name):
    heads = _heads(31 if name == "uld" else 24, seed=1)
    labels = jnp.asarray(np.random.default_rng(2).integers(0, 24, size=(2, 5)))
    if name == "uld":
        kw, dense_kw = {"top_k": 4}, {"top_k": 4}
    else:
        kw = {"direction": "reverse", **OPTIONS[name]}
        dense_kw = {"direction": "reverse"}
    loss, metrics = jp.fused_linear_divergence(
        *heads, divergence=name, labels=labels, soft_weight=0.7, chunk_size=4, **kw
    )
    div = DENSE[name](
        heads[0] @ heads[1], heads[2] @ heads[3], from_logits=True, **dense_kw
    )
    logp = jax.nn.log_softmax(heads[0] @ heads[1])
    ce = -jnp.mean(jnp.take_along_axis(logp, labels[..., None], -1))
    np.testing.assert_allclose(metrics["divergence"], div, rtol=2e-5)
    np.testing.assert_allclose(loss, 0.7 * div + ce, rtol=2e-5)


def test_fused_gradients_match_finite_differences_float64():
    with jax.enable_x64(True):
        x, w, rx, rw = (a.astype(jnp.float64) for a in _heads(29, seed=3))
        for name in ("alpha", "uld"):
            f = functools.partial(
                jp.fused_linear_divergence,
                divergence=name,
                chunk_size=4,
                **({"top_k": 5} if name == "uld" else OPTIONS.get(name, {})),
            )
            if name != "uld":
                rw = rw[:, :24]
            assert_grads_match_finite_differences(
                lambda x, w, f=f, rw=rw: f(x, w, rx, rw), (x, w), 1e-6
            )


def test_traced_parameter_in_fused_step():
    heads = _heads()
    f = jax.jit(
        lambda a, *h: jp.fused_linear_divergence(*h, divergence="alpha", alpha=a)
    )
    f(0.5, *heads)
    alphas = (0.0, 0.25, 1.0)
    z, rz = heads[0] @ heads[1], heads[2] @ heads[3]
    # The references first: their own compiles are not the fused step's.
    want = [jp.alpha_divergence(z, rz, alpha=a, from_logits=True) for a in alphas]
    with count_compiles() as n:
        got = [f(a, *heads) for a in alphas]
        assert n() == 0
    np.testing.assert_allclose(got, want, rtol=2e-5)
    assert np.isnan(f(1.5, *heads))


def test_sparse_and_fused_sparse_equal_dense_on_the_k_entries():
    x, w, _, _ = _heads(seed=4)
    rng = np.random.default_rng(5)
    idx = jnp.asarray(
        np.stack([rng.permutation(24)[:6] for _ in range(10)]).reshape(2, 5, 6)
    )
    teacher_full = jax.nn.log_softmax(
        jnp.asarray(rng.normal(size=(2, 5, 24)) * 2, jnp.float32)
    )
    teacher = jnp.take_along_axis(teacher_full, idx, -1)
    student = jax.nn.log_softmax(x @ w)
    gathered = jnp.take_along_axis(student, idx, -1)
    for name in ("total_variation", "alpha", "skew_kl", "js"):
        opts = OPTIONS.get(name, {})
        got = jp.sparse_divergence(student, idx, teacher, divergence=name, **opts)
        want = DENSE[name](gathered, teacher, from_logits=True)
        np.testing.assert_allclose(got, want, rtol=2e-5)
    # The fused top-k path runs the same kernel: two kinds suffice.
    for name in ("total_variation", "alpha"):
        opts = OPTIONS.get(name, {})
        fused = jp.fused_linear_sparse_divergence(
            x, w, idx, teacher, divergence=name, tail="bucket", chunk_size=3, **opts
        )
        dense = jp.sparse_divergence(
            student, idx, teacher, divergence=name, tail="bucket", **opts
        )
        np.testing.assert_allclose(fused, dense, rtol=2e-5)
        gf = jax.grad(
            lambda w, name=name, opts=opts: jp.fused_linear_sparse_divergence(
                x, w, idx, teacher, divergence=name, tail="bucket", chunk_size=3, **opts
            )
        )(w)
        gd = jax.grad(
            lambda w, name=name, opts=opts: jp.sparse_divergence(
                jax.nn.log_softmax(x @ w),
                idx,
                teacher,
                divergence=name,
                tail="bucket",
                **opts,
            )
        )(w)
        np.testing.assert_allclose(gf, gd, rtol=2e-4, atol=2e-6)
    # Bucket: the tails as one more entry each (hand-worked against the
    # dense divergence of the k + 1 buckets).
    tail_s = jnp.log1p(-jnp.sum(jnp.exp(gathered), -1, keepdims=True))
    tail_t = jnp.log1p(-jnp.sum(jnp.exp(teacher), -1, keepdims=True))
    buckets = (
        jnp.concatenate([gathered, tail_s], -1),
        jnp.concatenate([teacher, tail_t], -1),
    )
    np.testing.assert_allclose(
        jp.sparse_divergence(
            student, idx, teacher, divergence="alpha", alpha=0.7, tail="bucket"
        ),
        jp.alpha_divergence(*buckets, alpha=0.7),
        rtol=2e-5,
    )


def test_bad_input():
    x, w, rx, rw = _heads()
    rw_other = jnp.zeros((5, 30))
    with pytest.raises(ValueError, match="`divergence`"):
        jp.fused_linear_divergence(x, w, rx, rw, divergence="hellinger")
    with pytest.raises(ValueError, match=r"`w` and `ref_w`"):
        jp.fused_linear_divergence(x, w, rx, rw_other, divergence="alpha")
    jp.fused_linear_divergence(x, w, rx, rw_other, divergence="uld")  # may differ
    with pytest.raises(ValueError, match="`direction`"):
        jp.fused_linear_divergence(x, w, rx, rw, divergence="js", direction="reverse")
    with pytest.raises(ValueError, match="`top_k`"):
        jp.fused_linear_divergence(x, w, rx, rw, divergence="kl", top_k=3)
    with pytest.raises(ValueError, match="`alpha`"):
        jp.fused_linear_divergence(x, w, rx, rw, divergence="alpha", alpha=2.0)
    with pytest.raises(ValueError, match="`skew`"):
        jp.fused_linear_divergence(x, w, rx, rw, divergence="skew_kl", skew=-1)
    with pytest.raises(ValueError, match="`beta`"):
        jp.fused_linear_divergence(x, w, rx, rw, divergence="js", beta=1.0)
    with pytest.raises(TypeError, match="`divergence`"):
        jax.jit(lambda d: jp.fused_linear_divergence(x, w, rx, rw, divergence=d))(
            jnp.zeros(())
        )
    student = jax.nn.log_softmax(x @ w)
    idx, teacher = jnp.zeros((2, 5, 1), jnp.int32), jnp.zeros((2, 5, 1))
    with pytest.raises(ValueError, match="uld_distance"):
        jp.sparse_divergence(student, idx, teacher, divergence="uld")
    with pytest.raises(ValueError, match="uld_distance"):
        jp.fused_linear_sparse_divergence(x, w, idx, teacher, divergence="uld")
