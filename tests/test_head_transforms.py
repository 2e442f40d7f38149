"""Soft-capped, scaled and biased heads on the fused paths.

Every fused function that takes ``bias``, ``logit_scale`` and ``softcap`` (and
the reference head's ``ref_*``) equals its dense counterpart on the
materialised model logits z = c · tanh(s · (x @ w + b) / c), in value and in
the gradients w.r.t. every array, the bias, scale and soft-cap included.
"""

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

POSITIONS, H, H_REF, V, V_REF = (2, 5), 6, 7, 24, 30
RTOL, ATOL = 2e-5, 1e-6


def transformed(z, bias, scale, cap):
    """The model logits of raw logits z, materialised (HF Cohere / Gemma order)."""
    bias = bias.reshape((1,) * (z.ndim - 1) + bias.shape)
    return cap * jnp.tanh(scale * (z + bias) / cap)


def make_inputs(v_ref=V, dtype=jnp.float32):
    """(x, w, rx, rw, bias, ref_bias, scale, cap, ref_scale, ref_cap)."""
    x, w, rx, _ = random_heads(POSITIONS, H, H_REF, V, logit_std=3.0, dtype=dtype)
    rng = np.random.default_rng(1)
    rw = jnp.asarray(rng.normal(size=(H_REF, v_ref)) * 3 / np.sqrt(H_REF), dtype)
    bias = jnp.asarray(rng.normal(size=V), dtype)
    ref_bias = jnp.asarray(rng.normal(size=v_ref), dtype)
    scalars = (jnp.asarray(s, dtype) for s in (1.5, 4.0, 0.7, 3.0))
    return (x, w, rx, rw, bias, ref_bias, *scalars)


# name: (fused, dense, their shared options)
CASES = {
    "kl": (jp.fused_linear_kl_divergence, jp.kl_divergence, {}),
    "js": (jp.fused_linear_js_divergence, jp.js_divergence, {"beta": 0.3}),
    "alpha": (
        functools.partial(jp.fused_linear_divergence, divergence="alpha"),
        jp.alpha_divergence,
        {"alpha": 0.3},
    ),
    "uld": (
        functools.partial(jp.fused_linear_divergence, divergence="uld"),
        jp.uld_distance,
        {},
    ),
}


@functools.partial(jax.jit, static_argnames=("name", "reduction", "fused"))
def _loss_and_grads(args, temperature, *, name, reduction, fused):
    fused_fn, dense_fn, options = CASES[name]

    def loss(args):
        x, w, rx, rw, b, rb, s, c, rs, rc = args
        if fused:
            values = fused_fn(
                x,
                w,
                rx,
                rw,
                bias=b,
                ref_bias=rb,
                logit_scale=s,
                ref_logit_scale=rs,
                softcap=c,
                ref_softcap=rc,
                temperature=temperature,
                reduction=reduction,
                chunk_size=3,
                **options,
            )
        else:
            values = dense_fn(
                transformed(x @ w, b, s, c),
                transformed(rx @ rw, rb, rs, rc),
                from_logits=True,
                temperature=temperature,
                reduction=reduction,
                **options,
            )
        return position_weighted_sum(values) if reduction == "none" else values

    return jax.value_and_grad(loss)(args)


@pytest.mark.parametrize(
    ("name", "reduction"),
    [
        ("kl", "mean"),
        ("kl", "none"),
        ("js", "mean"),
        ("alpha", "none"),
        ("uld", "none"),
    ],
)
def test_fused_matches_materialised_transformed_logits(name, reduction):
    args = make_inputs(V_REF if name == "uld" else V)
    for temperature in (1.0, 2.0):
        t = jnp.asarray(temperature)
        got = _loss_and_grads(args, t, name=name, reduction=reduction, fused=True)
        want = _loss_and_grads(args, t, name=name, reduction=reduction, fused=False)
        # values, and gradients w.r.t. x, w, rx, rw, both biases, scales, caps
        for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)


def _ce(logits, labels, smoothing):
    lp = jax.nn.log_softmax(logits)
    nll = -jnp.take_along_axis(lp, labels[..., None], -1)[..., 0]
    return jnp.mean((1 - smoothing) * nll - smoothing * jnp.mean(lp, -1))


@functools.partial(jax.jit, static_argnames="fused")
def _labels_loss(args, labels, fused):
    def loss(args):
        x, w, rx, rw, b, rb, s, c, rs, rc = args
        if fused:
            return jp.fused_linear_kl_divergence(
                x, w, rx, rw, labels=labels, soft_weight=0.5, hard_weight=0.7,
                label_smoothing=0.1, temperature=2.0, chunk_size=3, bias=b,
                ref_bias=rb, logit_scale=s, ref_logit_scale=rs, softcap=c,
                ref_softcap=rc,
            )  # fmt: skip
        z, rz = transformed(x @ w, b, s, c), transformed(rx @ rw, rb, rs, rc)
        div = jp.kl_divergence(z, rz, from_logits=True, temperature=2.0)
        ce = _ce(z, labels, 0.1)  # untempered, but transformed
        return 0.5 * div + 0.7 * ce, {"divergence": div, "cross_entropy": ce}

    return jax.value_and_grad(loss, has_aux=True)(args)


