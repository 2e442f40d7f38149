"""Tests for sparse_kl_divergence and sparse_js_divergence (top-k teacher).

References are computed independently in NumPy/SciPy float64: restrict and
renormalise, or append the tail bucket, by hand, then `scipy.special.rel_entr`;
and, for k = V, the dense `jp.kl_divergence` / `jp.js_divergence`.
"""

import functools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxpenalties as jp
from jaxpenalties.large_vocab import sparse_js_divergence, sparse_kl_divergence
from tests.helpers import (
    assert_grads_match_finite_differences,
    count_compiles,
    log_softmax32,
    np_log,
    ref_js,
    ref_kl,
)

LOG2 = np.log(2.0)
POS, V, K = (3, 4), 24, 6  # the main shape: few shapes, few compiles

# name -> (function, keyword arguments)
MODES = {
    "forward": (sparse_kl_divergence, {}),
    "reverse": (sparse_kl_divergence, {"direction": "reverse"}),
    "symmetric": (sparse_kl_divergence, {"symmetric": True}),
    "js": (sparse_js_divergence, {}),
    "js_0.3": (sparse_js_divergence, {"beta": 0.3}),
}
TAILS = ("renormalize", "bucket")
# For the slower tests (each mode compiles its own value and gradient).
SOME = ("forward", "reverse", "js_0.3")
FEW = ("forward", "js_0.3")


def make_case(rng, pos=POS, vocab=V, k=K, shuffle=True, teacher_zeros=0):
    """Dense student log-probs [..., V] and a top-k teacher (indices, log-probs)
    taken from a dense teacher distribution, all float64 NumPy."""
    student = scipy.special.log_softmax(2 * rng.normal(size=pos + (vocab,)), -1)
    teacher = scipy.special.softmax(2 * rng.normal(size=pos + (vocab,)), -1)
    order = np.argsort(-teacher, axis=-1)[..., :k]
    if shuffle:  # the top-k in arbitrary order
        order = rng.permuted(order, axis=-1)
    lq = np_log(np.take_along_axis(teacher, order, -1))
    if teacher_zeros:
        lq[..., k - teacher_zeros :] = -np.inf
    return student, order, lq


def ref_dists(student, idx, lq, tail, temperature=1.0):
    """The two distributions (P student, Q teacher) over k or k+1 buckets."""
    # At T = 1 the student is used as given (it may be a rounded bf16 input).
    dense = student
    if temperature != 1:
        dense = scipy.special.log_softmax(student / temperature, -1)
    g = np.take_along_axis(dense, idx, -1)
    if tail == "renormalize":
        p = scipy.special.softmax(g, -1)
        q = scipy.special.softmax(lq / temperature, -1)
        return p, q
    p, q = np.exp(g), np.exp(lq)
    p_tail = np.maximum(1 - p.sum(-1, keepdims=True), 0)
    q_tail = np.maximum(1 - q.sum(-1, keepdims=True), 0)
    return np.concatenate([p, p_tail], -1), np.concatenate([q, q_tail], -1)


def ref_value(mode, p, q):
    if mode == "forward":
        return ref_kl(p, q)
    if mode == "reverse":
        return ref_kl(q, p)
    if mode == "symmetric":
        return 0.5 * (ref_kl(p, q) + ref_kl(q, p))
    return ref_js(p, q, beta=0.3 if mode == "js_0.3" else 0.5)


def run(mode, student, idx, lq, **kw):
    fn, base = MODES[mode]
    return fn(student, idx, lq, **base, **kw)


def f32(*xs):
    return tuple(jnp.asarray(x, jnp.float32) for x in xs)


# ---------------------------------------------------------------------------
# Values against NumPy/SciPy float64
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("mode", sorted(MODES))
def test_values_match_numpy_reference(mode, tail):
    student, idx, lq = make_case(np.random.default_rng(0))
    s, t = f32(student, lq)
    got = run(mode, s, idx, t, tail=tail, reduction="none")
    assert got.shape == POS and got.dtype == jnp.float32
    want = ref_value(mode, *ref_dists(student, idx, lq, tail))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    assert np.all(want > 1e-3)  # a real test: the values are not all ~0


