"""Tests for fused_linear_kl_divergence and fused_linear_js_divergence.

The reference is the plain divergence on materialised logits,
``jp.kl_divergence(jax.nn.log_softmax(x @ w), jax.nn.log_softmax(rx @ rw))``,
and, independently of the package, SciPy float64 (``log_softmax``,
``rel_entr``) and finite differences in float64.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxpenalties as jp
from jaxpenalties._core.chunking import plan as _plan
from tests.helpers import (
    assert_grads_match_finite_differences,
    materialised,
    position_weighted_sum,
    random_heads,
)

H, HR, V = 16, 12, 96


def heads(positions, seed=0, dtype=jnp.float32, h=H, hr=HR, v=V):
    """Random hidden states and kernels; logits have a standard deviation ~2."""
    return random_heads(positions, h, hr, v, seed=seed, dtype=dtype, logit_std=2.0)


def value_and_grads(f, args, reduction):
    """Value and gradients w.r.t. all four inputs; "none" is reduced by a
    weighted sum so that each position gets a different cotangent."""
    return all_reductions(lambda *a, reduction: f(*a), args, (reduction,))[0]


def all_reductions(f, args, reductions=("mean", "sum", "none")):
    """[(value, grads)] of ``f(*args, reduction=r)`` for each r, one compile."""

    def scalar(*a, reduction):
        out = f(*a, reduction=reduction)
        if reduction == "none":
            return position_weighted_sum(out), out
        return out, out

    def run(*a):
        results = []
        for r in reductions:
            grad_fn = jax.value_and_grad(
                functools.partial(scalar, reduction=r), (0, 1, 2, 3), has_aux=True
            )
            (_, out), grads = grad_fn(*a)
            results.append((out, grads))
        return results

    return jax.jit(run)(*args)


def assert_close(got, want, rtol, atol):
    """allclose per leaf, ``atol`` relative to the leaf's largest magnitude."""
    for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.shape == e.shape and g.dtype == e.dtype, (g.shape, e.shape)
        scale = max(1.0, float(np.max(np.abs(e), initial=0.0)))
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol * scale)


OPTIONS = [
    ("kl", dict(direction="forward")),
    ("kl", dict(direction="reverse", temperature=0.5)),
    ("kl", dict(symmetric=True, temperature=2.0)),
    ("js", dict(beta=0.5)),
    ("js", dict(beta=0.2, temperature=0.7)),
]


def fused_and_plain(kind):
    if kind == "kl":
        return jp.fused_linear_kl_divergence, jp.kl_divergence
    return jp.fused_linear_js_divergence, jp.js_divergence


# ---------------------------------------------------------------------------
# Values and gradients equal the materialised divergence
# ---------------------------------------------------------------------------


