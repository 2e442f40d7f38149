"""Raw logits given as log-probabilities (no ``from_logits=True``) warn.

The dense divergences take log-probabilities as given; logits in their place
give a silently wrong number (KL in the hundreds of thousands instead of 7).
Called on concrete inputs they check each kept row's logsumexp and warn,
naming the argument; genuine log-probabilities never warn, in float32,
bfloat16 or float16, over a 128k vocabulary, nor do masked rows, −inf
entries, traced inputs or inputs that a temperature renormalises. The value
itself is never changed.
"""

import contextlib
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpenalties as jp
from jaxpenalties.divergences._run import NotLogProbabilitiesWarning

# Language-model-like logits: 6 positions over 1,000 tokens, std 3.
_K1, _K2 = jax.random.split(jax.random.key(0))
LOGITS_P = 3.0 * jax.random.normal(_K1, (2, 3, 1000))
LOGITS_Q = 3.0 * jax.random.normal(_K2, (2, 3, 1000))
LOGP = jax.nn.log_softmax(LOGITS_P)
LOGQ = jax.nn.log_softmax(LOGITS_Q)

# function, the names of its two array arguments (entropy: one)
DENSE = {
    "kl_divergence": (jp.kl_divergence, ("p_logprobs", "q_logprobs")),
    "kl_divergence(symmetric)": (
        functools.partial(jp.kl_divergence, symmetric=True),
        ("p_logprobs", "q_logprobs"),
    ),
    "js_divergence": (jp.js_divergence, ("p_logprobs", "q_logprobs")),
    "total_variation": (jp.total_variation, ("p_logprobs", "q_logprobs")),
    "alpha_divergence": (jp.alpha_divergence, ("p_logprobs", "q_logprobs")),
    "skew_kl_divergence": (jp.skew_kl_divergence, ("p_logprobs", "q_logprobs")),
    "uld_distance": (jp.uld_distance, ("p_logprobs", "q_logprobs")),
    "entropy": (lambda a, b, **kw: jp.entropy(a, **kw), ("logprobs",)),
}


@contextlib.contextmanager
def _no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotLogProbabilitiesWarning)
        yield


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", NotLogProbabilitiesWarning)
        return fn(*args, **kwargs)


def test_the_issue_example_warns_and_keeps_its_number():
    # The silently wrong number of the issue: raw logits in place of log-probs.
    with pytest.warns(NotLogProbabilitiesWarning, match="from_logits=True") as record:
        wrong = jp.kl_divergence(LOGITS_P, LOGITS_Q)
    assert len(record) == 2  # both arguments
    right = _quiet(jp.kl_divergence, LOGITS_P, LOGITS_Q, from_logits=True)
    np.testing.assert_allclose(right, _quiet(jp.kl_divergence, LOGP, LOGQ), rtol=1e-5)
    assert float(wrong) > 1000 * float(right)  # the number it warns about
    # Unchanged: the same number as under jit, where nothing is checked.
    np.testing.assert_array_equal(wrong, jax.jit(jp.kl_divergence)(LOGITS_P, LOGITS_Q))


@pytest.mark.parametrize("name", sorted(DENSE))
def test_each_dense_function_names_the_argument_holding_logits(name):
    fn, args = DENSE[name]
    function = name.split("(")[0]
    for i, arg in enumerate(args):
        inputs = [LOGP, LOGQ]
        inputs[i] = [LOGITS_P, LOGITS_Q][i]  # only this one is raw
        per_position = functools.partial(fn, reduction="none")
        with pytest.warns(NotLogProbabilitiesWarning) as record:
            got = per_position(*inputs)
        messages = [str(r.message) for r in record]
        assert len(messages) == 1, messages
        assert messages[0].startswith(f"{function}: `{arg}`"), messages[0]
        assert "6 of 6 kept rows" in messages[0] and "from_logits" in messages[0]
        # The value is not changed (to the rounding of another compiled
        # program: skew KL's terms of ~1e5 differ in their last bit under jit).
        np.testing.assert_allclose(got, jax.jit(per_position)(*inputs), rtol=1e-6)