@pytest.mark.parametrize("tail", TAILS)
def test_float64_matches_to_double_precision(tail):
    student, idx, lq = make_case(np.random.default_rng(1))
    with jax.enable_x64(True):
        for mode in MODES:
            got = run(mode, student, idx, lq, tail=tail, reduction="none")
            assert got.dtype == jnp.float64
            want = ref_value(mode, *ref_dists(student, idx, lq, tail))
            np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("temperature", [0.5, 2.0, "array"])
def test_temperature_tempers_dense_student_then_gathers(temperature):
    student, idx, lq = make_case(np.random.default_rng(2))
    t = jnp.float32(3.0) if temperature == "array" else temperature
    s, q = f32(student, lq)
    for mode in MODES:
        got = run(mode, s, idx, q, temperature=t, reduction="none")
        want = ref_value(mode, *ref_dists(student, idx, lq, "renormalize", float(t)))
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)


def test_temperature_one_of_any_type_is_plain():
    student, idx, lq = make_case(np.random.default_rng(3))
    student, lq = f32(student, lq)
    for tail in TAILS:
        plain = sparse_kl_divergence(student, idx, lq, tail=tail)
        for t in (1, 1.0, jnp.float32(1.0), np.float64(1.0)):
            got = sparse_kl_divergence(student, idx, lq, tail=tail, temperature=t)
            np.testing.assert_allclose(got, plain, rtol=1e-6)


def test_temperature_change_does_not_recompile():
    student, idx, lq = make_case(np.random.default_rng(4))
    s, q = f32(student, lq)
    sparse_kl_divergence(s, idx, q, temperature=2.0)
    with count_compiles() as compiles:
        sparse_kl_divergence(s, idx, q, temperature=3.0)
        sparse_kl_divergence(s, idx, q, temperature=jnp.float32(0.7))
        sparse_js_divergence(s, idx, q, beta=0.2, temperature=5.0)
        assert compiles() == 1  # only the new JS function


# ---------------------------------------------------------------------------
# k = V: the dense divergences exactly (up to rounding)
# ---------------------------------------------------------------------------


def _full_vocab_case(rng):
    student, _, _ = make_case(rng)
    teacher = scipy.special.log_softmax(2 * rng.normal(size=POS + (V,)), -1)
    idx = rng.permuted(np.broadcast_to(np.arange(V), POS + (V,)), axis=-1)
    return student, teacher, idx, np.take_along_axis(teacher, idx, -1)


DENSE = {
    "forward": lambda p, q, **kw: jp.kl_divergence(p, q, **kw),
    "reverse": lambda p, q, **kw: jp.kl_divergence(p, q, direction="reverse", **kw),
    "symmetric": lambda p, q, **kw: jp.kl_divergence(p, q, symmetric=True, **kw),
    "js": lambda p, q, **kw: jp.js_divergence(p, q, **kw),
    "js_0.3": lambda p, q, **kw: jp.js_divergence(p, q, beta=0.3, **kw),
}


@pytest.mark.parametrize("tail", TAILS)
def test_full_vocabulary_equals_dense(tail):
    student, teacher, idx, lq = _full_vocab_case(np.random.default_rng(5))
    s, t, q = f32(student, teacher, lq)
    for mode in MODES:
        got = run(mode, s, idx, q, tail=tail, reduction="none")
        dense = DENSE[mode](s, t, reduction="none")
        np.testing.assert_allclose(got, dense, rtol=1e-5, atol=1e-7)
    # Temperature (renormalize only): tempering the k = V teacher entries is
    # tempering the dense teacher.
    if tail == "renormalize":
        got = sparse_kl_divergence(s, idx, q, temperature=1.7, reduction="none")
        dense = jp.kl_divergence(s, t, temperature=1.7, reduction="none")
        np.testing.assert_allclose(got, dense, rtol=1e-5, atol=1e-7)
    with jax.enable_x64(True):
        for mode in SOME:
            got = run(mode, student, idx, lq, tail=tail, reduction="none")
            dense = DENSE[mode](student, teacher, reduction="none")
            np.testing.assert_allclose(got, dense, rtol=1e-12, atol=1e-15)