class TestMatchesMaterialised:
    @pytest.mark.parametrize("kind,options", OPTIONS)
    def test_every_option_and_reduction(self, kind, options):
        # 13 positions in chunks of at most 4: several chunks, with padded rows.
        n_chunks, c = _plan(13, 4)
        assert n_chunks > 1 and n_chunks * c > 13
        args = heads((13,))
        fused, plain = fused_and_plain(kind)
        got = all_reductions(functools.partial(fused, chunk_size=4, **options), args)
        want = all_reductions(functools.partial(materialised, plain, **options), args)
        assert_close(got, want, rtol=2e-5, atol=2e-6)

    @pytest.mark.parametrize("kind,options", OPTIONS[2:3])
    def test_exact_in_float64(self, kind, options):
        # In float64 the chunked and materialised computations agree to ~1e-12:
        # same math, only the summation order differs.
        with jax.enable_x64(True):
            args = heads((13,), dtype=jnp.float64)
            fused, plain = fused_and_plain(kind)
            f = functools.partial(fused, chunk_size=4, **options)
            got = all_reductions(f, args)
            want = all_reductions(
                functools.partial(materialised, plain, **options), args
            )
            assert got[0][0].dtype == jnp.float64
            assert_close(got, want, rtol=1e-10, atol=1e-12)

    def test_leading_shape_and_broadcast_where_with_nan_garbage(self):
        x, w, rx, rw = heads((2, 3))
        where = jnp.array([[True, False, True], [False, False, True]])
        # Garbage (NaN, inf) at masked positions reaches neither value nor grad.
        x_bad = jnp.where(where[..., None], x, jnp.nan)
        rx_bad = jnp.where(where[..., None], rx, jnp.inf)
        got = all_reductions(
            functools.partial(
                jp.fused_linear_kl_divergence,
                where=where,
                chunk_size=2,
                symmetric=True,
            ),
            (x_bad, w, rx_bad, rw),
        )
        want = all_reductions(
            functools.partial(
                materialised, jp.kl_divergence, where=where, symmetric=True
            ),
            (x, w, rx, rw),
        )
        assert_close(got, want, rtol=2e-5, atol=2e-6)
        for _, (dx, _, drx, _) in got:
            assert np.all(np.asarray(dx)[~np.asarray(where)] == 0)
            assert np.all(np.asarray(drx)[~np.asarray(where)] == 0)

    def test_where_broadcasts_over_position_axes(self):
        args = heads((2, 3))
        where = jnp.array([[True], [False]])  # [2, 1] -> position shape [2, 3]
        got = jp.fused_linear_js_divergence(*args, where=where, chunk_size=4)
        full = jnp.broadcast_to(where, (2, 3))
        want = materialised(jp.js_divergence, *args, where=full)
        np.testing.assert_allclose(got, want, rtol=2e-5)

    def test_all_masked_gives_zero_and_zero_gradients(self):
        args = heads((5,))
        where = jnp.zeros((5,), bool)
        f = functools.partial(jp.fused_linear_kl_divergence, where=where, chunk_size=2)
        value, grads = jax.value_and_grad(f, (0, 1, 2, 3))(*args)
        assert value == 0.0
        for g in grads:
            assert np.all(np.asarray(g) == 0)

    def test_per_position_path_matches_for_scalar_reductions(self):
        # The per-position path ("none", whose backward pass recomputes each
        # chunk's logits) averaged, against "mean" (gradients formed in the
        # forward pass): same value and gradients.
        args = heads((13,))
        fused = functools.partial(jp.fused_linear_kl_divergence, chunk_size=4)

        def recomputed(*a):
            return jnp.mean(fused(*a, reduction="none"))

        got = value_and_grads(recomputed, args, "mean")
        want = value_and_grads(functools.partial(fused, reduction="mean"), args, "mean")
        assert_close(got, want, rtol=2e-5, atol=2e-6)

    def test_temperature_array_value_and_gradient(self):
        args = heads((6,))

        def fused(t):
            return jp.fused_linear_kl_divergence(*args, temperature=t, chunk_size=4)

        def plain(t):
            return materialised(jp.kl_divergence, *args, temperature=t)

        t = jnp.asarray(1.7)
        np.testing.assert_allclose(fused(t), plain(t), rtol=2e-5)
        np.testing.assert_allclose(jax.grad(fused)(t), jax.grad(plain)(t), rtol=1e-4)

    def test_frozen_reference_gets_no_gradient_and_same_student_gradient(self):
        x, w, rx, rw = heads((7,))

        def f(x, w, rx, rw):
            rx, rw = jax.lax.stop_gradient((rx, rw))
            return jp.fused_linear_js_divergence(x, w, rx, rw, chunk_size=3)

        grads = jax.grad(f, (0, 1, 2, 3))(x, w, rx, rw)
        want = jax.grad(functools.partial(materialised, jp.js_divergence), (0, 1))(
            x, w, rx, rw
        )
        assert_close(grads[:2], want, rtol=1e-4, atol=2e-6)
        assert np.all(np.asarray(grads[2]) == 0) and np.all(np.asarray(grads[3]) == 0)

    @pytest.mark.parametrize("chunk_size", [1, 3, 5, 64])
    def test_chunk_size_does_not_change_the_result(self, chunk_size):
        args = heads((2, 5))
        got = jp.fused_linear_kl_divergence(*args, chunk_size=chunk_size)
        want = jp.fused_linear_kl_divergence(*args, chunk_size=1024)  # one chunk
        np.testing.assert_allclose(got, want, rtol=1e-6)

    def test_bfloat16_inputs_accumulate_in_float32(self):
        args16 = heads((2, 9), dtype=jnp.bfloat16)
        args32 = tuple(a.astype(jnp.float32) for a in args16)  # same numbers
        for reduction in ("mean", "none"):
            (v16, g16) = value_and_grads(
                functools.partial(
                    jp.fused_linear_kl_divergence, reduction=reduction, chunk_size=4
                ),
                args16,
                reduction,
            )
            (v32, g32) = value_and_grads(
                functools.partial(materialised, jp.kl_divergence, reduction=reduction),
                args32,
                reduction,
            )
            assert v16.dtype == jnp.float32
            # bf16 × bf16 products are exact in float32: the value is float32-close.
            np.testing.assert_allclose(v16, v32, rtol=1e-4, atol=1e-5)
            for g, e, a in zip(g16, g32, args16, strict=True):
                assert g.dtype == a.dtype == jnp.bfloat16
                scale = float(jnp.max(jnp.abs(e)))
                np.testing.assert_allclose(
                    g.astype(jnp.float32), e, rtol=2e-2, atol=1e-2 * scale
                )

    def test_inside_user_jit_vmap_and_scan(self):
        x, w, rx, rw = heads((3, 5))
        f = functools.partial(jp.fused_linear_js_divergence, beta=0.3, chunk_size=2)
        batched = jax.jit(jax.vmap(f, in_axes=(0, None, 0, None)))(x, w, rx, rw)
        rows = [
            materialised(jp.js_divergence, x[i], w, rx[i], rw, beta=0.3)
            for i in range(3)
        ]
        np.testing.assert_allclose(batched, jnp.stack(rows), rtol=2e-5)

        def body(carry, xs):
            return carry + f(xs[0], w, xs[1], rw), None

        total, _ = jax.lax.scan(body, jnp.zeros(()), (x, rx))
        np.testing.assert_allclose(total, jnp.sum(batched), rtol=2e-5)


