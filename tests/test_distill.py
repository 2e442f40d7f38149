"""Hard labels in the fused pass: soft · divergence + hard · CE from one pass
over the student's logit chunks, exact against the materialised formulas."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpenalties as jp
from tests.helpers import count_compiles, random_heads

V = 11


def heads(seed=0, dtype=jnp.float64):
    return random_heads((2, 7), 4, 3, V, seed=seed, dtype=dtype)


LABELS = jnp.asarray(np.random.default_rng(1).integers(0, V, size=(2, 7)))
LABELS = LABELS.at[0, 2].set(-100).at[1, 0].set(-100)
WHERE = jnp.ones((2, 7), bool).at[1, 5].set(False)


def materialised(
    kind, x, w, rx, rw, *, soft, hard, eps, reduction, labels=LABELS, **kw
):
    """Both parts from the full log-softmax, written with jnp (NumPy-level)."""
    a, b = jax.nn.log_softmax(x @ w), jax.nn.log_softmax(rx @ rw)
    plain = jp.kl_divergence if kind == "kl" else jp.js_divergence
    div = plain(a, b, where=WHERE, reduction=reduction, **kw)
    kept = WHERE & (labels != -100)
    nll = -jnp.take_along_axis(a, jnp.where(kept, labels, 0)[..., None], -1)[..., 0]
    ce_rows = jnp.where(kept, (1 - eps) * nll - eps * jnp.mean(a, -1), 0.0)
    ce = jnp.sum(ce_rows)
    if reduction == "mean":
        ce = ce / jnp.sum(kept, dtype=ce.dtype)
    return soft * div + hard * ce, {"divergence": div, "cross_entropy": ce}


def fused(kind, x, w, rx, rw, *, soft, hard, eps, reduction, labels=LABELS, **kw):
    f = jp.fused_linear_kl_divergence if kind == "kl" else jp.fused_linear_js_divergence
    return f(
        x,
        w,
        rx,
        rw,
        where=WHERE,
        labels=labels,
        soft_weight=soft,
        hard_weight=hard,
        label_smoothing=eps,
        reduction=reduction,
        chunk_size=4,
        **kw,
    )


CASES = [
    ("kl", dict(soft=0.5, hard=0.5, eps=0.0, reduction="mean")),
    ("kl", dict(soft=1.0, hard=0.3, eps=0.1, reduction="sum", direction="reverse")),
    ("js", dict(soft=0.3, hard=0.7, eps=0.1, reduction="mean", beta=0.2)),
    ("js", dict(soft=2.0, hard=1.0, eps=0.0, reduction="mean", temperature=2.0)),
]


@pytest.mark.parametrize("kind,kw", CASES)
def test_value_metrics_and_gradients_match_materialised_in_float64(kind, kw):
    with jax.enable_x64(True):
        args = heads()
        got = jax.value_and_grad(
            functools.partial(fused, kind, **kw), (0, 1, 2, 3), has_aux=True
        )(*args)
        want = jax.value_and_grad(
            functools.partial(materialised, kind, **kw), (0, 1, 2, 3), has_aux=True
        )(*args)
        for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-12)


def test_float32_jit_and_frozen_teacher():
    args = heads(dtype=jnp.float32)
    kw = dict(soft=0.5, hard=0.5, eps=0.1, reduction="mean")

    def f(x, w, rx, rw):
        rx, rw = jax.lax.stop_gradient((rx, rw))
        return fused("js", x, w, rx, rw, **kw)

    (v, m), (*g, grx, grw) = jax.jit(jax.value_and_grad(f, (0, 1, 2, 3), has_aux=True))(
        *args
    )
    # The frozen teacher gets exactly zero gradient.
    assert not np.any(np.asarray(grx)) and not np.any(np.asarray(grw))
    (ve, me), ge = jax.value_and_grad(
        functools.partial(materialised, "js", **kw), (0, 1), has_aux=True
    )(*args)
    np.testing.assert_allclose(v, ve, rtol=2e-5)
    np.testing.assert_allclose(m["cross_entropy"], me["cross_entropy"], rtol=2e-5)
    for a, b in zip(g, ge, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_weights_are_traced_never_recompile_and_get_their_gradient():
    args = heads(dtype=jnp.float32)
    step = jax.jit(
        lambda s, h: fused("kl", *args, soft=s, hard=h, eps=0.0, reduction="mean")
    )
    step(0.5, 0.5)
    with count_compiles() as compiles:
        (total, m) = step(0.2, 0.8)
        assert compiles() == 0
    np.testing.assert_allclose(
        total, 0.2 * m["divergence"] + 0.8 * m["cross_entropy"], rtol=1e-6
    )
    # The objective is linear in the weights: d/d soft = divergence, etc.
    ds, dh = jax.grad(lambda s, h: step(s, h)[0], (0, 1))(0.2, 0.8)
    np.testing.assert_allclose(ds, m["divergence"], rtol=1e-5)
    np.testing.assert_allclose(dh, m["cross_entropy"], rtol=1e-5)


def test_all_labels_ignored_gives_the_divergence_alone():
    args = heads(dtype=jnp.float32)
    ignored = jnp.full((2, 7), -100)
    total, m = jp.fused_linear_kl_divergence(
        *args, labels=ignored, soft_weight=1.0, hard_weight=1.0, chunk_size=4
    )
    assert float(m["cross_entropy"]) == 0.0
    np.testing.assert_allclose(
        total, jp.fused_linear_kl_divergence(*args, chunk_size=4), rtol=1e-6
    )


def test_bad_labels_are_named():
    args = heads(dtype=jnp.float32)
    f = jp.fused_linear_js_divergence
    with pytest.raises(TypeError, match="`labels` to be an integer"):
        f(*args, labels=jnp.zeros((2, 7)))
    with pytest.raises(ValueError, match=r"`labels` to have the position shape"):
        f(*args, labels=jnp.zeros((2, 6), int))
    with pytest.raises(ValueError, match=r"`labels` in \[0, 11\)"):
        f(*args, labels=jnp.full((2, 7), 11))
    with pytest.raises(ValueError, match="reduction"):
        f(*args, labels=LABELS, reduction="none")
    with pytest.raises(ValueError, match="label_smoothing"):
        f(*args, labels=LABELS, label_smoothing=1.0)
    with pytest.raises(ValueError, match="hard_weight"):
        f(*args, labels=LABELS, hard_weight=jnp.asarray(-1.0))
    with pytest.raises(ValueError, match="`where` to be broadcastable"):
        f(*args, labels=LABELS, where=np.ones((3, 7), bool))


@pytest.mark.parametrize("bad", [-1, V, 2**32 + 3])
def test_traced_label_outside_the_vocabulary_is_nan_at_its_position(bad):
    # Under jit the range cannot be checked: the position's cross-entropy and
    # the gradient it sends are NaN, never the loss of token V - 1 (a negative
    # index read from the end) or of token 3 (2**32 + 3 wrapped to int32).
    kw = dict(soft=0.5, hard=0.5, eps=0.1, reduction="sum")
    with jax.enable_x64(True):
        args = heads()
        labels = jnp.asarray(np.asarray(LABELS), jnp.int64)
        bad_labels, ignored = labels.at[0, 3].set(bad), labels.at[0, 3].set(-100)

        def ours(x, w, labels):
            return fused("kl", x, w, *args[2:], labels=labels, **kw)

        step = jax.jit(jax.value_and_grad(ours, (0, 1), has_aux=True))
        (total, m), (gx, gw) = step(*args[:2], bad_labels)
        assert np.isnan(total) and np.isnan(m["cross_entropy"])
        assert np.isnan(gx[0, 3]).all() and np.isnan(gw).any()
        # Every other position is as with that label ignored (float64 reference).
        (_, want), (ex, _) = jax.value_and_grad(
            functools.partial(materialised, "kl", labels=ignored, **kw),
            (0, 1),
            has_aux=True,
        )(*args)
        np.testing.assert_allclose(m["divergence"], want["divergence"], rtol=1e-12)
        others = np.ones((2, 7), bool)
        others[0, 3] = False
        np.testing.assert_allclose(
            np.asarray(gx)[others], np.asarray(ex)[others], rtol=1e-10, atol=1e-12
        )


def test_garbage_labels_at_masked_and_ignored_positions_are_never_read():
    # `where`-masked positions may hold any label, eagerly and under jit: the
    # result is exactly that with a valid label there, without a NaN.
    args = heads(dtype=jnp.float32)
    kw = dict(soft=0.5, hard=0.5, eps=0.1, reduction="mean")
    garbage = LABELS.at[1, 5].set(-1)  # WHERE[1, 5] is False
    assert int(LABELS[1, 5]) != -1 and not bool(WHERE[1, 5])

    def f(x, w, labels):
        return fused("js", x, w, *args[2:], labels=labels, **kw)

    step = jax.value_and_grad(f, (0, 1), has_aux=True)
    want = step(*args[:2], LABELS)
    for got in (step(*args[:2], garbage), jax.jit(step)(*args[:2], garbage)):
        for g, e in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            assert np.all(np.isfinite(g))
            np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)
    # The same eagerly at an unmasked position is refused, naming the label.
    with pytest.raises(ValueError, match=r"`labels` in \[0, 11\).*got \[-1\]"):
        f(*args[:2], LABELS.at[0, 5].set(-1))


@pytest.mark.parametrize("n", [4096, 32768])
def test_distillation_step_memory_is_that_of_the_divergence_alone(n):
    # CPU: compiled temp memory of value_and_grad w.r.t. the student, frozen
    # teacher, H = 128, V = 32,768 (the shapes): hard labels add one
    # [chunk, V] buffer (≈ 12% here, less with the default chunk size at LLM
    # shapes, where the [H, V] accumulators dominate) and stay flat in n.
    h, v = 128, 32768
    x = jax.ShapeDtypeStruct((n, h), jnp.float32)
    w = jax.ShapeDtypeStruct((h, v), jnp.float32)
    labels = jax.ShapeDtypeStruct((n,), jnp.int32)
    sg = jax.lax.stop_gradient

    def temp(f, *a):
        step = jax.jit(jax.value_and_grad(f, (0, 1), has_aux=True))
        return step.lower(*a).compile().memory_analysis().temp_size_in_bytes

    def alone(x, w):
        return jp.fused_linear_js_divergence(x, w, sg(x), sg(w), chunk_size=128), 0

    def distill(x, w, labels):
        return jp.fused_linear_js_divergence(
            x, w, sg(x), sg(w), labels=labels, chunk_size=128
        )

    ratio = temp(distill, x, w, labels) / temp(alone, x, w)
    assert ratio <= 1.15, ratio
    # Flat in positions: bounded by the [H, V] accumulators and a few chunk
    # buffers whatever n (one [n, V] float32 array is 512 MiB at n = 4,096).
    assert temp(distill, x, w, labels) < 2 * h * v * 4 + 10 * 128 * v * 4