def test_labels_use_the_transformed_student_logits():
    args = make_inputs()
    labels = jax.random.randint(jax.random.key(3), POSITIONS, 0, V)
    got, want = _labels_loss(args, labels, True), _labels_loss(args, labels, False)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)


def test_bias_gradient_without_scale_or_softcap_and_only_one_head():
    x, w, rx, rw, b, *_ = make_inputs()

    def fused(x, w, b):
        return jp.fused_linear_kl_divergence(x, w, rx, rw, bias=b, chunk_size=4)

    def dense(x, w, b):
        return jp.kl_divergence(x @ w + b[None, None], rx @ rw, from_logits=True)

    got = jax.jit(jax.value_and_grad(fused, argnums=(0, 1, 2)))(x, w, b)
    want = jax.jit(jax.value_and_grad(dense, argnums=(0, 1, 2)))(x, w, b)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_float64_gradients_match_finite_differences(reduction):
    with jax.enable_x64(True):
        args = make_inputs(dtype=jnp.float64)

        def f(*args):
            x, w, rx, rw, b, rb, s, c, rs, rc = args
            values = jp.fused_linear_js_divergence(
                x, w, rx, rw, bias=b, ref_bias=rb, logit_scale=s,
                ref_logit_scale=rs, softcap=c, ref_softcap=rc, temperature=1.5,
                reduction=reduction, chunk_size=4,
            )  # fmt: skip
            return position_weighted_sum(values) if reduction == "none" else values

        assert_grads_match_finite_differences(jax.jit(f), args, tol=1e-6)


# ---------------------------------------------------------------------------
# The student-only paths: sampled-token log-probs, top-k teachers
# ---------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames="fused")
def _token_logprobs(x, w, b, s, c, tokens, fused):
    def loss(x, w, b, s, c):
        if fused:
            lp, ent = jp.fused_linear_token_logprobs(
                x, w, tokens, bias=b, logit_scale=s, softcap=c, temperature=0.8,
                entropy=True, chunk_size=3,
            )  # fmt: skip
        else:
            a = jax.nn.log_softmax(transformed(x @ w, b, s, c) / 0.8)
            lp = jnp.take_along_axis(a, tokens[..., None], -1)[..., 0]
            ent = -jnp.sum(jnp.exp(a) * a, -1)
        return position_weighted_sum(lp) + jnp.sum(ent), (lp, ent)

    return jax.value_and_grad(loss, argnums=range(5), has_aux=True)(x, w, b, s, c)


def test_token_logprobs_match_materialised_transformed_logits():
    x, w, _, _, b, _, s, c, _, _ = make_inputs()
    tokens = jax.random.randint(jax.random.key(4), POSITIONS, 0, V)
    got = _token_logprobs(x, w, b, s, c, tokens, True)
    want = _token_logprobs(x, w, b, s, c, tokens, False)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)


def _teacher(k=5):
    rng = np.random.default_rng(2)
    idx = np.stack([rng.permutation(V)[:k] for _ in range(10)]).reshape(2, 5, k)
    teacher = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(2, 5, V)), jnp.float32))
    return jnp.asarray(idx), jnp.take_along_axis(teacher, jnp.asarray(idx), -1)


SPARSE_CASES = {
    "kl": (jp.fused_linear_sparse_kl_divergence, jp.sparse_kl_divergence, {}),
    "js": (jp.fused_linear_sparse_js_divergence, jp.sparse_js_divergence, {}),
    "alpha": (
        functools.partial(jp.fused_linear_sparse_divergence, divergence="alpha"),
        functools.partial(jp.sparse_divergence, divergence="alpha"),
        {"tail": "bucket"},
    ),
}


@functools.partial(jax.jit, static_argnames=("name", "reduction", "fused"))
def _sparse_loss(args, idx, teacher, *, name, reduction, fused):
    fused_fn, dense_fn, options = SPARSE_CASES[name]

    def loss(args):
        x, w, b, s, c = args
        if fused:
            values = fused_fn(
                x, w, idx, teacher, bias=b, logit_scale=s, softcap=c,
                reduction=reduction, chunk_size=3, **options,
            )  # fmt: skip
        else:
            student = jax.nn.log_softmax(transformed(x @ w, b, s, c))
            values = dense_fn(student, idx, teacher, reduction=reduction, **options)
        return position_weighted_sum(values) if reduction == "none" else values

    return jax.value_and_grad(loss)(args)


@pytest.mark.parametrize(
    ("name", "reduction"), [("kl", "mean"), ("js", "none"), ("alpha", "none")]
)
def test_sparse_match_materialised_transformed_logits(name, reduction):
    x, w, _, _, b, _, s, c, _, _ = make_inputs()
    idx, teacher = _teacher()
    args = (x, w, b, s, c)
    got = _sparse_loss(args, idx, teacher, name=name, reduction=reduction, fused=True)
    want = _sparse_loss(args, idx, teacher, name=name, reduction=reduction, fused=False)
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, e, rtol=RTOL, atol=ATOL)


