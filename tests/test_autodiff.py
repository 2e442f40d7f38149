"""Autodiff paths: every subset of differentiated inputs, in any order and
nesting, second derivatives and temperature gradients at −inf entries.

The fused divergences' gradients used to depend on which gradients had been
taken earlier in the same process (a cached custom-VJP trace reused for a
different set of differentiated inputs). These tests run many combinations in
ONE process and compare each with the materialised path.
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpenalties as jp

H, HR, V = 4, 3, 9


def heads(positions, seed=0):
    rng = np.random.default_rng(seed)
    return (
        jnp.asarray(rng.normal(size=positions + (H,)), jnp.float32),
        jnp.asarray(rng.normal(size=(H, V)), jnp.float32),
        jnp.asarray(rng.normal(size=positions + (HR,)), jnp.float32),
        jnp.asarray(rng.normal(size=(HR, V)), jnp.float32),
    )


def materialised(kind, x, w, rx, rw, **kw):
    plain = jp.kl_divergence if kind == "kl" else jp.js_divergence
    return plain(jax.nn.log_softmax(x @ w), jax.nn.log_softmax(rx @ rw), **kw)


def fused(kind, x, w, rx, rw, **kw):
    f = jp.fused_linear_kl_divergence if kind == "kl" else jp.fused_linear_js_divergence
    return f(x, w, rx, rw, chunk_size=3, **kw)


def scalar(fn, kind, reduction):
    """A scalar loss from ``fn``; "none" is weighted so positions differ."""

    def f(x, w, rx, rw):
        out = fn(kind, x, w, rx, rw, reduction=reduction)
        if reduction == "none":
            out = jnp.sum(out * jnp.arange(1, out.size + 1).reshape(out.shape))
        return out

    return f


def nest(f, how):
    """``f`` over [B, T, H] batches, summed over B in a scan or a vmap, or
    applied to the flattened batch under jit, or as is."""
    if how == "scan":

        def g(x, w, rx, rw):
            def body(c, s):
                return c + f(s[0], w, s[1], rw), None

            return jax.lax.scan(body, jnp.zeros(()), (x, rx))[0]

        return g
    if how == "vmap":
        return lambda x, w, rx, rw: jnp.sum(
            jax.vmap(f, in_axes=(0, None, 0, None))(x, w, rx, rw)
        )
    if how == "jit":
        return jax.jit(f)
    return f


SUBSETS = [s for r in range(1, 5) for s in itertools.combinations(range(4), r)]


def test_issue_repro_gradient_does_not_depend_on_earlier_calls():
    k = jax.random.split(jax.random.key(0), 4)
    x, rx = jax.random.normal(k[0], (2, 8, 4)), jax.random.normal(k[2], (2, 8, 4))
    w, rw = jax.random.normal(k[1], (4, 9)), jax.random.normal(k[3], (4, 9))
    kl = jp.fused_linear_kl_divergence

    def loss(x, rx):
        body = lambda c, s: (c + kl(s[0], w, s[1], rw), None)  # noqa: E731
        return jax.lax.scan(body, 0.0, (x, rx))[0]

    jax.grad(loss, argnums=1)(x, rx)
    jax.grad(loss, argnums=0)(x, rx)
    got = jax.grad(lambda r: kl(x[0], w, r, rw))(rx[0])
    want = jax.grad(
        lambda r: jp.kl_divergence(
            jax.nn.log_softmax(x[0] @ w), jax.nn.log_softmax(r @ rw)
        )
    )(rx[0])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert float(jnp.max(jnp.abs(got))) > 0


@pytest.mark.parametrize(
    "kind,nestings",
    [
        ("kl", [("plain", "mean"), ("scan", "none"), ("jit", "sum"), ("scan", "sum")]),
        ("js", [("vmap", "mean"), ("scan", "mean"), ("plain", "none"), ("jit", "sum")]),
    ],
)
def test_every_subset_of_argnums_in_every_nesting_and_order(kind, nestings):
    # One process, one shuffled order across nestings: each gradient must equal
    # the materialised one whatever ran before it.
    args = heads((2, 5))
    want = {}
    for how, reduction in nestings:
        want_f = nest(scalar(materialised, kind, reduction), how)
        want[how, reduction] = jax.value_and_grad(want_f, (0, 1, 2, 3))(*args)
    cases = [(n, s) for n in nestings for s in SUBSETS]
    rng = np.random.default_rng(1 if kind == "kl" else 2)
    for i in rng.permutation(len(cases)):
        (how, reduction), argnums = cases[i]
        got_f = nest(scalar(fused, kind, reduction), how)
        value, grads = jax.value_and_grad(got_f, argnums)(*args)
        want_value, want_grads = want[how, reduction]
        msg = f"{kind} {how} {reduction} argnums={argnums}"
        np.testing.assert_allclose(value, want_value, rtol=2e-5, err_msg=msg)
        for g, k in zip(grads, argnums, strict=True):
            scale = max(1.0, float(jnp.max(jnp.abs(want_grads[k]))))
            np.testing.assert_allclose(
                g, want_grads[k], rtol=2e-4, atol=2e-5 * scale, err_msg=msg
            )


def test_orders_that_used_to_crash_including_remat():
    # value_and_grad w.r.t. (x, w) through a scan, then x only through a scan,
    # then plain (x, w): "Custom VJP bwd rule must produce an output with the
    # same type" before the fix.
    args = heads((2, 5))
    for kind in ("kl", "js"):
        scan_f = nest(scalar(fused, kind, "mean"), "scan")
        scan_e = nest(scalar(materialised, kind, "mean"), "scan")
        plain_f = lambda x, w, rx, rw, k=kind: fused(k, x[0], w, rx[0], rw)  # noqa: E731
        plain_e = lambda x, w, rx, rw, k=kind: materialised(k, x[0], w, rx[0], rw)  # noqa: E731
        steps = [
            (scan_f, scan_e, (0, 1)),
            (scan_f, scan_e, (0,)),
            (plain_f, plain_e, (0, 1)),
            (jax.checkpoint(scan_f), scan_e, (2, 3)),
            (plain_f, plain_e, (1,)),
            (jax.jit(jax.checkpoint(plain_f)), plain_e, (0, 1, 2, 3)),
        ]
        for f, e, argnums in steps:
            got = jax.value_and_grad(f, argnums)(*args)
            want = jax.value_and_grad(e, argnums)(*args)
            for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
                np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-5)


def plain_formula(kind, x, w, rx, rw, reduction):
    """The divergence written with jnp only (differentiable in any mode)."""
    a, b = jax.nn.log_softmax(x @ w), jax.nn.log_softmax(rx @ rw)
    p, q = jnp.exp(a), jnp.exp(b)
    if kind == "kl":
        values = jnp.sum(p * (a - b), -1)
    else:
        m = jnp.log(0.5 * p + 0.5 * q)
        values = 0.5 * jnp.sum(p * (a - m), -1) + 0.5 * jnp.sum(q * (b - m), -1)
    return jnp.mean(values) if reduction == "mean" else jnp.sum(values)


def test_forward_mode_of_scalar_reductions_matches_materialised():
    args = heads((2, 5))
    tangents = heads((2, 5), seed=3)
    for kind in ("kl", "js"):
        for reduction in ("mean", "sum"):
            f = functools.partial(fused, kind, reduction=reduction)
            e = functools.partial(plain_formula, kind, reduction=reduction)
            _, got = jax.jvp(f, args, tangents)
            _, want = jax.jvp(e, args, tangents)
            np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-5)
