"""Tests for orthogonality and consistency.

Orthogonality references build the full n×n Gram matrix G = X Xᵀ in NumPy
float64 and take its off-diagonal sum, ‖G − I‖²_F and the spectral norm from
``numpy.linalg.norm(·, 2)`` (an SVD) — the formulation the library avoids.
Consistency references are NumPy/SciPy float64.
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
from tests.helpers import assert_grads_match_finite_differences

MODES = ("soft", "hard", "spectral")


def ref_orthogonality(x, mode, normalize=True):
    x = np.asarray(x, np.float64)
    if normalize:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1.0)
    g = x @ x.T
    eye = np.eye(len(x))
    if mode == "soft":
        return np.sum((g * (1 - eye)) ** 2)
    if mode == "hard":
        return np.sum((g - eye) ** 2)
    return np.linalg.norm(g - eye, 2) ** 2


def random_orthonormal_rows(rng, n, d):
    """n <= d orthonormal rows of dimension d (QR of a Gaussian matrix)."""
    q, _ = np.linalg.qr(rng.normal(size=(d, n)))
    return q.T


# ---------------------------------------------------------------------------
# orthogonality: values
# ---------------------------------------------------------------------------


def test_hand_worked_values():
    # Rows [1, 0] and [1, 1]/√2 after normalisation: G₀₁ = 1/√2.
    x = jnp.array([[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(jp.orthogonality(x), 1.0, rtol=1e-6)  # 2·½
    np.testing.assert_allclose(jp.orthogonality(x, mode="hard"), 1.0, rtol=1e-6)
    # eigenvalues of G − I are ±1/√2 -> ‖G − I‖₂² = ½
    np.testing.assert_allclose(jp.orthogonality(x, mode="spectral"), 0.5, rtol=1e-6)
    # Unnormalised: G = [[1, 1], [1, 2]], soft = 2, hard = 0 + 1 + 1 + 1 = 3,
    # G − I = [[0, 1], [1, 1]] has eigenvalues (1 ± √5)/2 -> ((1 + √5)/2)².
    assert jp.orthogonality(x, normalize=False) == 2.0
    assert jp.orthogonality(x, mode="hard", normalize=False) == 3.0
    np.testing.assert_allclose(
        jp.orthogonality(x, mode="spectral", normalize=False),
        ((1 + np.sqrt(5)) / 2) ** 2,
        rtol=1e-6,
    )


COMBOS = [(mode, normalize) for mode in MODES for normalize in (True, False)]


@jax.jit
def all_combos(x):
    """Every (mode, normalize) at once: one compilation per input shape."""
    return jnp.stack([jp.orthogonality(x, mode=m, normalize=n) for m, n in COMBOS])


@pytest.mark.parametrize("shape", [(4, 9), (7, 7), (30, 5), (200, 3)])
def test_matches_full_gram_reference(shape):
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape).astype(np.float32)
    want = [ref_orthogonality(x, m, n) for m, n in COMBOS]
    np.testing.assert_allclose(all_combos(x), want, rtol=1e-4)
    # The public (eager-called, internally jitted) path agrees.
    np.testing.assert_allclose(jp.orthogonality(x, mode="spectral"), want[4], rtol=1e-4)


def test_spectral_more_rows_than_dims_includes_the_minus_one_eigenvalue():
    # 10 orthonormal columns in 40 rows: C = XᵀX = I, so every eigenvalue of
    # C − I is 0, yet G − I has the eigenvalue −1 (30 times): the value is 1.
    rng = np.random.default_rng(0)
    x = random_orthonormal_rows(rng, 10, 40).T  # [40, 10], XᵀX = I
    got = jp.orthogonality(x, mode="spectral", normalize=False)
    np.testing.assert_allclose(got, 1.0, rtol=1e-5)
    np.testing.assert_allclose(ref_orthogonality(x, "spectral", False), 1.0)
    # hard = Σ (μ − 1)² + (n − d) = 0 + 30
    np.testing.assert_allclose(
        jp.orthogonality(x, mode="hard", normalize=False), 30.0, rtol=1e-5
    )


@pytest.mark.parametrize("n,d", [(5, 8), (8, 8)])
@pytest.mark.parametrize("mode", MODES)
def test_orthonormal_rows_give_zero(n, d, mode):
    x = random_orthonormal_rows(np.random.default_rng(n), n, d).astype(np.float32)
    for normalize in (True, False):
        assert jp.orthogonality(x, mode=mode, normalize=normalize) < 1e-5
    # Scaled rows are orthogonal but not normal: only soft stays 0 unnormalised.
    assert jp.orthogonality(3 * x, mode=mode) < 1e-5
    if mode == "soft":
        assert jp.orthogonality(3 * x, normalize=False) < 1e-4
    else:
        assert jp.orthogonality(3 * x, mode=mode, normalize=False) > 1


def test_zero_rows_stay_zero_when_normalized():
    x = np.array([[0.0, 0.0, 0.0], [3.0, 4.0, 0.0], [0.0, 0.0, 2.0]], np.float32)
    # Normalised rows: 0, [0.6, 0.8, 0], [0, 0, 1]; G = diag(0, 1, 1).
    assert jp.orthogonality(x) == 0.0
    np.testing.assert_allclose(jp.orthogonality(x, mode="hard"), 1.0, rtol=1e-6)
    np.testing.assert_allclose(jp.orthogonality(x, mode="spectral"), 1.0, rtol=1e-6)


def test_3d_axis_semantics():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 5)).astype(np.float32)  # [batch, seq, dim]
    rows = x.reshape(6, 5)  # every (batch, seq) row
    seq = np.stack([x[:, s, :].reshape(-1) for s in range(3)])  # [3, 2·5]
    vocab = np.stack([x[..., k].reshape(-1) for k in range(5)])  # [5, 2·3]
    axes = (("rows", rows), ("sequence", seq), ("vocabulary", vocab))
    got = jax.jit(
        lambda x: [
            [jp.orthogonality(x, mode=m, axis=a) for m in MODES] for a, _ in axes
        ]
    )(x)
    want = [[ref_orthogonality(r, m) for m in MODES] for _, r in axes]
    np.testing.assert_allclose(got, want, rtol=1e-4)
    # 2-D input ignores axis.
    for axis in ("sequence", "vocabulary"):
        assert jp.orthogonality(rows, axis=axis) == jp.orthogonality(rows)


def test_many_rows_never_form_the_n_by_n_gram():
    rng = np.random.default_rng(2)
    n, d = 40_000, 32
    x = jnp.asarray(rng.normal(size=(n, d)).astype(np.float32))
    for mode in MODES:
        fn = functools.partial(jp.orthogonality, mode=mode)
        compiled = jax.jit(fn).lower(x).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes
        assert temp < 8 * n * d * 4  # a few [n, d] copies; n×n would be 6.4 GB
        # Speed is measured in benchmarks/constraints.py, not asserted here.
        value = compiled(x).block_until_ready()
        np.testing.assert_allclose(value, fn(x), rtol=1e-6)
    # Gradient too, without an n×n intermediate.
    g = jax.jit(jax.grad(functools.partial(jp.orthogonality, mode="spectral")))
    compiled = g.lower(x).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < 16 * n * d * 4
    assert np.isfinite(compiled(x)).all()


def test_vmap_and_dtypes():
    rng = np.random.default_rng(3)
    xs = rng.normal(size=(4, 6, 3)).astype(np.float32)
    batched = jax.vmap(all_combos)(xs)
    want = [[ref_orthogonality(x, m, n) for m, n in COMBOS] for x in xs]
    np.testing.assert_allclose(batched, want, rtol=1e-4)
    x16 = jnp.asarray(xs[0], jnp.bfloat16)
    out = jp.orthogonality(x16)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(
        out, ref_orthogonality(np.asarray(x16), "soft"), rtol=1e-4
    )


# ---------------------------------------------------------------------------
# orthogonality: gradients
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 5), (6, 3)])
def test_gradients_match_finite_differences(shape):
    # check_grads contracts the stacked (mode, normalize) values with random
    # cotangents, so every combination's gradient is compared in float64.
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.normal(size=shape))
        assert_grads_match_finite_differences(all_combos, (x,), 1e-5)


def _degenerate_inputs():
    """Inputs with repeated Gram eigenvalues or zero rows, all wide (3, 5) or
    tall (5, 3) so that each shape compiles once."""
    rng = np.random.default_rng(5)
    q = random_orthonormal_rows(rng, 3, 5)
    same = np.tile(rng.normal(size=(1, 3)), (5, 1))
    with_zero_row = rng.normal(size=(5, 3))
    with_zero_row[2] = 0.0
    half_identity = np.zeros((5, 3))
    half_identity[:3] = np.eye(3)
    return {
        "zero": np.zeros((3, 5)),
        "orthonormal_rows": q,
        "identity_rows": np.eye(3, 5),
        "identical_rows": np.tile(rng.normal(size=(1, 5)), (3, 1)),
        "wide_zero_row": with_zero_row.T,
    }, {
        "zero": np.zeros((5, 3)),
        "orthonormal_cols": q.T,
        "identity_cols": half_identity,
        "identical_rows": same,
        "zero_row": with_zero_row,
    }


@jax.jit
@jax.vmap
def values_and_jacobians(x):
    return all_combos(x), jax.jacrev(all_combos)(x)


@pytest.mark.parametrize("which", ["wide", "tall"])
def test_gradients_finite_at_degenerate_inputs(which):
    cases = _degenerate_inputs()[which == "tall"]
    xs = jnp.asarray(np.stack(list(cases.values())), jnp.float32)
    values, jacobians = values_and_jacobians(xs)
    for i, name in enumerate(cases):
        assert np.isfinite(values[i]).all(), name
        assert np.isfinite(jacobians[i]).all(), name
    # Exact values there (n×n reference), e.g. the zero matrix: soft 0, hard n,
    # spectral 1; orthonormal rows: all 0.
    for i, x in enumerate(cases.values()):
        want = [ref_orthogonality(x, m, n) for m, n in COMBOS]
        np.testing.assert_allclose(values[i], want, rtol=1e-4, atol=1e-5)


def test_spectral_gradient_is_the_top_eigenvalue_derivative():
    # For a simple top eigenvalue, d‖G − I‖₂²/dX = 2(λ − 1)·d λ/dX with
    # d λ/dG = v vᵀ and G = X Xᵀ -> 2(λ − 1)·2 v vᵀ X (NumPy float64).
    rng = np.random.default_rng(6)
    x = rng.normal(size=(3, 5))
    w, v = np.linalg.eigh(x @ x.T - np.eye(3))
    k = np.argmax(np.abs(w))
    want = 2 * w[k] * 2 * np.outer(v[:, k], v[:, k]) @ x
    with jax.enable_x64(True):
        fn = functools.partial(jp.orthogonality, mode="spectral", normalize=False)
        got = jax.grad(fn)(jnp.asarray(x))
    np.testing.assert_allclose(got, want, rtol=1e-8)


# ---------------------------------------------------------------------------
# orthogonality: properties and errors
# ---------------------------------------------------------------------------

PROPS = settings(max_examples=25, deadline=None)
SEEDS = st.integers(0, 2**32 - 1)


@PROPS
@given(SEEDS, st.floats(0.01, 100))
def test_props_orthonormal_zero_scale_invariance_nonnegative(seed, k):
    rng = np.random.default_rng(seed)
    q = random_orthonormal_rows(rng, 4, 7).astype(np.float32)
    x = rng.normal(size=(9, 4)).astype(np.float32)
    for mode in MODES:
        assert jp.orthogonality(q, mode=mode) < 1e-5
        v = jp.orthogonality(x, mode=mode)
        assert v >= 0
        # normalize=True makes the penalty invariant to row scaling.
        np.testing.assert_allclose(
            jp.orthogonality(np.float32(k) * x, mode=mode), v, rtol=1e-4
        )


@PROPS
@given(hnp.arrays(np.float32, (5, 3), elements=st.floats(-10, 10, width=32)))
def test_props_spectral_matches_svd_for_tall_and_wide(x):
    for m in (x, x.T):  # n > d, then n < d
        got = jp.orthogonality(m, mode="spectral", normalize=False)
        want = ref_orthogonality(m, "spectral", False)
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)


def test_orthogonality_errors():
    x = jnp.ones((3, 4))
    with pytest.raises(ValueError, match=r"`mode`.*'soft', 'hard', 'spectral'.*'svd'"):
        jp.orthogonality(x, mode="svd")
    with pytest.raises(ValueError, match=r"`axis`.*'rows'.*'columns'"):
        jp.orthogonality(x, axis="columns")
    with pytest.raises(ValueError, match="`normalize` to be a Python bool"):
        jp.orthogonality(x, normalize=1)
    for bad in (jnp.ones(3), jnp.ones((2, 2, 2, 2))):
        with pytest.raises(ValueError, match=r"2-D .* or 3-D .*got shape"):
            jp.orthogonality(bad)
    with pytest.raises(TypeError, match="floating-point"):
        jp.orthogonality(jnp.ones((2, 2), jnp.int32))
    with pytest.raises(TypeError, match="`normalize` must be a static Python value"):
        jax.jit(lambda b: jp.orthogonality(x, normalize=b))(True)


# ---------------------------------------------------------------------------
# consistency
# ---------------------------------------------------------------------------


class TestConsistency:
    def setup_method(self):
        rng = np.random.default_rng(7)
        self.a = rng.normal(size=(4, 3, 6)).astype(np.float32)
        self.b = rng.normal(size=(4, 3, 6)).astype(np.float32)
        self.mask = rng.random((4, 3)) < 0.6
        self.mask[0, 0] = True

    def test_mse_and_l1_match_numpy(self):
        a, b = self.a.astype(np.float64), self.b.astype(np.float64)
        for metric, elem in (("mse", (a - b) ** 2), ("l1", np.abs(a - b))):
            got = jp.consistency(self.a, self.b, metric=metric)
            np.testing.assert_allclose(got, elem.mean(), rtol=1e-5)
            got = jp.consistency(self.a, self.b, metric=metric, reduction="sum")
            np.testing.assert_allclose(got, elem.sum(), rtol=1e-5)
            got = jp.consistency(self.a, self.b, metric=metric, reduction="none")
            np.testing.assert_allclose(got, elem, rtol=1e-5, atol=1e-6)
            # where: masked positions (all their elements) drop out
            got = jp.consistency(self.a, self.b, metric=metric, where=self.mask)
            np.testing.assert_allclose(got, elem[self.mask].mean(), rtol=1e-5)

    def test_cosine_matches_numpy(self):
        a, b = self.a.astype(np.float64), self.b.astype(np.float64)
        cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
        got = jp.consistency(self.a, self.b, metric="cosine", reduction="none")
        np.testing.assert_allclose(got, 1 - cos, rtol=1e-5, atol=1e-6)
        got = jp.consistency(self.a, self.b, metric="cosine", where=self.mask)
        np.testing.assert_allclose(got, (1 - cos)[self.mask].mean(), rtol=1e-5)
        # parallel: 0, opposite: 2, orthogonal: 1
        e = jnp.eye(2)
        np.testing.assert_allclose(
            jp.consistency(
                jnp.stack([e[0], e[0], e[0]]),
                jnp.stack([3 * e[0], -e[0], e[1]]),
                metric="cosine",
                reduction="none",
            ),
            [0.0, 2.0, 1.0],
            atol=1e-7,
        )

    def test_cosine_zero_vectors_value_one_finite_gradient(self):
        a = jnp.array([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
        b = jnp.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
        fn = functools.partial(jp.consistency, metric="cosine", reduction="none")
        np.testing.assert_array_equal(fn(a, b), [1.0, 1.0])
        ga, gb = jax.grad(lambda a, b: fn(a, b).sum(), argnums=(0, 1))(a, b)
        assert np.isfinite(ga).all() and np.isfinite(gb).all()
        ga, _ = jax.grad(lambda a, b: fn(a, b).sum(), argnums=(0, 1))(a, a)
        assert np.isfinite(ga).all()

    def test_kl_is_symmetric_kl_of_logprobs(self):
        lp = scipy.special.log_softmax(self.a.astype(np.float64), axis=-1)
        lq = scipy.special.log_softmax(self.b.astype(np.float64), axis=-1)
        p, q = np.exp(lp), np.exp(lq)
        want = 0.5 * (
            scipy.special.rel_entr(p, q).sum(-1) + scipy.special.rel_entr(q, p).sum(-1)
        )
        a, b = lp.astype(np.float32), lq.astype(np.float32)
        for reduction, ref in (("none", want), ("sum", want.sum()), ("mean", None)):
            got = jp.consistency(a, b, metric="kl", reduction=reduction)
            ref = want.mean() if ref is None else ref
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
        got = jp.consistency(a, b, metric="kl", where=self.mask)
        np.testing.assert_allclose(got, want[self.mask].mean(), rtol=1e-5)
        np.testing.assert_allclose(
            got, jp.consistency(b, a, metric="kl", where=self.mask), rtol=1e-6
        )

    def test_gradients_match_finite_differences(self):
        with jax.enable_x64(True):
            a = jnp.asarray(self.a[:2], jnp.float64)
            b = jnp.asarray(self.b[:2], jnp.float64)
            for metric in ("mse", "l1", "cosine"):
                fn = functools.partial(jp.consistency, metric=metric)
                assert_grads_match_finite_differences(fn, (a, b), 1e-5)
            la, lb = jax.nn.log_softmax(a), jax.nn.log_softmax(b)
            fn = functools.partial(jp.consistency, metric="kl", reduction="sum")
            assert_grads_match_finite_differences(fn, (la, lb), 1e-5)

    def test_jit_matches_eager_and_dtypes(self):
        for metric in ("mse", "l1", "cosine", "kl"):
            fn = functools.partial(jp.consistency, metric=metric)
            a, b = self.a, self.b
            if metric == "kl":  # compares log-probabilities
                a, b = jax.nn.log_softmax(a), jax.nn.log_softmax(b)
            np.testing.assert_allclose(jax.jit(fn)(a, b), fn(a, b), rtol=1e-6)
            out = fn(jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16))
            assert out.dtype == jnp.float32

    def test_errors(self):
        with pytest.raises(ValueError, match=r"`a` and `b`.*\(4, 3, 6\) and \(4, 6\)"):
            jp.consistency(self.a, self.b[:, 0])
        with pytest.raises(ValueError, match=r"`a` and `b`.*\(4, 3, 6\) and \(4, 6\)"):
            jp.consistency(self.a, self.b[:, 0], metric="kl")
        with pytest.raises(ValueError, match=r"`metric`.*'mse', 'l1', 'cosine', 'kl'"):
            jp.consistency(self.a, self.b, metric="l2")
        with pytest.raises(ValueError, match=r"`reduction`.*'max'"):
            jp.consistency(self.a, self.b, reduction="max")
        with pytest.raises(ValueError, match="scalar"):
            jp.consistency(jnp.float32(1), jnp.float32(2))
        with pytest.raises(ValueError, match="`where`.*position shape"):
            jp.consistency(self.a, self.b, where=np.ones((4, 3, 6), bool))