def test_full_vocabulary_gradients_equal_dense():
    # bucket at k = V uses the log-probs as given, like the dense function: the
    # same gradient w.r.t. the log-probs. renormalize re-normalises: through a
    # log_softmax of the logits the gradients agree again.
    student, teacher, idx, lq = _full_vocab_case(np.random.default_rng(6))
    x = np.random.default_rng(7).normal(size=POS + (V,))
    with jax.enable_x64(True):
        for mode in FEW:
            g_sparse = jax.grad(lambda a, m=mode: run(m, a, idx, lq, tail="bucket"))(
                student
            )
            g_dense = jax.grad(lambda a, m=mode: DENSE[m](a, teacher))(student)
            np.testing.assert_allclose(g_sparse, g_dense, rtol=1e-10, atol=1e-13)
            g_sparse = jax.grad(
                lambda z, m=mode: run(m, jax.nn.log_softmax(z), idx, lq)
            )(x)
            g_dense = jax.grad(
                lambda z, m=mode: DENSE[m](jax.nn.log_softmax(z), teacher)
            )(x)
            np.testing.assert_allclose(g_sparse, g_dense, rtol=1e-10, atol=1e-13)


# ---------------------------------------------------------------------------
# Ties, permutations, -inf teacher entries, the tail bucket at its limits
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("tail", TAILS)
def test_ties_and_order_of_the_k_entries(tail):
    rng = np.random.default_rng(8)
    student, idx, _ = make_case(rng)
    lq = np.full(POS + (K,), np.log(0.1))  # k equal teacher log-probs (ties)
    lq[..., :2] = np.log(0.05)
    perm = rng.permutation(K)
    s, q = f32(student, lq)
    for mode in MODES:
        got = run(mode, s, idx, q, tail=tail, reduction="none")
        want = ref_value(mode, *ref_dists(student, idx, lq, tail))
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
        # Permuting indices and log-probs together changes nothing.
        permuted = run(mode, s, idx[..., perm], q[..., perm], tail=tail)
        np.testing.assert_allclose(permuted, got.mean(), rtol=1e-5)


@pytest.mark.parametrize("tail", TAILS)
def test_neg_inf_teacher_entries(tail):
    student, idx, lq = make_case(np.random.default_rng(9), teacher_zeros=2)
    s, q = f32(student, lq)
    for mode in MODES:
        got = np.asarray(run(mode, s, idx, q, tail=tail, reduction="none"))
        want = ref_value(mode, *ref_dists(student, idx, lq, tail))
        if mode in ("forward", "symmetric"):
            # The student has mass where the teacher has none: exactly +inf.
            assert np.all(want == np.inf)
            np.testing.assert_array_equal(got, np.inf)
        else:
            assert np.all(np.isfinite(got))
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    # Gradients of the finite ones are finite and match finite differences.
    with jax.enable_x64(True):
        for mode in ("reverse", "js", "js_0.3"):
            fn = functools.partial(run, mode, idx=idx, tail=tail)
            g = jax.grad(lambda a, b, fn=fn: fn(a, lq=b), (0, 1))(student, lq)
            assert all(np.isfinite(gi).all() for gi in g)
            assert_grads_match_finite_differences(
                lambda a, b, fn=fn: fn(a, lq=b), (student, lq), 1e-6, eps=1e-6
            )