# ---------------------------------------------------------------------------
# Independent references: SciPy float64 and finite differences
# ---------------------------------------------------------------------------


def scipy_kl(x, w, rx, rw, temperature=1.0):
    a = scipy.special.log_softmax(x @ w / temperature, axis=-1)
    b = scipy.special.log_softmax(rx @ rw / temperature, axis=-1)
    return scipy.special.rel_entr(np.exp(a), np.exp(b)).sum(-1)


def test_values_match_scipy_float64():
    args = heads((3, 4))
    want = scipy_kl(*(np.asarray(a, np.float64) for a in args), temperature=1.5)
    got = jp.fused_linear_kl_divergence(
        *args, temperature=1.5, reduction="none", chunk_size=5
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_gradients_match_finite_differences_in_float64():
    with jax.enable_x64(True):
        args = heads((5,), dtype=jnp.float64, h=4, hr=3, v=7)
        for fn in (
            functools.partial(jp.fused_linear_kl_divergence, chunk_size=2),
            functools.partial(jp.fused_linear_js_divergence, beta=0.3, chunk_size=2),
        ):
            assert fn(*args).dtype == jnp.float64
            assert_grads_match_finite_differences(fn, args, 1e-6)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(0.01, 30.0),
    chunk_size=st.sampled_from([1, 2, 3, 7]),
)
def test_property_fused_equals_plain_js(seed, scale, chunk_size):
    x, w, rx, rw = heads((7,), seed=seed)
    x, rx = x * scale, rx * scale  # up to very peaked distributions
    got = jp.fused_linear_js_divergence(x, w, rx, rw, chunk_size=chunk_size)
    want = materialised(jp.js_divergence, x, w, rx, rw)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert 0.0 <= float(got) <= np.log(2) + 1e-6


def test_extreme_logits_give_finite_gradients():
    x, w, rx, rw = heads((4,))
    x = x * 1e3  # logits of order 1e3-1e4: one-hot distributions
    grads = jax.grad(jp.fused_linear_kl_divergence, (0, 1, 2, 3))(x, w, rx, rw)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))


def test_docstring_example_value_is_log2():
    # Hand-worked: P = softmax([50, -50]) ≈ [1, 0], Q ≈ [0, 1], JS = log 2.
    x = jnp.ones((2, 1))
    got = jp.fused_linear_js_divergence(
        x, jnp.array([[50.0, -50.0]]), x, jnp.array([[-50.0, 50.0]])
    )
    np.testing.assert_allclose(got, np.log(2), rtol=1e-6)