def test_reverse_kl_names_the_argument_by_its_direction():
    with pytest.warns(NotLogProbabilitiesWarning) as record:
        jp.kl_divergence(LOGITS_P, LOGQ, direction="reverse")
    (message,) = [str(r.message) for r in record]
    assert "`p_logprobs` with direction='reverse'" in message, message


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("how", ["computed", "rounded", "rounded, then float32"])
def test_genuine_log_probs_of_a_128k_vocabulary_never_warn(dtype, how):
    # Rounding to bf16 moves a row's logsumexp by up to ~0.03 (largest for a
    # flat distribution: every entry near −log V rounds the same way).
    v = 128 * 1024
    keys = jax.random.split(jax.random.key(1), 2)
    scales = jnp.asarray([0.0, 0.5, 2.0, 8.0])[:, None]  # flat to peaked rows
    logits = [scales * jax.random.normal(k, (4, v)) for k in keys]
    low = jnp.dtype(dtype)
    if how == "computed":  # log_softmax in the low precision itself
        lps = [jax.nn.log_softmax(x.astype(low)) for x in logits]
    else:
        lps = [jax.nn.log_softmax(x).astype(low) for x in logits]
        if how == "rounded, then float32":
            lps = [x.astype(jnp.float32) for x in lps]
    with _no_warning():
        for fn, _ in DENSE.values():
            fn(*lps)


def test_masked_rows_may_hold_anything():
    garbage = LOGP.at[0].set(LOGITS_P[0]).at[1, 0].set(jnp.nan)
    where = jnp.asarray([[False] * 3, [False, True, True]])
    with _no_warning():
        for fn, _ in DENSE.values():
            fn(garbage, LOGQ, where=where)
            fn(LOGQ, garbage, where=where)
    # A kept garbage row is flagged, and counted among the kept rows only.
    with pytest.warns(NotLogProbabilitiesWarning, match="1 of 2 kept rows"):
        jp.entropy(
            garbage, where=jnp.asarray([[True, False, False], [False, True, False]])
        )


def test_minus_infinity_entries_and_one_hot_rows_do_not_warn():
    one_hot = jnp.log(jax.nn.one_hot(jnp.arange(6) % 4, 4)).reshape(2, 3, 4)
    sparse = jax.nn.log_softmax(LOGITS_P[..., :4].at[..., 1].set(-jnp.inf))
    with _no_warning():
        for fn, _ in DENSE.values():
            fn(one_hot, sparse)
            fn(sparse, jnp.log(jnp.full((2, 3, 4), 0.25)))


def test_traced_inputs_are_not_checked():
    with _no_warning():
        for fn, _ in DENSE.values():
            jax.jit(fn)(LOGITS_P, LOGITS_Q)
            jax.grad(lambda a, fn=fn: fn(a, LOGITS_Q))(LOGITS_P)
            jax.vmap(fn)(LOGITS_P, LOGITS_Q)
            # Also inside a regularised loss under jit (the usual place).
            jax.jit(
                lambda a, b, fn=fn: fn(a, jax.lax.stop_gradient(b), where=jnp.ones(3))
            )(LOGITS_P, LOGITS_Q)


def test_only_where_the_number_would_be_wrong():
    with _no_warning():
        for fn, _ in DENSE.values():
            fn(LOGITS_P, LOGITS_Q, from_logits=True)
            # A temperature renormalises the inputs: the value is right.
            fn(LOGITS_P, LOGITS_Q, temperature=2.0)
            fn(LOGITS_P, LOGITS_Q, temperature=jnp.asarray(0.5))
    # An array temperature of exactly 1 uses the inputs as given: it warns.
    with pytest.warns(NotLogProbabilitiesWarning, match="`logprobs`"):
        jp.entropy(LOGITS_P, temperature=jnp.asarray(1.0))


def test_the_warning_points_at_the_callers_line():
    with pytest.warns(NotLogProbabilitiesWarning) as record:
        jp.entropy(LOGITS_P)
    assert record[0].filename == __file__