def test_bucket_teacher_holding_all_mass_has_an_empty_tail():
    # The teacher's k entries hold all of its mass, or more by rounding: the
    # tail is exactly -inf, never NaN.
    rng = np.random.default_rng(10)
    student, idx, _ = make_case(rng)
    q = scipy.special.softmax(rng.normal(size=POS + (K,)), -1)
    lq = np.log(q) + 1e-6  # the sum is 1 + 1e-6: rounding, not a tail
    lq[0, 0] = -np.inf
    lq[0, 0, 3] = 0.0  # a one-hot teacher: log-sum-exp exactly 0
    q = np.exp(lq) / np.exp(lq).sum(-1, keepdims=True)
    p, _ = ref_dists(student, idx, lq, "bucket")
    qq = np.concatenate([q, np.zeros(POS + (1,))], -1)
    s, t = f32(student, lq)
    rev = sparse_kl_divergence(
        s, idx, t, direction="reverse", tail="bucket", reduction="none"
    )
    np.testing.assert_allclose(rev, ref_kl(qq, p), rtol=2e-5)
    js = sparse_js_divergence(s, idx, t, tail="bucket", reduction="none")
    np.testing.assert_allclose(js, ref_value("js", p, qq), rtol=2e-5, atol=1e-6)
    # Forward KL(student‖teacher): the student's tail has no teacher mass.
    fwd = sparse_kl_divergence(s, idx, t, tail="bucket", reduction="none")
    np.testing.assert_array_equal(fwd, np.inf)
    g = jax.grad(lambda a, b: sparse_js_divergence(a, idx, b, tail="bucket"), (0, 1))(
        s, t
    )
    assert all(np.isfinite(gi).all() for gi in g)


def test_bucket_student_holding_all_mass_has_an_empty_tail():
    # A student with all its mass on the k entries: its tail is -inf, not NaN.
    student = jnp.log(jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], jnp.float32))
    idx = np.array([[0, 1], [2, 1]])
    lq = jnp.log(jnp.array([[0.4, 0.4], [0.3, 0.5]], jnp.float32))
    got = sparse_kl_divergence(
        student, idx, lq, direction="reverse", tail="bucket", reduction="none"
    )
    p = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    q = np.array([[0.4, 0.4, 0.2], [0.3, 0.5, 0.2]])
    np.testing.assert_array_equal(got, np.inf)  # teacher tail on a student zero
    got = sparse_kl_divergence(student, idx, lq, tail="bucket", reduction="none")
    np.testing.assert_allclose(got, ref_kl(p, q), rtol=1e-6)
    g = jax.grad(lambda a: sparse_js_divergence(a, idx, lq, tail="bucket"))(student)
    assert np.isfinite(g).all()


def test_bucket_tail_keeps_its_digits_near_one():
    # Teacher top-k mass 1 - 1e-9: float32 cannot hold the sum 1 - 1e-9, but the
    # log-space tail keeps it (forward KL would otherwise be +inf).
    q = np.array([1 - 3e-9, 1e-9, 1e-9])
    lq = np.log(q)
    student = scipy.special.log_softmax(np.array([3.0, 0.5, 0.2, -1.0, 0.0]))
    idx = np.array([0, 1, 2])
    want = ref_value("forward", *ref_dists(student, idx, lq, "bucket"))
    assert want > 0.01
    got = sparse_kl_divergence(*f32(student), idx, *f32(lq), tail="bucket")
    np.testing.assert_allclose(got, want, rtol=1e-5)


# ---------------------------------------------------------------------------
# Gradients (float64, finite differences)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("tail", TAILS)
def test_gradients_match_finite_differences(tail):
    student, idx, lq = make_case(np.random.default_rng(11))
    with jax.enable_x64(True):
        for mode in MODES:
            fn = functools.partial(run, mode, idx=idx, tail=tail)
            assert_grads_match_finite_differences(
                lambda a, b, fn=fn: fn(a, lq=b), (student, lq), 1e-6, eps=1e-6
            )  # a small teacher tail is strongly curved: O(eps²)


def test_temperature_gradient_matches_finite_differences():
    student, idx, lq = make_case(np.random.default_rng(12))
    with jax.enable_x64(True):
        for mode in FEW:
            fn = functools.partial(run, mode, idx=idx)
            assert_grads_match_finite_differences(
                lambda a, b, t, fn=fn: fn(a, lq=b, temperature=t),
                (student, lq, jnp.float64(1.6)),
                1e-6,
            )