# ---------------------------------------------------------------------------
# Memory: the [positions, V] logits are never materialised
# ---------------------------------------------------------------------------


def temp_bytes(f, n, h, v):
    shapes = [(n, h), (h, v), (n, h), (h, v)]
    structs = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    compiled = jax.jit(jax.grad(f, (0, 1))).lower(*structs).compile()
    return compiled.memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_compiled_memory_is_bounded_by_chunk_not_positions(reduction):
    v, h, chunk = 4096, 16, 64

    def fused(*a):
        out = jp.fused_linear_kl_divergence(*a, reduction=reduction, chunk_size=chunk)
        return jnp.sum(out)

    logits_bytes = 8192 * v * 4  # one float32 [positions, V] array at 8192 rows
    small, large = temp_bytes(fused, 1024, h, v), temp_bytes(fused, 8192, h, v)
    assert large < 0.1 * logits_bytes
    # 8× the positions: growth only from O(positions · H) buffers, not · V.
    assert large - small < 8192 * (4 * h + 64) * 4


# ---------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------


class TestValidation:
    def setup_method(self):
        self.args = heads((3,), h=4, hr=5, v=6)

    def test_hidden_size_mismatch_names_both_shapes(self):
        x, w, rx, rw = self.args
        with pytest.raises(ValueError, match=r"`x`.*`w`.*\(3, 4\) and \(5, 6\)"):
            jp.fused_linear_kl_divergence(x, rw, rx, rw)
        with pytest.raises(
            ValueError, match=r"`ref_x`.*`ref_w`.*\(3, 5\) and \(4, 6\)"
        ):
            jp.fused_linear_js_divergence(x, w, rx, w)

    def test_vocabulary_mismatch_names_both_shapes(self):
        x, w, rx, rw = self.args
        with pytest.raises(ValueError, match=r"vocabulary.*\(4, 6\) and \(5, 7\)"):
            jp.fused_linear_kl_divergence(x, w, rx, jnp.ones((5, 7)))

    def test_position_mismatch_names_both_shapes(self):
        x, w, rx, rw = self.args
        with pytest.raises(ValueError, match=r"position shape.*\(3, 4\) and \(2, 5\)"):
            jp.fused_linear_kl_divergence(x, w, rx[:2], rw)

    def test_kernel_must_be_two_dimensional(self):
        x, w, rx, rw = self.args
        with pytest.raises(ValueError, match=r"`w` to be a 2-D \[H, V\].*\(4, 6, 1\)"):
            jp.fused_linear_kl_divergence(x, w[..., None], rx, rw)

    def test_where_shape_mismatch(self):
        with pytest.raises(ValueError, match=r"broadcastable.*\(3,\).*\(4,\)"):
            jp.fused_linear_kl_divergence(*self.args, where=jnp.ones((4,), bool))

    @pytest.mark.parametrize("bad", [0, -2, 2.0, True, "8"])
    def test_chunk_size_must_be_a_positive_python_int(self, bad):
        with pytest.raises(ValueError, match="chunk_size"):
            jp.fused_linear_kl_divergence(*self.args, chunk_size=bad)

    def test_traced_static_options_raise_type_error(self):
        with pytest.raises(TypeError, match="chunk_size.*static"):
            jax.jit(lambda c: jp.fused_linear_kl_divergence(*self.args, chunk_size=c))(
                4
            )
        with pytest.raises(TypeError, match="direction.*static"):
            jp.fused_linear_kl_divergence(*self.args, direction=jnp.asarray(1))
        with pytest.raises(TypeError, match="beta.*static"):
            jax.jit(lambda b: jp.fused_linear_js_divergence(*self.args, beta=b))(0.5)

    def test_unknown_options(self):
        with pytest.raises(ValueError, match=r"`direction`.*'forward', 'reverse'"):
            jp.fused_linear_kl_divergence(*self.args, direction="backward")
        with pytest.raises(ValueError, match=r"`reduction`.*'mean', 'sum', 'none'"):
            jp.fused_linear_js_divergence(*self.args, reduction="max")
        with pytest.raises(ValueError, match=r"`beta`.*\(0, 1\)"):
            jp.fused_linear_js_divergence(*self.args, beta=1.0)
        with pytest.raises(ValueError, match=r"`temperature`.*> 0"):
            jp.fused_linear_kl_divergence(*self.args, temperature=0.0)

    def test_integer_inputs_raise_type_error(self):
        x, w, rx, rw = self.args
        with pytest.raises(TypeError, match="`x`.*floating"):
            jp.fused_linear_kl_divergence(jnp.ones((3, 4), int), w, rx, rw)


