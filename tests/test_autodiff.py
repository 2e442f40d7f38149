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
from tests import helpers

H, HR, V = 4, 3, 9


def heads(positions, seed=0):
    return helpers.random_heads(positions, H, HR, V, seed=seed)


def materialised(kind, x, w, rx, rw, **kw):
    plain = jp.kl_divergence if kind == "kl" else jp.js_divergence
    return helpers.materialised(plain, x, w, rx, rw, **kw)


def fused(kind, x, w, rx, rw, **kw):
    f = jp.fused_linear_kl_divergence if kind == "kl" else jp.fused_linear_js_divergence
    return f(x, w, rx, rw, chunk_size=3, **kw)


def scalar(fn, kind, reduction):
    """A scalar loss from ``fn``; "none" is weighted so positions differ."""

    def f(x, w, rx, rw):
        out = fn(kind, x, w, rx, rw, reduction=reduction)
        if reduction == "none":
            out = helpers.position_weighted_sum(out)
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


# ---------------------------------------------------------------------------
# Second derivatives and temperature gradients at −inf entries
# ---------------------------------------------------------------------------

# p and q share a zero (−inf) entry; the reference works on the support only.
P = np.array([0.5, 0.3, 0.2, 0.0])
Q = np.array([0.25, 0.15, 0.6, 0.0])


def support_formula(kind, a, b, beta=0.5):
    """The divergence on the support (finite entries), plain jnp, float64."""
    p, q = jnp.exp(a), jnp.exp(b)
    if kind == "forward":
        return jnp.sum(p * (a - b))
    if kind == "symmetric":
        return 0.5 * jnp.sum((p - q) * (a - b))
    if kind == "entropy":
        return -jnp.sum(p * a)
    m = jnp.log(beta * p + (1 - beta) * q)
    return beta * jnp.sum(p * (a - m)) + (1 - beta) * jnp.sum(q * (b - m))


def ours(kind, a, b, **kw):
    if kind == "forward":
        return jp.kl_divergence(a, b, **kw)
    if kind == "symmetric":
        return jp.kl_divergence(a, b, symmetric=True, **kw)
    if kind == "entropy":
        return jp.entropy(a, mode="penalty", **kw)
    return jp.js_divergence(a, b, beta=0.3, **kw)