# ---------------------------------------------------------------------------
# Masks, reductions, jit, vmap, dtypes
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("tail", TAILS)
def test_where_with_garbage_at_masked_positions(tail):
    rng = np.random.default_rng(13)
    student, idx, lq = make_case(rng)
    mask = rng.random(POS) < 0.5
    mask[0, 0], mask[0, 1] = True, False
    bad_s, bad_q, bad_i = student.copy(), lq.copy(), idx.copy()
    bad_s[~mask] = np.nan
    bad_q[~mask] = np.nan
    bad_i[~mask] = -7  # also out of range: masked positions are not checked
    bad_i[1, ~mask[1]] = V + 3
    s, q, bs, bq = f32(student, lq, bad_s, bad_q)
    for mode in SOME:
        fn = functools.partial(run, mode, tail=tail)
        want = ref_value(mode, *ref_dists(student, idx, lq, tail))
        none = fn(bs, bad_i, bq, where=mask, reduction="none")
        np.testing.assert_allclose(none, np.where(mask, want, 0.0), rtol=2e-5)
        if mode == "forward":
            total = fn(bs, bad_i, bq, where=mask, reduction="sum")
            np.testing.assert_allclose(total, np.sum(want[mask]), rtol=2e-5)
            mean = fn(bs, bad_i, bq, where=mask)
            np.testing.assert_allclose(mean, np.mean(want[mask]), rtol=2e-5)
        if mode not in FEW:
            continue
        ga, gb = jax.grad(lambda a, b, fn=fn: fn(a, bad_i, b, where=mask), (0, 1))(
            bs, bq
        )
        for g in (ga, gb):
            assert np.isfinite(g).all()
            np.testing.assert_array_equal(np.asarray(g)[~mask], 0.0)
        assert np.any(np.asarray(ga)[mask] != 0)
    # A mask that broadcasts to the position shape; an all-False mask gives 0.
    row = np.array([True, False, True, False])
    got = sparse_kl_divergence(s, idx, q, tail=tail, where=row, reduction="none")
    full = sparse_kl_divergence(s, idx, q, tail=tail, reduction="none")
    np.testing.assert_allclose(got, np.where(row, full, 0.0), rtol=1e-6)
    none = np.zeros(POS, bool)
    assert sparse_kl_divergence(bs, bad_i, bq, tail=tail, where=none) == 0.0


def test_reductions():
    student, idx, lq = make_case(np.random.default_rng(14))
    s, q = f32(student, lq)
    for mode in MODES:
        per = run(mode, s, idx, q, reduction="none")
        np.testing.assert_allclose(run(mode, s, idx, q), per.mean(), rtol=1e-6)
        np.testing.assert_allclose(
            run(mode, s, idx, q, reduction="sum"), per.sum(), rtol=1e-6
        )


def test_jit_equals_eager_and_traced_indices():
    student, idx, lq = make_case(np.random.default_rng(15))
    s, q = f32(student, lq)
    for tail in TAILS:
        for mode in FEW:
            fn = functools.partial(run, mode, tail=tail, reduction="none")
            got = fn(s, idx, q)
            with jax.disable_jit():
                eager = fn(s, idx, q)
            np.testing.assert_allclose(got, eager, rtol=1e-5, atol=1e-7)
            traced = jax.jit(fn)(s, jnp.asarray(idx), q)
            np.testing.assert_allclose(traced, got, rtol=1e-6)


def test_traced_out_of_range_index_gives_nan_not_a_number():
    student, idx, lq = make_case(np.random.default_rng(16))
    s, q = f32(student, lq)
    for bad in (-1, V):
        i = idx.copy()
        i[0, 0, 0] = bad
        got = jax.jit(functools.partial(sparse_kl_divergence, reduction="none"))(
            s, i, q
        )
        assert np.isnan(got[0, 0])
        assert np.isfinite(np.asarray(got).ravel()[1:]).all()


