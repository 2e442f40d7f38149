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
    # A non-float leaf is skipped (an equinox module's activation, a name)...
    assert jp.l2({"w": jnp.ones(2), "name": "dense"}) == 2.0
    # ...but a tree with nothing to penalise names its first leaf.
    with pytest.raises(TypeError, match=r"x\['name'\]"):
        jp.l2({"name": "dense"})
    with pytest.raises(TypeError, match="center"):
        jp.l2({"w": jnp.ones(2)}, center={"w": "zero"})


# ---------------------------------------------------------------------------
# Numeric options: one scalar rule, every float dtype (bfloat16 included)
# ---------------------------------------------------------------------------

_X, _W = (
    jnp.asarray(RNG.normal(size=(2, 4)), jnp.float32),
    jnp.asarray(0.5 * RNG.normal(size=(4, 8)), jnp.float32),
)
_LP, _REF = (
    -jnp.asarray(RNG.uniform(0.1, 3, size=(2, 5)), jnp.float32),
    -jnp.asarray(RNG.uniform(0.1, 3, size=(2, 5)), jnp.float32),
)
_PARAMS = {"w": jnp.asarray([0.5, -1.0, 2.0]), "b": jnp.asarray([0.25])}


def _l2_loss(params, batch):
    return jnp.sum(params["w"] ** 2)


def _regularized(w, *, override):
    fixed = 1.0 if override else w
    penalty = jp.Penalty(jp.l1, inputs=("params",), name="l1", weight=fixed)
    f = jp.regularize(_l2_loss, [penalty])
    return f(_PARAMS, None, weights={"l1": w} if override else None)[0]


def _transform(tx):
    zeros = jax.tree.map(jnp.zeros_like, _PARAMS)
    return tx.update(zeros, tx.init(_PARAMS), _PARAMS)[0]


def _fused(**kw):
    out = jp.fused_linear_kl_divergence(
        _X, _W, _X[::-1], _W, labels=jnp.asarray([1, 5]), **kw
    )
    return out[0]


def _score(x):
    return jnp.sum(jnp.sin(x), axis=-1)


def _controller(c):
    ctl = jp.adaptive_kl_controller(c, target=6.0, horizon=100.0)
    return ctl.update(ctl.init(), 9.0, 10).coef


# Every numeric option, as `name: (value exact in bfloat16, fn(value))`.
SCALAR_OPTIONS = {
    "temperature": (1.5, lambda s: jp.kl_divergence(A, B, temperature=s)),
    "entropy temperature": (0.75, lambda s: jp.entropy(A, temperature=s)),
    "fused temperature": (1.5, lambda s: _fused(temperature=s)),
    "weights=": (0.75, lambda s: _regularized(s, override=True)),
    "soft_weight": (0.75, lambda s: _fused(soft_weight=s)),
    "hard_weight": (0.75, lambda s: _fused(hard_weight=s)),
    "normalizer": (6.0, lambda s: jp.aggregate(_LP, normalizer=s)),
    "max_value": (0.5, lambda s: jp.kl_estimate(_LP, _REF, max_value=s)),
    "max_log_ratio": (0.5, lambda s: jp.kl_estimate(_LP, _REF, max_log_ratio=s)),
    "init_coef": (0.125, _controller),
    "coef": (0.25, lambda s: jp.kl_penalized_rewards(_LP, _LP, _REF, s)),
    "clip": (0.5, lambda s: jp.l2(_PARAMS, clip=s)),
    "l1_ratio": (0.25, lambda s: jp.elastic_net(_PARAMS, l1_ratio=s)),
    "target_norm": (0.5, lambda s: jp.gradient_penalty(_score, _X, target_norm=s)),
    "target": (0.5, lambda s: jp.output_magnitude_penalty(_X, target=s)),
    "add_penalty_gradient weight": (
        0.25,
        lambda s: _transform(jp.add_penalty_gradient(jp.l2, s)),
    ),
    "add_l2_sp_decay weight": (
        0.25,
        lambda s: _transform(
            jp.add_l2_sp_decay(s, jax.tree.map(jnp.zeros_like, _PARAMS))
        ),
    ),
    "add_elastic_net_decay l1_ratio": (
        0.25,
        lambda s: _transform(jp.add_elastic_net_decay(0.5, s)),
    ),
}


@pytest.mark.parametrize("name", SCALAR_OPTIONS)
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, np.float32])
def test_numeric_options_take_any_float_scalar_concrete_or_traced(name, dtype):
    # The value is exact in bfloat16, so every dtype must give the float32
    # result: NumPy does not count bfloat16 as a number, JAX does.
    value, fn = SCALAR_OPTIONS[name]
    want = fn(jnp.float32(value))
    for scalar in (jnp.asarray(value, dtype), np.asarray(value, dtype)[()]):
        jax.tree.map(
            lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-6),
            fn(scalar),
            want,
        )
        jax.tree.map(
            lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-6),
            jax.jit(fn)(scalar),
            want,
        )


def test_fixed_penalty_weights_take_a_bfloat16_scalar():
    want = _regularized(0.75, override=False)  # 1.5² + 0.5² + … = Σw² + 0.75·Σ|p|
    np.testing.assert_allclose(want, 0.25 + 1 + 4 + 0.75 * 3.75, rtol=1e-6)
    for dtype in (jnp.bfloat16, jnp.float16):
        got = _regularized(jnp.asarray(0.75, dtype), override=False)
        np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(ValueError, match="`weight`"):
        jp.Penalty(jp.l1, inputs=("params",), weight=jnp.asarray(-1.0, jnp.bfloat16))
    with pytest.raises(ValueError, match="`temperature`"):
        jp.entropy(A, temperature=jnp.asarray(jnp.inf, jnp.bfloat16))


