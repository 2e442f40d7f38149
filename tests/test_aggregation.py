"""aggregate: verl / TRL / Dr. GRPO aggregation of per-token terms, and exact
micro-batch accumulation through ``normalizer``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpenalties as jp

RNG = np.random.default_rng(0)
B, T = 6, 7
LENGTHS = np.array([7, 3, 5, 1, 6, 2])  # uneven
MASK = np.arange(T)[None, :] < LENGTHS[:, None]
LOGP = -RNG.uniform(0.1, 3.0, size=(B, T))
REF = -RNG.uniform(0.1, 3.0, size=(B, T))


def reference(v, mode):
    """Float64 by hand, sequence by sequence."""
    v = np.where(MASK, v, 0.0)
    if mode == "token-mean":
        return v.sum() / MASK.sum()
    if mode == "seq-mean-token-mean":
        return np.mean([v[b].sum() / LENGTHS[b] for b in range(B)])
    if mode == "seq-mean-token-sum":
        return np.mean(v.sum(-1))
    return v.sum() / (B * T)


@pytest.mark.parametrize("mode", jp.aggregation.MODES)
def test_modes_match_a_float64_reference_and_differ_on_uneven_lengths(mode):
    v = np.expm1(REF - LOGP) - (REF - LOGP)  # k3
    values = jp.kl_estimate(LOGP, REF, reduction="none")
    got = jp.aggregate(values, mode=mode, where=MASK.astype(np.int32))
    np.testing.assert_allclose(got, reference(v, mode), rtol=1e-6)


def test_modes_really_differ():
    values = jp.kl_estimate(LOGP, REF, reduction="none")
    out = {
        m: float(jp.aggregate(values, mode=m, where=MASK)) for m in jp.aggregation.MODES
    }
    assert len({round(v, 6) for v in out.values()}) == 4, out


@pytest.mark.parametrize("mode", jp.aggregation.MODES)
def test_micro_batches_add_up_to_the_full_batch(mode):
    # Uneven micro-batches [0:1], [1:4], [4:6]; the normalizer is the full
    # batch's count: tokens for token-mean, sequences otherwise.
    logp = jnp.asarray(LOGP, jnp.float32)
    ref = jnp.asarray(REF, jnp.float32)
    normalizer = MASK.sum() if mode == "token-mean" else B

    def loss(lp, rows, norm):
        v = jp.kl_estimate(lp, ref[rows], reduction="none")
        return jp.aggregate(v, mode=mode, where=MASK[rows], normalizer=norm)

    full, g_full = jax.value_and_grad(loss)(logp, slice(0, B), None)
    total, grads = 0.0, []
    for rows in (slice(0, 1), slice(1, 4), slice(4, 6)):
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


@pytest.mark.parametrize("mode", jp.aggregation.MODES)
def test_empty_sequences_give_zero_in_every_mode(mode):
    # T = 0 (Dr. GRPO divides by T) and B = 0: an empty sum, 0 and never NaN,
    # also with a normaliser and under grad.
    for shape in ((2, 0), (0, 3), (0, 0)):
        v = jnp.zeros(shape)
        assert float(jp.aggregate(v, mode=mode)) == 0.0, shape
        assert float(jp.aggregate(v, mode=mode, normalizer=4.0)) == 0.0, shape
        g = jax.grad(lambda v: jp.aggregate(v, mode=mode))(v)
        assert g.shape == shape