@pytest.mark.parametrize("tail", TAILS)
@pytest.mark.parametrize("bad", ["negative", "V", "repeated"])
def test_traced_bad_index_is_nan_in_value_and_gradient(bad, tail):
    # Under jit the eager checks cannot run: an index outside [0, V) or one
    # given twice (which would count its entry twice: [[2, 2, 4]] gave
    # 0.0959) makes that position's value NaN, and the gradient it sends.
    student, idx, lq = make_case(np.random.default_rng(16))
    i = idx.copy()
    i[0, 1, 2] = {"negative": -1, "V": V, "repeated": i[0, 1, 4]}[bad]
    s, q = f32(student, lq)
    f = jax.jit(functools.partial(sparse_kl_divergence, tail=tail, reduction="none"))
    got = np.asarray(f(s, i, q))
    want = ref_value("forward", *ref_dists(student, idx, lq, tail))
    others = np.ones(POS, bool)
    others[0, 1] = False
    assert np.isnan(got[0, 1])
    np.testing.assert_allclose(got[others], want[others], rtol=2e-5, atol=1e-7)
    g = np.asarray(jax.grad(lambda s: jnp.sum(f(s, i, q)))(s))
    assert np.isnan(g[0, 1]).any() and np.isfinite(g[others]).all()


def test_vmap_equals_batch():
    student, idx, lq = make_case(np.random.default_rng(17))
    s, q = f32(student, lq)
    for tail in TAILS:
        for mode in ("forward", "js"):
            fn = functools.partial(run, mode, tail=tail, reduction="none")
            batched = fn(s, idx, q)
            mapped = jax.vmap(fn)(s, jnp.asarray(idx), q)
            np.testing.assert_allclose(mapped, batched, rtol=1e-6)


@pytest.mark.parametrize("tail", TAILS)
def test_bf16_student_computed_in_float32(tail):
    student, idx, lq = make_case(np.random.default_rng(18))
    s = jnp.asarray(student, jnp.bfloat16)
    q = jnp.asarray(lq, jnp.float32)
    rounded = np.asarray(s, np.float64)  # the reference sees the bf16 input
    for mode in SOME:
        got = run(mode, s, idx, q, tail=tail, reduction="none")
        assert got.dtype == jnp.float32
        want = ref_value(mode, *ref_dists(rounded, idx, lq, tail))
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
        if mode not in FEW:
            continue
        g = jax.grad(lambda a, m=mode: run(m, a, idx, q, tail=tail))(s)
        assert g.dtype == jnp.bfloat16
        assert np.isfinite(np.asarray(g, np.float32)).all()
        if mode == "forward":
            g32 = jax.grad(lambda a: run("forward", a, idx, q, tail=tail))(
                s.astype(jnp.float32)
            )
            np.testing.assert_allclose(
                np.asarray(g, np.float32), g32, rtol=1e-2, atol=1e-4
            )


def test_python_lists_and_no_mass_to_renormalise():
    # Plain lists work; a position whose k student entries are all -inf has
    # nothing to renormalise: NaN there (documented), never a silent number.
    student = np_log(np.array([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]]))
    lq = np.log([[0.5, 0.5], [0.5, 0.5]]).tolist()
    idx = [[2, 3], [0, 1]]
    got = sparse_kl_divergence(student.tolist(), idx, lq, reduction="none")
    assert np.isnan(got[0]) and got[1] == 0.0
    # The bucket is defined there: all the student's mass is in its tail.
    got = sparse_js_divergence(student, idx, lq, tail="bucket", reduction="none")
    p = np.array([[0, 0, 1.0], [0.25, 0.25, 0.5]])
    q = np.array([[0.5, 0.5, 0], [0.5, 0.5, 0]])
    np.testing.assert_allclose(got, ref_value("js", p, q), rtol=1e-6)


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