# ---------------------------------------------------------------------------
# Chunk plan (pure Python)
# ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(0, 5000),
    chunk_size=st.integers(1, 700),
    shards=st.sampled_from([1, 2, 4, 8]),
)
def test_plan_contract(n, chunk_size, shards):
    n_chunks, c = _plan(n, chunk_size, shards)
    assert n_chunks >= 1 and n_chunks * c >= n
    if shards == 1 or n % shards:
        # At most chunk_size rows per chunk, fewer than n_chunks padded rows.
        assert c <= max(chunk_size, 1) and n_chunks * c - n < n_chunks
    else:
        # Explicitly sharded rows: no padding, every chunk splits over shards.
        assert n_chunks * c == n and (n // shards) % n_chunks == 0
        assert c <= chunk_size or c == shards
    if n:
        _check_exact_split(n, chunk_size, shards)


def _check_exact_split(n, chunk_size, shards):
    # The documented preference: when some number of chunks between the fewest
    # and twice the fewest divides each shard's rows, one such number is taken:
    # nothing is padded and no chunk exceeds chunk_size.
    n_chunks, c = _plan(n, chunk_size, shards)
    fewest = -(-n // chunk_size)
    if n % shards == 0 and any(
        (n // shards) % k == 0 for k in range(fewest, 2 * fewest + 1)
    ):
        assert n_chunks * c == n
        assert fewest <= n_chunks <= 2 * fewest and c <= chunk_size
        if shards > 1:
            assert c % shards == 0


# ---------------------------------------------------------------------------
# bf16 heads: no float32 copy of the kernel; chunk_size=None from a budget
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("argnums", [(0,), (0, 1)])
def test_bf16_head_gradient_holds_no_float32_copy_of_the_kernel(argnums):
    # H · V is large against one chunk's logits, so a float32 [H, V] copy of w
    # (what a float32 cotangent times a bf16 kernel makes) would show.
    h, v, n = 512, 4096, 64
    x = jax.ShapeDtypeStruct((n, h), jnp.bfloat16)
    w = jax.ShapeDtypeStruct((h, v), jnp.bfloat16)
    sg = jax.lax.stop_gradient

    def loss(x, w):
        return jp.fused_linear_js_divergence(x, w, sg(x), sg(w), chunk_size=16)

    step = jax.jit(jax.value_and_grad(loss, argnums))
    temp = step.lower(x, w).compile().memory_analysis().temp_size_in_bytes
    kernel_f32 = h * v * 4
    # dx only: chunk buffers (≈ 0.25 of a float32 kernel here). With dw: the
    # float32 accumulator and one chunk's float32 partial product.
    allowed = 0.5 if argnums == (0,) else 2.5
    assert temp < allowed * kernel_f32, temp / kernel_f32


def test_default_chunk_size_follows_the_kernel_budget():
    from jaxpenalties._core.chunking import default_chunk_size as _default_chunk_size

    def kernel(h, v, dtype):
        return jax.ShapeDtypeStruct((h, v), dtype)

    # A third of the kernel's memory for (8 + itemsize) · V bytes per row.
    assert _default_chunk_size(kernel(4096, 128256, jnp.bfloat16)) == 273
    assert _default_chunk_size(kernel(4096, 128256, jnp.float32)) == 455
    # Small heads: 16 MiB of float32 logits per chunk.
    assert _default_chunk_size(kernel(16, 96, jnp.float32)) == 2**22 // 96


def test_chunk_size_none_is_the_default_and_explicit_wins():
    args = heads((2, 5))
    default = jp.fused_linear_kl_divergence(*args)
    np.testing.assert_array_equal(
        default, jp.fused_linear_kl_divergence(*args, chunk_size=None)
    )
    np.testing.assert_allclose(
        default, jp.fused_linear_kl_divergence(*args, chunk_size=3), rtol=1e-6
    )
    with pytest.raises(ValueError, match="chunk_size"):
        jp.fused_linear_kl_divergence(*args, chunk_size=0)
