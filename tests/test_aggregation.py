"""aggregate: verl's four ``agg_loss`` modes exactly (empty sequences included),
TRL's ``dr_grpo`` through ``normalizer``, exact micro-batch accumulation, and
the ``extremes`` metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpenalties as jp
from jaxpenalties.rl._aggregation import MODES

RNG = np.random.default_rng(0)
B, T = 8, 7
# Uneven lengths; rows 2 and 5 are empty (fully masked) and row 0 has a hole.
LENGTHS = np.array([7, 3, 0, 5, 1, 0, 6, 2])
MASK = np.arange(T)[None, :] < LENGTHS[:, None]
MASK[0, 3] = False
LOGP = -RNG.uniform(0.1, 3.0, size=(B, T))
REF = -RNG.uniform(0.1, 3.0, size=(B, T))
VALUES = RNG.normal(size=(B, T))
# Rows 2 and 5 are empty: only 6 sequences count in verl's seq-mean modes.
NONEMPTY = int((MASK.sum(-1) > 0).sum())
assert NONEMPTY == 6


def verl_reference(v, mask, mode, normalizer=None):
    """verl's ``agg_loss`` (verl/trainer/ppo/core_algos.py) in float64 NumPy,
    written from its maths; ``normalizer`` replaces the denominator as verl's
    ``batch_num_tokens`` / ``global_batch_size`` / ``loss_scale_factor`` do."""
    m = np.asarray(mask, np.float64)
    v = np.where(m > 0, np.asarray(v, np.float64), 0.0)  # no 0 · NaN
    seq_tokens = m.sum(-1)  # Σ_t mask, per sequence
    seq_mask = (seq_tokens > 0).astype(np.float64)  # non-empty sequences
    if mode == "token-mean":
        return (m * v).sum() / (m.sum() if normalizer is None else normalizer)
    if mode == "seq-mean-token-sum":
        seq_losses = (m * v).sum(-1)
    elif mode == "seq-mean-token-mean":
        seq_losses = np.divide(
            (m * v).sum(-1),
            seq_tokens,
            out=np.zeros_like(seq_tokens),
            where=seq_tokens > 0,
        )
    else:  # seq-mean-token-sum-norm: verl's constant, the padded length T
        scale = m.shape[-1] if normalizer is None else normalizer
        return (m * v).sum() / scale
    count = seq_mask.sum() if normalizer is None else normalizer
    return (seq_losses * seq_mask).sum() / count


@pytest.mark.parametrize("mode", MODES)
def test_modes_match_verl_at_float64_with_empty_sequences(mode):
    # Garbage (NaN) at masked positions never enters.
    with jax.enable_x64(True):
        v = jnp.asarray(np.where(MASK, VALUES, np.nan))
        got = jp.aggregate(v, mode=mode, where=MASK.astype(np.int32))
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, verl_reference(VALUES, MASK, mode), rtol=1e-12)


def test_verl_modes_by_hand():
    # Two kept sequences and one empty one, T = 4.
    v = np.array([[1.0, 3.0, 0.0, 0.0], [4.0, 0.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0]])
    m = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    want = {
        "token-mean": (1 + 3 + 4) / 3,
        "seq-mean-token-sum": ((1 + 3) + 4) / 2,  # 2 non-empty sequences, not 3
        "seq-mean-token-mean": ((1 + 3) / 2 + 4 / 1) / 2,
        "seq-mean-token-sum-norm": (1 + 3 + 4) / 4,  # / T, no division by B
    }
    for mode, value in want.items():
        np.testing.assert_allclose(
            jp.aggregate(v, mode=mode, where=m), value, rtol=1e-6
        )
        np.testing.assert_allclose(verl_reference(v, m, mode), value, rtol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_normalizer_replaces_verls_denominator(mode):
    # token-mean: Σ mask (verl's batch_num_tokens); seq-mean-*: the number of
    # non-empty sequences (global_batch_size); seq-mean-token-sum-norm: T
    # (loss_scale_factor).
    with jax.enable_x64(True):
        v = jnp.asarray(VALUES)
        for normalizer in (13.5, 4096.0):
            got = jp.aggregate(v, mode=mode, where=MASK, normalizer=normalizer)
            want = verl_reference(VALUES, MASK, mode, normalizer)
            np.testing.assert_allclose(got, want, rtol=1e-12)
        # The default denominators, passed explicitly, change nothing.
        default = {
            "token-mean": MASK.sum(),
            "seq-mean-token-sum": NONEMPTY,
            "seq-mean-token-mean": NONEMPTY,
            "seq-mean-token-sum-norm": T,
        }[mode]
        np.testing.assert_allclose(
            jp.aggregate(v, mode=mode, where=MASK, normalizer=float(default)),
            jp.aggregate(v, mode=mode, where=MASK),
            rtol=1e-12,
        )


def test_trl_dr_grpo_is_a_normalizer():
    # TRL's dr_grpo: Σ(mask · v) / (B · max_completion_length), B the rows of
    # the (micro-)batch, empty ones included, then / gradient_accumulation_steps.
    max_completion_length, steps = 12, 4
    with jax.enable_x64(True):
        v = jnp.asarray(VALUES)
        dr_grpo = (VALUES * MASK).sum() / (B * max_completion_length)
        for mode in ("token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
            got = jp.aggregate(
                v, mode=mode, where=MASK, normalizer=B * max_completion_length
            )
            np.testing.assert_allclose(got, dr_grpo, rtol=1e-12)
            got = jp.aggregate(
                v, mode=mode, where=MASK, normalizer=B * max_completion_length * steps
            )
            np.testing.assert_allclose(got, dr_grpo / steps, rtol=1e-12)
        # Padded to max_completion_length (T = 7 here), sum-norm alone is
        # B × dr_grpo: it divides by T only.
        sum_norm = jp.aggregate(v, mode="seq-mean-token-sum-norm", where=MASK)
        np.testing.assert_allclose(sum_norm, (VALUES * MASK).sum() / T, rtol=1e-12)


@pytest.mark.parametrize("mode", MODES)
def test_float32_matches_the_float64_reference(mode):
    v = np.expm1(REF - LOGP) - (REF - LOGP)  # k3
    values = jp.kl_estimate(LOGP, REF, reduction="none")
    got = jp.aggregate(values, mode=mode, where=MASK.astype(np.int32))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, verl_reference(v, MASK, mode), rtol=1e-6)


def test_modes_really_differ():
    values = jp.kl_estimate(LOGP, REF, reduction="none")
    out = {m: float(jp.aggregate(values, mode=m, where=MASK)) for m in MODES}
    assert len({round(v, 6) for v in out.values()}) == 4, out


@pytest.mark.parametrize("mode", MODES)
def test_micro_batches_add_up_to_the_full_batch(mode):
    # Uneven micro-batches [0:1], [1:4], [4:8], two of them holding an empty
    # sequence; the normalizer is the full batch's count: tokens for
    # token-mean, non-empty sequences for seq-mean-*, T for sum-norm.
    logp = jnp.asarray(LOGP, jnp.float32)
    ref = jnp.asarray(REF, jnp.float32)
    normalizer = {
        "token-mean": MASK.sum(),
        "seq-mean-token-sum": NONEMPTY,
        "seq-mean-token-mean": NONEMPTY,
        "seq-mean-token-sum-norm": T,
    }[mode]

    def loss(lp, rows, norm):
        v = jp.kl_estimate(lp, ref[rows], reduction="none")
        return jp.aggregate(v, mode=mode, where=MASK[rows], normalizer=norm)

    full, g_full = jax.value_and_grad(loss)(logp, slice(0, B), None)
    total, grads = 0.0, []
    for rows in (slice(0, 1), slice(1, 4), slice(4, 8)):
        v, g = jax.value_and_grad(loss)(logp[rows], rows, normalizer)
        total, grads = total + v, grads + [g]
    np.testing.assert_allclose(total, full, rtol=1e-6)
    np.testing.assert_allclose(jnp.concatenate(grads), g_full, rtol=1e-6, atol=1e-8)


def test_validation_and_empty_batch():
    v = jnp.ones((2, 3))
    assert float(jp.aggregate(v, where=jnp.zeros((2, 3), bool))) == 0.0
    with pytest.raises(ValueError, match="mode"):
        jp.aggregate(v, mode="sum")
    with pytest.raises(ValueError, match="normalizer"):
        jp.aggregate(v, normalizer=0.0)
    with pytest.raises(ValueError, match="`extremes`.*bool"):
        jp.aggregate(v, extremes=1)
    with pytest.raises(TypeError, match="`extremes` must be a static"):
        jp.aggregate(v, extremes=jnp.asarray(True))


@pytest.mark.parametrize("mode", MODES)
def test_all_masked_batch_gives_zero_without_nan(mode):
    v = jnp.asarray(np.where(MASK, VALUES, np.nan), jnp.float32)
    none = jnp.zeros((B, T), bool)

    def f(v):
        value, metrics = jp.aggregate(v, mode=mode, where=none, extremes=True)
        return value + metrics["max"] + metrics["min"], (value, metrics)

    g, (value, metrics) = jax.grad(f, has_aux=True)(v)
    assert float(value) == 0.0
    assert float(metrics["max"]) == 0.0 and float(metrics["min"]) == 0.0
    np.testing.assert_array_equal(g, 0.0)


@pytest.mark.parametrize("mode", MODES)
def test_empty_sequences_give_zero_in_every_mode(mode):
    # T = 0 (sum-norm divides by T) and B = 0: an empty sum, 0 and never NaN,
    # also with a normaliser and under grad; the extremes of nothing are 0.
    for shape in ((2, 0), (0, 3), (0, 0)):
        v = jnp.zeros(shape)
        assert float(jp.aggregate(v, mode=mode)) == 0.0, shape
        assert float(jp.aggregate(v, mode=mode, normalizer=4.0)) == 0.0, shape
        value, metrics = jp.aggregate(v, mode=mode, extremes=True)
        assert float(value) == 0.0, shape
        assert metrics == {"max": 0.0, "min": 0.0}, shape
        g = jax.grad(lambda v: jp.aggregate(v, mode=mode))(v)
        assert g.shape == shape


def test_extremes_by_hand():
    # Kept: 1, −2, 3 (row 0) and 0.5 (row 1); 9 and −7 are masked out.
    v = jnp.asarray([[1.0, -2.0, 9.0, 3.0], [-7.0, 0.5, 0.0, 0.0]])
    m = jnp.asarray([[1, 1, 0, 1], [0, 1, 0, 0]])
    for mode in MODES:
        value, metrics = jp.aggregate(v, mode=mode, where=m, extremes=True)
        assert set(metrics) == {"max", "min"}
        assert float(metrics["max"]) == 3.0 and float(metrics["min"]) == -2.0
        assert float(value) == float(jp.aggregate(v, mode=mode, where=m))
    # No mask: over every token.
    _, metrics = jp.aggregate(v, extremes=True)
    assert float(metrics["max"]) == 9.0 and float(metrics["min"]) == -7.0
    # Metrics, not losses: they pass no gradient.
    g = jax.grad(lambda v: jp.aggregate(v, where=m, extremes=True)[1]["max"])(v)
    np.testing.assert_array_equal(g, 0.0)
    # The value's gradient is that without extremes.
    g_value = jax.grad(lambda v: jp.aggregate(v, where=m, extremes=True)[0])(v)
    np.testing.assert_array_equal(
        g_value, jax.grad(lambda v: jp.aggregate(v, where=m))(v)
    )


def test_extremes_are_those_of_kl_estimate():
    # The same {"max", "min"} as kl_estimate(extremes=True) over the same tokens.
    per_token = jp.kl_estimate(LOGP, REF, reduction="none")
    _, ours = jp.aggregate(
        per_token, mode="seq-mean-token-mean", where=MASK, extremes=True
    )
    _, theirs = jp.kl_estimate(LOGP, REF, where=MASK, extremes=True)
    assert float(ours["max"]) == float(theirs["max"])
    assert float(ours["min"]) == float(theirs["min"])