def test_bad_input_raises():
    student, idx, lq = make_case(np.random.default_rng(19))
    s, q = f32(student, lq)
    kl, js = sparse_kl_divergence, sparse_js_divergence
    with pytest.raises(TypeError, match="teacher_indices"):
        kl(s, idx.astype(np.float32), q)
    with pytest.raises(TypeError, match="student_logprobs"):
        kl(idx, idx, q)
    with pytest.raises(ValueError, match="same shape"):
        kl(s, idx[..., :-1], q)
    with pytest.raises(ValueError, match="position shape"):
        kl(s[:2], idx, q)
    with pytest.raises(ValueError, match="position shape"):
        kl(s[0, 0], idx, q)
    with pytest.raises(ValueError, match="at most"):
        kl(s[..., :3], idx[..., :4], q[..., :4])
    with pytest.raises(ValueError, match="at least 1"):
        kl(s, idx[..., :0], q[..., :0])
    for bad in (-1, V, 2**40):
        i = idx.copy()
        i[1, 2, 3] = bad
        with pytest.raises(ValueError, match="teacher_indices"):
            kl(s, i, q)
    i = idx.copy()
    i[2, 1, 0] = i[2, 1, 4]
    with pytest.raises(ValueError, match="distinct"):
        js(s, i, q)
    with pytest.raises(ValueError, match="bucket"):
        kl(s, idx, q, tail="bucket", temperature=2.0)
    with pytest.raises(ValueError, match="bucket"):
        js(s, idx, q, tail="bucket", temperature=jnp.float32(0.5))
    with pytest.raises(ValueError, match="tail"):
        kl(s, idx, q, tail="drop")
    with pytest.raises(ValueError, match="direction"):
        kl(s, idx, q, direction="backward")
    with pytest.raises(ValueError, match="symmetric"):
        kl(s, idx, q, symmetric=1)
    with pytest.raises(ValueError, match="reduction"):
        js(s, idx, q, reduction="max")
    with pytest.raises(ValueError, match="beta"):
        js(s, idx, q, beta=1.0)
    with pytest.raises(ValueError, match="temperature"):
        kl(s, idx, q, temperature=0.0)
    with pytest.raises(ValueError, match="where"):
        kl(s, idx, q, where=np.ones((3, 5), bool))
    with pytest.raises(TypeError, match="where"):
        kl(s, idx, q, where=np.ones(POS, np.complex64))
    with pytest.raises(TypeError, match="static"):
        kl(s, idx, q, tail=jnp.asarray(1))


# ---------------------------------------------------------------------------
# Properties (hypothesis): one shape, many values
# ---------------------------------------------------------------------------

HV, HK = 8, 4
LOGITS = hnp.arrays(
    np.float64,
    (3, HV),
    elements=st.floats(-15, 15, allow_nan=False, allow_subnormal=False),
)
PROPS = settings(max_examples=30, deadline=None)


@PROPS
@given(LOGITS, LOGITS, st.randoms(use_true_random=False))
def test_properties(x, y, rnd):
    student, dense_teacher = log_softmax32(x), log_softmax32(y)
    idx = np.array([rnd.sample(range(HV), HK) for _ in range(3)])
    lq = np.take_along_axis(dense_teacher, idx, -1)
    for tail in TAILS:
        kl = np.asarray(
            sparse_kl_divergence(student, idx, lq, tail=tail, reduction="none")
        )
        rev = sparse_kl_divergence(
            student, idx, lq, tail=tail, direction="reverse", reduction="none"
        )
        js = np.asarray(
            sparse_js_divergence(student, idx, lq, tail=tail, reduction="none")
        )
        assert np.all(kl >= -1e-6) and np.all(np.asarray(rev) >= -1e-6)
        assert np.all(js >= 0) and np.all(js <= LOG2 + 1e-6)
        p, q = ref_dists(student.astype(np.float64), idx, lq.astype(np.float64), tail)
        np.testing.assert_allclose(js, ref_value("js", p, q), atol=2e-6)
        # The teacher equal to the student's own entries: exactly 0.
        own = np.take_along_axis(student, idx, -1)
        for fn in (sparse_kl_divergence, sparse_js_divergence):
            zero = fn(student, idx, own, tail=tail, reduction="none")
            np.testing.assert_allclose(zero, 0.0, atol=1e-7)