# ---------------------------------------------------------------------------
# An empty vocabulary: no distribution, a clear error naming the argument
# ---------------------------------------------------------------------------


def test_an_empty_vocabulary_is_refused_naming_the_argument():
    # Not "zero-size array to reduction operation max which has no identity".
    empty = jnp.zeros((3, 0))
    dense = [
        lambda: jp.kl_divergence(empty, empty, from_logits=True),
        lambda: jp.kl_divergence(empty, empty, temperature=2.0),
        lambda: jp.js_divergence(empty, empty),
        lambda: jp.entropy(empty.T, axis=0),
    ]
    for f in dense:
        with pytest.raises(ValueError, match=r"at least one entry along .*`axis`"):
            f()
    x, w = jnp.ones((3, 2)), jnp.ones((2, 0))
    heads = [
        lambda: jp.fused_linear_kl_divergence(x, w, x, w),
        lambda: jp.fused_linear_js_divergence(x, w, x, w, labels=jnp.zeros(3, int)),
        lambda: jp.fused_linear_token_logprobs(x, w, jnp.zeros(3, int)),
        lambda: jp.fused_linear_sparse_kl_divergence(
            x, w, jnp.zeros((3, 1), int), jnp.zeros((3, 1))
        ),
    ]
    for f in heads:
        with pytest.raises(ValueError, match=r"`w` \[H, V\] to have a vocabulary"):
            f()


# ---------------------------------------------------------------------------
# Array arguments that are not arrays: the argument is named
# ---------------------------------------------------------------------------

_HX, _HW = jnp.ones((2, 4)), jnp.ones((4, 5))
_ARRAY_ARGS = {
    "kl_divergence": (jp.kl_divergence, (A, B), ("p_logprobs", "q_logprobs")),
    "js_divergence": (jp.js_divergence, (A, B), ("p_logprobs", "q_logprobs")),
    "entropy": (jp.entropy, (A,), ("logprobs",)),
    "kl_estimate": (jp.kl_estimate, (_LP, _REF), ("logprobs", "ref_logprobs")),
    "aggregate": (jp.aggregate, (_LP,), ("values",)),
    "l2": (jp.l2, (_LP,), ("x",)),
    "kl_penalized_rewards": (
        lambda r, lp, ref, **kw: jp.kl_penalized_rewards(r, lp, ref, 0.1, **kw),
        (_LP, _LP, _REF),
        ("rewards", "logprobs", "ref_logprobs"),
    ),
    "fused_linear_kl_divergence": (
        jp.fused_linear_kl_divergence,
        (_HX, _HW, _HX, _HW),
        ("x", "w", "ref_x", "ref_w"),
    ),
}
_NOT_ARRAYS = [None, {"a": 1.0}, [1.0, None]]


@pytest.mark.parametrize("name", _ARRAY_ARGS)
@pytest.mark.parametrize("bad", _NOT_ARRAYS, ids=["None", "dict", "list-None"])
def test_a_non_array_argument_is_named(name, bad):
    fn, args, names = _ARRAY_ARGS[name]
    for i, arg in enumerate(names):
        if name == "l2" and bad is not None:
            continue  # a pytree of params: a dict or list of leaves is valid
        wrong = list(args)
        wrong[i] = bad
        with pytest.raises(TypeError, match=f"Expected `{arg}` to be"):
            fn(*wrong)
    if name in ("l2", "aggregate", "fused_linear_kl_divergence", "entropy"):
        return  # l2 has no mask; the others' `where` is covered by kl below
    if bad is not None:  # where=None is "no mask"
        with pytest.raises(TypeError, match="Expected `where` to be a boolean"):
            fn(*args, where=bad)


def test_where_of_every_family_is_named():
    for fn in (
        lambda m: jp.aggregate(_LP, where=m),
        lambda m: jp.entropy(A, where=m),
        lambda m: jp.fused_linear_kl_divergence(_HX, _HW, _HX, _HW, where=m),
    ):
        for bad in _NOT_ARRAYS[1:]:
            with pytest.raises(TypeError, match="Expected `where` to be a boolean"):
                fn(bad)


@pytest.mark.parametrize("bad", [{"a": 1}, [1, None]], ids=["dict", "list-None"])
def test_ids_that_are_not_arrays_are_named(bad):
    """Hard `labels` of the fused heads and the `tokens` of the token
    log-probs are named when they are no array (None is "no labels")."""
    with pytest.raises(TypeError, match="Expected `labels` to be an integer array"):
        jp.fused_linear_kl_divergence(_HX, _HW, _HX, _HW, labels=bad)
    with pytest.raises(TypeError, match="Expected `labels` to be an integer array"):
        jp.fused_linear_js_divergence(_HX, _HW, _HX, _HW, labels=bad)
    with pytest.raises(TypeError, match="Expected `tokens` to be an integer array"):
        jp.fused_linear_token_logprobs(_HX, _HW, bad)
    with pytest.raises(TypeError, match="Expected `tokens` to be an integer array"):
        jp.fused_linear_token_logprobs(_HX, _HW, None)
