"""Tests for l1, l2 and elastic_net on arrays and parameter pytrees.

References are NumPy float64 sums written out here, or hand-worked numbers
(the NxPenalties documentation examples), never the code under test.
"""

import functools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import jaxpenalties as jp
from tests.helpers import assert_grads_match_finite_differences, count_compiles


def make_params(rng, dtype=np.float32):
    """A small params pytree: nested dict, tuple, a scalar leaf and a None."""
    return {
        "dense": {
            "kernel": rng.normal(size=(4, 3)).astype(dtype),
            "bias": rng.normal(size=(3,)).astype(dtype),
        },
        "blocks": (rng.normal(size=(2, 2, 5)).astype(dtype), None),
        "scale": np.asarray(rng.normal(), dtype),
    }


def np_leaves(tree):
    return [np.asarray(v, np.float64) for v in jax.tree_util.tree_leaves(tree)]


def ref_l1(tree, reduction="sum"):
    leaves = np_leaves(tree)
    total = sum(np.abs(v).sum() for v in leaves)
    return total if reduction == "sum" else total / sum(v.size for v in leaves)


def ref_l2(tree, reduction="sum", center=None, clip=None):
    leaves = np_leaves(tree)
    if center is None:
        centers = [0.0] * len(leaves)
    elif isinstance(center, str):
        centers = [v.mean() for v in leaves]
    elif isinstance(center, float):
        centers = [center] * len(leaves)
    else:
        centers = np_leaves(center)
    total = 0.0
    for v, c in zip(leaves, centers, strict=True):
        d = np.abs(v - c)
        if clip is not None:
            d = np.minimum(d, clip)
        total += (d**2).sum()
    return total if reduction == "sum" else total / sum(v.size for v in leaves)


# ---------------------------------------------------------------------------
# Hand-worked values (NxPenalties documentation examples)
# ---------------------------------------------------------------------------


def test_documented_values():
    # |1| + |−2| + |0.5| + |−0.5| = 4
    assert jp.l1(jnp.array([1.0, -2.0, 0.5, -0.5])) == 4.0
    # 1 + 4 + 9 = 14; centred on the mean 2: 1 + 0 + 1 = 2
    x = jnp.array([1.0, 2.0, 3.0])
    assert jp.l2(x) == 14.0
    assert jp.l2(x, center="mean") == 2.0
    # ½·(1 + 2 + 3) + ½·(1 + 4 + 9) = 3 + 7 = 10
    assert jp.elastic_net(jnp.array([1.0, -2.0, 3.0]), l1_ratio=0.5) == 10.0
    # means over 4 and 3 elements
    assert jp.l1(jnp.array([1.0, -2.0, 0.5, -0.5]), reduction="mean") == 1.0
    np.testing.assert_allclose(jp.l2(x, reduction="mean"), 14 / 3, rtol=1e-7)


def test_l2_center_number_and_clip_by_hand():
    x = jnp.array([1.0, 2.0, 3.0])
    # centre 1: 0 + 1 + 4 = 5; clip 1.5 on |x|: 1 + 2.25 + 2.25 = 5.5
    assert jp.l2(x, center=1.0) == 5.0
    assert jp.l2(x, clip=1.5) == 5.5
    # centre 1 then clip 1.5: |0|, |1|, min(|2|, 1.5) -> 0 + 1 + 2.25
    assert jp.l2(x, center=1.0, clip=1.5) == 3.25
    # centre "mean" then clip 0.5: |−1|,|0|,|1| -> 0.25 + 0 + 0.25
    assert jp.l2(x, center="mean", clip=0.5) == 0.5


# ---------------------------------------------------------------------------
# Values against NumPy float64 on pytrees
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_l1_pytree_matches_numpy(reduction):
    params = make_params(np.random.default_rng(0))
    np.testing.assert_allclose(
        jp.l1(params, reduction=reduction), ref_l1(params, reduction), rtol=1e-6
    )


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("center", [None, "mean", 0.7, "tree"])
@pytest.mark.parametrize("clip", [None, 0.8])
def test_l2_pytree_matches_numpy(reduction, center, clip):
    rng = np.random.default_rng(1)
    params = make_params(rng)
    if center == "tree":
        center = make_params(rng)  # a "pre-trained" reference (L2-SP)
    got = jp.l2(params, reduction=reduction, center=center, clip=clip)
    want = ref_l2(params, reduction, center, clip)
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("ratio", [0.0, 0.3, 1.0])
def test_elastic_net_pytree_matches_numpy(reduction, ratio):
    params = make_params(np.random.default_rng(2))
    want = ratio * ref_l1(params, reduction) + (1 - ratio) * ref_l2(params, reduction)
    got = jp.elastic_net(params, l1_ratio=ratio, reduction=reduction)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_center_mean_is_per_leaf():
    # Each leaf centred on its own mean: {a: [0, 2] (mean 1), b: [10, 14] (12)}
    # gives 1 + 1 + 4 + 4 = 10 (a global mean of 6.5 would give much more).
    tree = {"a": jnp.array([0.0, 2.0]), "b": jnp.array([10.0, 14.0])}
    assert jp.l2(tree, center="mean") == 10.0