def test_student_only_paths_float64_finite_differences():
    with jax.enable_x64(True):
        x, w, _, _, b, _, s, c, _, _ = make_inputs(dtype=jnp.float64)
        idx, teacher = _teacher()
        teacher = teacher.astype(jnp.float64)
        tokens = jnp.arange(10).reshape(POSITIONS) % V

        def logprobs(x, w, b, s, c):
            lp = jp.fused_linear_token_logprobs(
                x, w, tokens, bias=b, logit_scale=s, softcap=c, chunk_size=4
            )
            return position_weighted_sum(lp)

        def sparse(x, w, b, s, c):
            return jp.fused_linear_sparse_kl_divergence(
                x, w, idx, teacher, bias=b, logit_scale=s, softcap=c, chunk_size=4
            )

        for f in (logprobs, sparse):
            args = (x, w, b, s, c)
            assert_grads_match_finite_differences(jax.jit(f), args, tol=1e-6)


# ---------------------------------------------------------------------------
# Compilation, the default program, bad input
# ---------------------------------------------------------------------------


def test_new_scale_or_softcap_never_recompiles():
    x, w, rx, rw, b, rb, *_ = make_inputs()
    idx, teacher = _teacher()
    tokens = jnp.zeros(POSITIONS, jnp.int32)
    calls = (
        lambda s, c: jp.fused_linear_kl_divergence(
            x, w, rx, rw, bias=b, logit_scale=s, softcap=c, ref_softcap=c
        ),
        lambda s, c: jp.fused_linear_token_logprobs(
            x, w, tokens, logit_scale=s, softcap=c
        ),
        lambda s, c: jp.fused_linear_sparse_kl_divergence(
            x, w, idx, teacher, logit_scale=s, softcap=c
        ),
    )
    s, c = jnp.asarray(2.0, jnp.float32), jnp.asarray(3.0, jnp.float32)
    for call in calls:
        call(1.5, 4.0)  # compiles once
        with count_compiles() as compiles:
            call(0.5, 30.0)
            call(s, c)  # float32 arrays share the program of Python numbers
        assert compiles() == 0


def test_plain_head_adds_no_operation():
    x, w, rx, rw, b, *_ = make_inputs()

    def jaxpr(**options):
        return str(
            jax.make_jaxpr(
                lambda x: jp.fused_linear_kl_divergence(x, w, rx, rw, **options)
            )(x)
        )

    assert "tanh" not in jaxpr() and "tanh" not in jaxpr(bias=b)
    assert "tanh" in jaxpr(softcap=5.0)
    assert jaxpr() == jaxpr(bias=None, logit_scale=None, softcap=None)


def test_traced_softcap_at_most_zero_is_nan():
    x, w, rx, rw, *_ = make_inputs()
    f = jax.jit(
        lambda c: jp.fused_linear_kl_divergence(x, w, rx, rw, softcap=c, chunk_size=3)
    )
    assert np.isnan(f(0.0)) and np.isnan(f(-1.0)) and np.isfinite(f(2.0))


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"softcap": 0.0}, ValueError, "`softcap` to be a finite number > 0"),
        ({"ref_softcap": -1.0}, ValueError, "`ref_softcap` to be a finite number > 0"),
        ({"softcap": np.inf}, ValueError, "`softcap` to be a finite number > 0"),
        ({"softcap": jnp.ones(2)}, ValueError, "`softcap` to be a scalar"),
        ({"logit_scale": 0}, ValueError, "`logit_scale` to be a finite nonzero"),
        ({"ref_logit_scale": np.nan}, ValueError, "`ref_logit_scale` to be a finite"),
        ({"logit_scale": "2"}, ValueError, "`logit_scale` to be a number"),
        (
            {"bias": jnp.zeros(V + 1)},
            ValueError,
            r"`bias` to have shape \[V\] = \(24,\)",
        ),
        ({"ref_bias": jnp.zeros((1, V))}, ValueError, r"`ref_bias` to have shape"),
        ({"bias": jnp.zeros(V, jnp.int32)}, TypeError, "`bias` to be a floating"),
    ],
)
def test_bad_options_raise(options, error, match):
    x, w, rx, rw, *_ = make_inputs()
    with pytest.raises(error, match=match):
        jp.fused_linear_kl_divergence(x, w, rx, rw, **options)
    student_only = {k: v for k, v in options.items() if not k.startswith("ref_")}
    if student_only:
        tokens = jnp.zeros(POSITIONS, jnp.int32)
        with pytest.raises(error, match=match):
            jp.fused_linear_token_logprobs(x, w, tokens, **student_only)
        idx, teacher = _teacher()
        with pytest.raises(error, match=match):
            jp.fused_linear_sparse_divergence(
                x, w, idx, teacher, divergence="kl", **student_only
            )