@pytest.mark.parametrize("kind", ["forward", "symmetric", "js", "entropy"])
def test_second_derivatives_with_shared_neg_inf_match_float64(kind):
    with jax.enable_x64(True):
        a, b = jnp.log(jnp.asarray(P)), jnp.log(jnp.asarray(Q))
        beta = 0.3

        def f(a, b):
            return ours(kind, a, b)

        def ref(a, b):
            return support_formula(kind, a, b, beta)

        hess = jax.hessian(f, (0, 1))(a, b)
        want = jax.hessian(ref, (0, 1))(a[:3], b[:3])
        for i in range(2):
            for j in range(2):
                h = np.asarray(hess[i][j])
                assert np.all(np.isfinite(h)), (kind, i, j, h)
                np.testing.assert_allclose(h[:3, :3], want[i][j], rtol=1e-9, atol=1e-12)
                # Entries at the shared −inf carry no curvature.
                np.testing.assert_array_equal(h[3], 0.0)
                np.testing.assert_array_equal(h[:, 3], 0.0)
        # grad of grad and jvp of grad agree with the Hessian.
        v = jnp.asarray([0.3, -0.2, 0.1, 0.7])
        g = jax.grad(f)
        _, hv = jax.jvp(lambda a: g(a, b), (a,), (v,))
        np.testing.assert_allclose(hv, hess[0][0] @ v, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("kind", ["forward", "symmetric", "js", "entropy"])
def test_temperature_gradient_is_finite_with_neg_inf_entries(kind):
    with jax.enable_x64(True):
        a, b = jnp.log(jnp.asarray(P)), jnp.log(jnp.asarray(Q))
        t = jnp.asarray(2.0)

        def ref(t):
            sa = jax.nn.log_softmax(a[:3] / t)
            sb = jax.nn.log_softmax(b[:3] / t)
            return support_formula(kind, sa, sb, 0.3)

        got = jax.grad(lambda t: ours(kind, a, b, temperature=t))(t)
        want = jax.grad(ref)(t)
        assert np.isfinite(got)
        np.testing.assert_allclose(got, want, rtol=1e-9)
        if kind == "forward":  # the issue's example, against finite differences
            a = jnp.log(jnp.asarray([0.5, 0.5, 0.0]))
            b = jnp.log(jnp.asarray([0.25, 0.75, 0.0]))
            got = jax.grad(lambda t: jp.kl_divergence(a, b, temperature=t))(t)
            eps = 1e-6
            fd = (
                jp.kl_divergence(a, b, temperature=2 + eps)
                - jp.kl_divergence(a, b, temperature=2 - eps)
            ) / (2 * eps)
            np.testing.assert_allclose(got, fd, rtol=1e-6)


def test_fused_temperature_gradient_matches_materialised():
    args = heads((2, 5))
    for kind in ("kl", "js"):
        got = jax.grad(lambda t, k=kind: fused(k, *args, temperature=t))(0.7)
        want = jax.grad(lambda t, k=kind: plain_formula_t(k, *args, t))(0.7)
        np.testing.assert_allclose(got, want, rtol=1e-4)


def plain_formula_t(kind, x, w, rx, rw, t):
    return plain_formula(kind, x / t, w, rx / t, rw, "mean")


def test_python_float_temperature_keeps_float64_digits_under_x64():
    with jax.enable_x64(True):
        a, b = jnp.log(jnp.asarray(P)), jnp.log(jnp.asarray(Q))
        got = jp.kl_divergence(a, b, temperature=0.1)
        want = jp.kl_divergence(a, b, temperature=jnp.float64(0.1))
        assert got.dtype == jnp.float64
        assert float(got) == float(want)


@pytest.mark.parametrize("kind", ["forward", "symmetric", "js", "entropy"])
@pytest.mark.filterwarnings("ignore:.*does not hold log-probabilities")
def test_temperature_one_means_the_same_whatever_its_type(kind):
    # T = 1 uses the log-probs as given (no re-normalisation): the Python number
    # and an array give the same value and the same gradient w.r.t. the inputs
    # (unnormalised on purpose: the raw-logits warning is expected and ignored).
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)  # not normalised
    b = jax.nn.log_softmax(jnp.asarray(rng.normal(size=(3, 5)), jnp.float32))

    def f(a, b, t):
        return ours(kind, a, b, temperature=t)

    for t in (jnp.float32(1.0), jnp.asarray(1.0)):
        np.testing.assert_array_equal(f(a, b, t), f(a, b, 1.0))
        got = jax.grad(f, (0, 1))(a, b, t)
        want = jax.grad(f, (0, 1))(a, b, 1.0)
        for g, e in zip(got, want, strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)
    # d/dT at T = 1 is that of the tempered form (normalised inputs).
    a = jax.nn.log_softmax(a)
    got = jax.grad(f, 2)(a, b, jnp.asarray(1.0))
    eps = 1e-3
    fd = (f(a, b, 1 + eps) - f(a, b, 1 - eps)) / (2 * eps)
    np.testing.assert_allclose(got, fd, rtol=2e-3, atol=1e-5)


# ---------------------------------------------------------------------------
# regularize(track_grad_norms=True): one term's NaN stays in that term
# ---------------------------------------------------------------------------