def test_scalar_array_center_and_empty_trees():
    x = jnp.array([1.0, 2.0, 3.0])
    assert jp.l2(x, center=jnp.asarray(1.0)) == 5.0
    for fn in (jp.l1, jp.l2, jp.elastic_net):
        for reduction in ("sum", "mean"):
            assert fn({}, reduction=reduction) == 0.0
            assert fn({"w": jnp.zeros((0, 3))}, reduction=reduction) == 0.0
    assert jp.l2({"w": jnp.zeros((0, 3))}, center="mean") == 0.0


def test_jit_and_eager_agree_and_options_are_traceable():
    params = make_params(np.random.default_rng(3))
    ref = make_params(np.random.default_rng(4))

    @jax.jit
    def f(p, r, ratio, clip, c):
        return (
            jp.l1(p, reduction="mean"),
            jp.l2(p, center=r, clip=clip),
            jp.l2(p, center=c),
            jp.elastic_net(p, l1_ratio=ratio),
        )

    got = f(params, ref, 0.25, 0.5, 0.3)
    want = (
        jp.l1(params, reduction="mean"),
        jp.l2(params, center=ref, clip=0.5),
        jp.l2(params, center=0.3),
        jp.elastic_net(params, l1_ratio=0.25),
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(got[1], ref_l2(params, "sum", ref, 0.5), rtol=1e-6)


def test_weight_like_options_do_not_recompile():
    x = {"w": jnp.linspace(-2, 2, 12).reshape(3, 4)}
    jp.l2(x, center=0.1, clip=1.0)
    jp.elastic_net(x, l1_ratio=0.2)
    with count_compiles() as compiles:
        for v in (0.3, 0.7, 1.9):
            jp.l2(x, center=v, clip=v + 0.5)
            jp.elastic_net(x, l1_ratio=v / 2)
        assert compiles() == 0
        jp.l2(x, center="mean")  # a new static mode does compile
        assert compiles() == 1


# ---------------------------------------------------------------------------
# Dtypes
# ---------------------------------------------------------------------------


def test_low_precision_leaves_accumulate_in_float32():
    # 300² = 90,000 overflows float16 (max 65,504); the sum is exact in float32.
    x16 = {"a": jnp.full((4,), 300.0, jnp.float16), "b": jnp.ones(3, jnp.bfloat16)}
    out = jp.l2(x16)
    assert out.dtype == jnp.float32
    assert out == 4 * 90_000.0 + 3.0
    assert jp.l1(x16).dtype == jnp.float32
    assert jp.elastic_net(x16, l1_ratio=1.0) == 4 * 300.0 + 3.0
    # Many bf16 ones: a bf16 accumulator would stall at 256.
    assert jp.l1(jnp.ones(4096, jnp.bfloat16)) == 4096.0


def test_float64_under_x64():
    with jax.enable_x64(True):
        x = jnp.asarray([1e-9, 1.0], jnp.float64)
        out = jp.l2(x, center=1.0)
        assert out.dtype == jnp.float64
        assert out == (1e-9 - 1.0) ** 2


# ---------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(5)
    with jax.enable_x64(True):
        # Values kept away from 0 (L1 kink) and from the clip boundary.
        x = {
            "w": jnp.asarray(
                rng.uniform(0.2, 1.0, (3, 4)) * rng.choice([-1, 1], (3, 4))
            ),
            "b": jnp.asarray(rng.uniform(0.2, 1.0, (4,))),
        }
        ref = jax.tree.map(lambda v: v + 0.05 * jnp.ones_like(v), x)
        fns = [
            jp.l1,
            functools.partial(jp.l1, reduction="mean"),
            jp.l2,
            functools.partial(jp.l2, center="mean", reduction="mean"),
            functools.partial(jp.l2, center=ref, clip=10.0),
            functools.partial(jp.l2, center=0.1, clip=0.15),
            functools.partial(jp.elastic_net, l1_ratio=0.3),
        ]
        for fn in fns:
            assert_grads_match_finite_differences(fn, (x,), 1e-6)
        # L2-SP: the gradient also flows to the reference.
        check_grads(
            lambda r: jp.l2(x, center=r), (ref,), order=1, modes=["rev"], atol=1e-6
        )


def test_closed_form_gradients_and_subgradient_zero_at_zero():
    x = jnp.array([-2.0, -0.5, 0.0, 0.0, 0.5, 3.0])
    sign = np.sign(np.asarray(x))
    np.testing.assert_array_equal(jax.grad(jp.l1)(x), sign)  # 0 at 0
    np.testing.assert_array_equal(jax.grad(jp.l2)(x), 2 * np.asarray(x))
    en = jax.grad(functools.partial(jp.elastic_net, l1_ratio=0.25))(x)
    np.testing.assert_allclose(en, 0.25 * sign + 2 * 0.75 * np.asarray(x))
    # clip: gradient 2(x − c) inside the bound, 0 outside
    g = jax.grad(functools.partial(jp.l2, clip=1.0))(x)
    np.testing.assert_array_equal(g, np.where(np.abs(x) < 1.0, 2 * np.asarray(x), 0))
    # All-zero params: every gradient is exactly 0 (nothing pushes them).
    zeros = {"w": jnp.zeros((3, 3)), "b": jnp.zeros(3)}
    for fn in (jp.l1, jp.l2, jp.elastic_net):
        for leaf in jax.tree_util.tree_leaves(jax.grad(fn)(zeros)):
            np.testing.assert_array_equal(leaf, 0.0)


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def test_errors():
    x = {"w": jnp.ones((2, 3)), "b": jnp.ones(3)}
    with pytest.raises(ValueError, match=r"`reduction`.*\('sum', 'mean'\).*'none'"):
        jp.l1(x, reduction="none")
    with pytest.raises(ValueError, match="`center`.*structure"):
        jp.l2(x, center={"w": jnp.ones((2, 3))})
    with pytest.raises(ValueError, match=r"x\['w'\].*\(2, 3\).*\(3, 2\)"):
        jp.l2(x, center={"w": jnp.ones((3, 2)), "b": jnp.ones(3)})
    with pytest.raises(ValueError, match="`center`.*'median'"):
        jp.l2(x, center="median")
    with pytest.raises(ValueError, match="`center`"):
        jp.l2(x, center=True)
    with pytest.raises(ValueError, match=r"`clip` to be a finite number > 0"):
        jp.l2(x, clip=0.0)
    with pytest.raises(ValueError, match=r"`clip` to be a finite number > 0, got -1.0"):
        jp.l2(x, clip=np.float32(-1.0))  # a NumPy scalar is checked too
    with pytest.raises(ValueError, match="`clip` to be a scalar"):
        jp.l2(x, clip=jnp.ones(2))
    with pytest.raises(ValueError, match=r"`l1_ratio` to be in \[0, 1\], got 1.5"):
        jp.elastic_net(x, l1_ratio=1.5)
    with pytest.raises(ValueError, match="`l1_ratio` to be a number"):
        jp.elastic_net(x, l1_ratio="half")
    with pytest.raises(TypeError, match=r"`x\['n'\]` to be a floating-point.*int32"):
        jp.l1({"n": jnp.arange(3)})
    with pytest.raises(TypeError, match="`reduction` must be a static Python value"):
        jax.jit(lambda r: jp.l1(x, reduction=r))(jnp.asarray(1))


# ---------------------------------------------------------------------------
# Properties (hypothesis): fixed shapes, many values
# ---------------------------------------------------------------------------

PROPS = settings(max_examples=30, deadline=None)
FLOATS = st.floats(-100, 100, allow_nan=False, allow_subnormal=False, width=32)
VEC = hnp.arrays(np.float32, (7,), elements=FLOATS)
MAT = hnp.arrays(np.float32, (2, 3), elements=FLOATS)
SCALE = st.floats(-10, 10, allow_nan=False, allow_subnormal=False)
RATIO = st.floats(0, 1)


@PROPS
@given(VEC, MAT, RATIO)
def test_nonnegative_and_zero_at_zero(v, m, r):
    tree = {"v": v, "m": m}
    for value in (
        jp.l1(tree),
        jp.l2(tree),
        jp.l2(tree, center="mean"),
        jp.elastic_net(tree, l1_ratio=r),
    ):
        assert value >= 0
    zeros = jax.tree.map(np.zeros_like, tree)
    assert jp.l1(zeros) == 0 and jp.l2(zeros) == 0
    assert jp.elastic_net(zeros, l1_ratio=r) == 0
    assert jp.l2(tree, center=tree) == 0  # distance to itself


@PROPS
@given(VEC, SCALE)
def test_homogeneity(v, k):
    kv = (np.float64(k) * v.astype(np.float64)).astype(np.float32)
    np.testing.assert_allclose(jp.l2(kv), k**2 * ref_l2(v), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(jp.l1(kv), abs(k) * ref_l1(v), rtol=1e-4, atol=1e-4)


@PROPS
@given(VEC, MAT)
def test_elastic_net_ends_and_pytree_is_sum_over_leaves(v, m):
    tree = {"v": v, "m": m}
    assert jp.elastic_net(tree, l1_ratio=1.0) == pytest.approx(
        float(jp.l1(tree)), rel=1e-6
    )
    assert jp.elastic_net(tree, l1_ratio=0.0) == pytest.approx(
        float(jp.l2(tree)), rel=1e-6
    )
    for fn in (jp.l1, jp.l2, functools.partial(jp.l2, center="mean")):
        np.testing.assert_allclose(fn(tree), fn(v) + fn(m), rtol=1e-5, atol=1e-5)
    # mean over all elements of all leaves = sum / (7 + 6)
    np.testing.assert_allclose(
        jp.l2(tree, reduction="mean"), jp.l2(tree) / 13, rtol=1e-6, atol=1e-6
    )