def test_grad_norms_nan_in_one_term_does_not_spread_and_static_leaves_work():
    def nan_grad(params):  # finite value, NaN gradient (d sqrt at 0 · 0)
        return jnp.sqrt(jnp.sum(params["w"] * 0.0))

    def loss_fn(params, batch):
        return jnp.sum(params["act"](params["w"] @ batch["x"]) ** 2)

    params = {"w": jnp.asarray([[1.0, -2.0], [0.5, 3.0]]), "act": jax.nn.relu}
    batch = {"x": jnp.asarray([1.0, 2.0])}
    penalties = [
        jp.Penalty(jp.l2, inputs=(lambda p, b, o: p["w"],), weight=0.5, name="l2"),
        jp.Penalty(nan_grad, inputs=("params",), weight=1.0, name="bad"),
    ]
    f = jp.regularize(loss_fn, penalties, track_grad_norms=True)
    jitted = jax.jit(lambda w, batch: f({"w": w, "act": jax.nn.relu}, batch))
    for run in (f, lambda p, b: jitted(p["w"], b)):
        _, aux = run(params, batch)
        l2_norm = aux["penalties"]["l2"]["grad_norm"]
        want = 0.5 * float(optax_norm(jax.grad(lambda w: jp.l2(w))(params["w"])))
        np.testing.assert_allclose(l2_norm, want, rtol=1e-6)
        assert np.isnan(aux["penalties"]["bad"]["grad_norm"])


def optax_norm(x):
    return jnp.sqrt(jnp.sum(jnp.square(x)))


# ---------------------------------------------------------------------------
# Edge values: k3 at π(x) = 0, spectral orthogonality of no rows
# ---------------------------------------------------------------------------


def test_k3_with_impossible_token_under_the_policy_is_inf_not_nan():
    logp = jnp.asarray([-jnp.inf, -1.0])
    ref = jnp.asarray([-2.0, -1.5])
    values = jp.kl_estimate(logp, ref, estimator="k3", reduction="none")
    assert np.isposinf(values[0])
    r = np.exp(-0.5)
    np.testing.assert_allclose(values[1], r - 1 - np.log(r), rtol=1e-6)
    g = jax.grad(lambda lp: jp.kl_estimate(lp, ref, reduction="sum"))(logp)
    assert np.isneginf(g[0]) and np.isfinite(g[1])
    np.testing.assert_allclose(g[1], 1 - r, rtol=1e-6)  # d/dlogp = 1 − r
    # The reference impossible instead: (r − 1) − log r → +inf, gradient finite.
    v = jp.kl_estimate(jnp.asarray([-1.0]), jnp.asarray([-jnp.inf]), reduction="none")
    assert np.isposinf(v[0])


def test_spectral_orthogonality_of_zero_rows_is_zero():
    x = jnp.zeros((0, 5))
    for mode in ("soft", "hard", "spectral"):
        assert float(jp.orthogonality(x, mode=mode)) == 0.0
    assert np.all(jax.grad(lambda x: jp.orthogonality(x, mode="spectral"))(x) == 0)


@pytest.mark.parametrize("kind", ["forward", "symmetric", "js", "entropy"])
def test_forward_mode_of_the_plain_divergences(kind):
    # jax.jvp, jax.jacfwd and jax.linearize (optax's KL supports them) against
    # the divergence written with jnp on the support, in float64.
    with jax.enable_x64(True):
        a, b = jnp.log(jnp.asarray(P)), jnp.log(jnp.asarray(Q))
        va, vb = jnp.asarray([0.3, -0.2, 0.1, 0.7]), jnp.asarray([-0.1, 0.4, 0.2, 5.0])
        _, got = jax.jvp(lambda a, b: ours(kind, a, b), (a, b), (va, vb))
        _, want = jax.jvp(
            lambda a, b: support_formula(kind, a, b, 0.3),
            (a[:3], b[:3]),
            (va[:3], vb[:3]),
        )
        np.testing.assert_allclose(got, want, rtol=1e-12)
        jac = jax.jacfwd(lambda a: ours(kind, a, b))(a)
        np.testing.assert_allclose(
            jac, jax.grad(lambda a: ours(kind, a, b))(a), rtol=1e-12
        )
        _, lin = jax.linearize(lambda a: ours(kind, a, b), a)
        np.testing.assert_allclose(lin(va), jac @ va, rtol=1e-12)
        # With a traced temperature too.
        t = jnp.asarray(1.7)
        _, got_t = jax.jvp(lambda t: ours(kind, a, b, temperature=t), (t,), (1.0,))
        want_t = jax.grad(lambda t: ours(kind, a, b, temperature=t))(t)
        np.testing.assert_allclose(got_t, want_t, rtol=1e-12)
