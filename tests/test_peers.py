"""The "Coming from TRL / verl / Liger Kernel / optax" pages, checked: every
mapping they state, at float64 to rtol 1e-12, on several shapes and values.

Each peer's formula is written here in NumPy float64 from its documented maths
(no peer code is imported or copied): TRL's GKD ``generalized_jsd_loss`` and
GRPO ``loss_type``; verl's ``kl_penalty``, ``agg_loss`` and
``apply_kl_penalty``; Liger Kernel's ``LigerJSD``, ``LigerKLDIVLoss`` (torch's
``kl_div`` conventions) and ``LigerFusedLinearJSD``; optax's
``kl_divergence``, ``kl_divergence_with_log_targets``,
``generalized_kl_divergence`` and softmax cross-entropies. One test per
item.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxpenalties as jp
from tests.helpers import close

RTOL = 1e-12
PROPS = settings(max_examples=12, deadline=None)
SEEDS = st.integers(0, 2**32 - 1)
BETAS = st.floats(0.02, 0.98)
TEMPERATURES = st.sampled_from([1.0, 0.7, 2.0])
SHAPES = st.sampled_from([(2, 3, 5), (1, 4, 7), (3, 2, 11)])  # B, T, V
SEQ_SHAPES = st.sampled_from([(4, 6), (6, 3), (8, 5)])  # B, T
MODES = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)


def signed_rounding(v, mask):
    """Two means of the kept signed terms v summed in another order differ by
    rounding of their magnitudes, which a value near 0 cannot absorb
    relatively (masked entries may hold garbage: not read)."""
    return RTOL * np.abs(np.where(mask != 0, v, 0.0)).max()


def k3(log_r):
    """(r − 1) − log r, evaluated in long double (a 64-bit mantissa on x86) so
    that the reference carries no float64 cancellation."""
    log_r = np.asarray(log_r, np.longdouble)
    return (np.expm1(log_r) - log_r).astype(np.float64)


def k3_rounding(log_r):
    """How far any float64 evaluation of e^d − 1 − d may be from it: its two
    terms of size |d| cancel to d²/2, leaving a few float64 roundings of |d|."""
    return 4 * np.finfo(np.float64).eps * np.abs(log_r)


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def kl_rows(log_p, log_q):
    """KL(P‖Q) per row, with 0 · log 0 = 0."""
    p = np.exp(log_p)
    safe = np.where(p > 0, log_p - log_q, 0.0)
    return np.sum(p * safe, -1)


def ragged_mask(rng, b, t):
    """An int 0/1 mask [b, t] of uneven lengths, with an empty row (0), a
    full row (last) and a hole (row 1, if long enough)."""
    lengths = rng.integers(1, t + 1, b)
    lengths[0], lengths[-1] = 0, t
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int32)
    if b > 2 and lengths[1] > 2:
        mask[1, 1] = 0
    return mask


# ---------------------------------------------------------------------------
# TRL
# ---------------------------------------------------------------------------


def trl_gkd_terms(student_logits, teacher_logits, beta, temperature=1.0):
    """TRL's generalized JSD before reduction, [..., V]: M = β·teacher +
    (1 − β)·student, β·KL(teacher‖M) + (1 − β)·KL(student‖M); β = 0 is
    KL(teacher‖student) and β = 1 is KL(student‖teacher)."""
    s = log_softmax(student_logits / temperature)
    t = log_softmax(teacher_logits / temperature)
    if beta == 0:
        return np.exp(t) * (t - s)
    if beta == 1:
        return np.exp(s) * (s - t)
    m = np.log(beta * np.exp(t) + (1 - beta) * np.exp(s))
    return beta * np.exp(t) * (t - m) + (1 - beta) * np.exp(s) * (s - m)


def trl_gkd(
    student_logits,
    teacher_logits,
    beta,
    temperature=1.0,
    labels=None,
    reduction="batchmean",
    num_items_in_batch=None,
):
    terms = trl_gkd_terms(student_logits, teacher_logits, beta, temperature)
    if labels is not None:
        terms = terms[labels != -100]  # [kept positions, V]
    if num_items_in_batch is not None:
        return terms.sum() / num_items_in_batch
    return torch_reduce(terms, reduction)


def torch_reduce(terms, reduction):
    """torch's loss reductions: batchmean = sum / rows, mean = sum / entries."""
    if reduction == "none":
        return terms
    if reduction == "sum":
        return terms.sum()
    if reduction == "mean":
        return terms.mean()
    return terms.sum() / terms.shape[0]  # batchmean


def gkd_inputs(seed, shape):
    rng = np.random.default_rng(seed)
    b, t, v = shape
    student = rng.normal(size=shape) * rng.uniform(0.5, 3.0)
    teacher = rng.normal(size=shape) * rng.uniform(0.5, 3.0)
    labels = np.where(rng.random((b, t)) < 0.3, -100, rng.integers(0, v, (b, t)))
    labels[0, 0] = 1  # at least one kept position
    return student, teacher, labels


@PROPS
@given(SEEDS, SHAPES, BETAS, TEMPERATURES)
def test_trl_gkd_beta_weights_the_teacher(seed, shape, beta, temperature):
    student, teacher, labels = gkd_inputs(seed, shape)
    kept = labels != -100
    want = trl_gkd(student, teacher, beta, temperature, labels)
    opts = dict(temperature=temperature, from_logits=True, where=kept)
    with jax.enable_x64(True):
        close(jp.js_divergence(student, teacher, beta=1 - beta, **opts), want)
        close(jp.js_divergence(teacher, student, beta=beta, **opts), want)
        # Log-probabilities (from_logits=False) and T: the same number.
        s, t = log_softmax(student), log_softmax(teacher)
        lp = dict(temperature=temperature, where=kept)
        close(jp.js_divergence(s, t, beta=1 - beta, **lp), want)
        if abs(beta - 0.5) > 0.05:  # β in the student's place: another value
            wrong = jp.js_divergence(student, teacher, beta=beta, **opts)
            assert not np.isclose(wrong, want, rtol=1e-6)


@PROPS
@given(SEEDS, SHAPES, TEMPERATURES)
def test_trl_gkd_beta_0_and_1_are_the_two_kl_directions(seed, shape, temperature):
    student, teacher, labels = gkd_inputs(seed, shape)
    opts = dict(temperature=temperature, from_logits=True, where=labels != -100)
    with jax.enable_x64(True):
        teacher_student = jp.kl_divergence(
            student, teacher, direction="reverse", **opts
        )
        close(teacher_student, trl_gkd(student, teacher, 0.0, temperature, labels))
        student_teacher = jp.kl_divergence(student, teacher, **opts)
        close(student_teacher, trl_gkd(student, teacher, 1.0, temperature, labels))


@PROPS
@given(SEEDS, SHAPES, BETAS)
def test_trl_gkd_reductions(seed, shape, beta):
    student, teacher, labels = gkd_inputs(seed, shape)
    b, t, v = shape
    kept = labels != -100
    js = dict(beta=1 - beta, from_logits=True)
    with jax.enable_x64(True):
        # batchmean with labels: the mean over kept positions.
        close(
            jp.js_divergence(student, teacher, where=kept, **js),
            trl_gkd(student, teacher, beta, labels=labels),
        )
        # batchmean without labels: sum / B (our mean is sum / (B·T)).
        total = jp.js_divergence(student, teacher, reduction="sum", **js)
        mean = jp.js_divergence(student, teacher, **js)
        close(total / b, trl_gkd(student, teacher, beta))
        close(mean * t, trl_gkd(student, teacher, beta))
        close(total, trl_gkd(student, teacher, beta, reduction="sum"))
        # torch's mean is over all [B, T, V] entries.
        close(mean / v, trl_gkd(student, teacher, beta, reduction="mean"))
        # "none": TRL's [B, T, V] terms; ours is their sum over V.
        none = jp.js_divergence(student, teacher, reduction="none", **js)
        terms = trl_gkd(student, teacher, beta, reduction="none")
        assert none.shape == (b, t) and terms.shape == (b, t, v)
        close(none, terms.sum(-1))
        # num_items_in_batch: the masked sum over a global count.
        n = 3 * int(kept.sum())
        kept_sum = jp.js_divergence(student, teacher, where=kept, reduction="sum", **js)
        close(
            kept_sum / n,
            trl_gkd(student, teacher, beta, labels=labels, num_items_in_batch=n),
        )


@PROPS
@given(SEEDS, SEQ_SHAPES)
def test_trl_grpo_per_token_kl_is_unclamped_k3(seed, shape):
    rng = np.random.default_rng(seed)
    logps = -rng.uniform(0.01, 5.0, shape)
    ref = -rng.uniform(0.01, 5.0, shape)
    ref[0, 0] = logps[0, 0] + 25.0  # log r = 25: no clamp on either side
    d = ref - logps
    with jax.enable_x64(True):
        got = jp.kl_estimate(logps, ref, estimator="k3", reduction="none")
        # exp(ref − logp) − (ref − logp) − 1
        close(got, k3(d), atol=k3_rounding(d))
        assert got[0, 0] > 1e10


@PROPS
@given(SEEDS, SEQ_SHAPES)
def test_trl_int_completion_mask_works_as_is(seed, shape):
    rng = np.random.default_rng(seed)
    mask = ragged_mask(rng, *shape)
    assert mask.dtype == np.int32
    logps, ref = -rng.uniform(0.1, 3.0, shape), -rng.uniform(0.1, 3.0, shape)
    v = rng.normal(size=shape)
    with jax.enable_x64(True):
        for mode in MODES:
            as_int = jp.aggregate(v, mode=mode, where=mask)
            as_bool = jp.aggregate(v, mode=mode, where=mask.astype(bool))
            assert as_int == as_bool
        kl_int = jp.kl_estimate(logps, ref, where=mask)
        assert kl_int == jp.kl_estimate(logps, ref, where=mask.astype(bool))


def trl_grpo_loss(per_token_loss, mask, loss_type, max_completion_length=None):
    """TRL's GRPO aggregations of one (micro-)batch [B, T]."""
    m = mask.astype(np.float64)
    v = np.where(m > 0, per_token_loss, 0.0)
    if loss_type == "grpo":  # (1/G) Σ_i (1/|o_i|) Σ_t, an empty o_i counting 0
        return ((v * m).sum(-1) / np.maximum(m.sum(-1), 1)).mean()
    if loss_type == "bnpo":  # the local batch's token mean
        return (v * m).sum() / max(m.sum(), 1)
    if loss_type == "dr_grpo":  # (1 / (L·G)) Σ_i Σ_t, L = max_completion_length
        return (v * m).sum() / (m.shape[0] * max_completion_length)
    raise ValueError(loss_type)


def grpo_batch(seed, shape):
    rng = np.random.default_rng(seed)
    mask = ragged_mask(rng, *shape)
    return rng.normal(size=shape), mask


@PROPS
@given(SEEDS, SEQ_SHAPES)
def test_trl_loss_type_grpo(seed, shape):
    v, mask = grpo_batch(seed, shape)
    b = shape[0]
    nonempty = int((mask.sum(-1) > 0).sum())
    assert nonempty < b  # row 0 is empty (mask_truncated_completions)
    want = trl_grpo_loss(v, mask, "grpo")
    with jax.enable_x64(True):
        mode = "seq-mean-token-mean"
        close(
            jp.aggregate(v, mode=mode, where=mask, normalizer=b),
            want,
            atol=signed_rounding(v, mask),
        )
        # Without normalizer: the mean over the non-empty sequences only.
        close(
            jp.aggregate(v, mode=mode, where=mask),
            want * b / nonempty,
            atol=signed_rounding(v, mask),
        )
        # With no empty completion the two agree.
        full = mask[1:]
        close(
            jp.aggregate(v[1:], mode=mode, where=full),
            trl_grpo_loss(v[1:], full, "grpo"),
            atol=signed_rounding(v, mask),
        )


@PROPS
@given(SEEDS, SEQ_SHAPES)
def test_trl_loss_type_bnpo(seed, shape):
    v, mask = grpo_batch(seed, shape)
    with jax.enable_x64(True):
        close(
            jp.aggregate(v, where=mask),
            trl_grpo_loss(v, mask, "bnpo"),
            atol=signed_rounding(v, mask),
        )
        close(
            jp.aggregate(v, mode="token-mean", where=mask),
            trl_grpo_loss(v, mask, "bnpo"),
            atol=signed_rounding(v, mask),
        )


@PROPS
@given(SEEDS, SEQ_SHAPES, st.sampled_from([8, 64, 4096]))
def test_trl_loss_type_dr_grpo(seed, shape, max_completion_length):
    v, mask = grpo_batch(seed, shape)
    b, t = shape
    want = trl_grpo_loss(v, mask, "dr_grpo", max_completion_length)
    n = b * max_completion_length
    with jax.enable_x64(True):
        close(
            jp.aggregate(v, where=mask, normalizer=n),
            want,
            atol=signed_rounding(v, mask),
        )
        sum_norm = "seq-mean-token-sum-norm"
        close(
            jp.aggregate(v, mode=sum_norm, where=mask, normalizer=n),
            want,
            atol=signed_rounding(v, mask),
        )
        # Alone, sum-norm divides by the padded length T and not by B.
        alone = jp.aggregate(v, mode=sum_norm, where=mask)
        close(alone, want * n / t, atol=signed_rounding(v, mask))
        assert not np.isclose(alone, want)


@PROPS
@given(SEEDS, st.sampled_from([(2, 2, 2), (3, 2, 3), (2, 3, 1)]), st.integers(2, 6))
def test_trl_loss_type_dapo(seed, layout, t):
    # processes × micro-batches × sequences per micro-batch.
    n_processes, n_micro, per_micro = layout
    b = n_processes * n_micro * per_micro
    rng = np.random.default_rng(seed)
    mask = ragged_mask(rng, b, t)
    v = rng.normal(size=(b, t))
    n_tokens = int(mask.sum())  # the whole accumulated batch, all processes
    rows = np.arange(b).reshape(n_processes, n_micro, per_micro)
    rounding = signed_rounding(v, mask)
    with jax.enable_x64(True):
        per_process = []
        for process in rows:
            losses = []
            for micro in process:
                loss = jp.aggregate(
                    v[micro], where=mask[micro], normalizer=n_tokens / n_processes
                )
                trl = (v[micro] * mask[micro]).sum() / (n_tokens / n_processes)
                close(loss, trl, atol=rounding)
                losses.append(loss)
            per_process.append(sum(losses))  # summed over micro-batches
        # DDP averages over processes: the mean over every token.
        close(np.mean(per_process), (v * mask).sum() / n_tokens, atol=rounding)


# ---------------------------------------------------------------------------
# verl
# ---------------------------------------------------------------------------


def verl_kl_penalty(logprob, ref_logprob, kind):
    """verl's kl_penalty: kl/k1, abs, mse/k2, low_var_kl/k3 (log r clamped to
    ±20, the value to ±10)."""
    if kind in ("kl", "k1"):
        return logprob - ref_logprob
    if kind == "abs":
        return np.abs(logprob - ref_logprob)
    if kind in ("mse", "k2"):
        return 0.5 * (logprob - ref_logprob) ** 2
    if kind in ("low_var_kl", "k3"):
        log_r = np.clip(ref_logprob - logprob, -20.0, 20.0)
        return np.clip(k3(log_r), -10.0, 10.0)  # r − log r − 1
    raise ValueError(kind)


def sampled_logprobs(seed, shape, extreme=False):
    rng = np.random.default_rng(seed)
    logprob = -rng.uniform(0.01, 6.0, shape)
    ref = -rng.uniform(0.01, 6.0, shape)
    if extreme:  # log r beyond ±20 and k3 beyond 10
        ref[0, 0], logprob[-1, -1] = logprob[0, 0] + 30.0, ref[-1, -1] - 30.0
        ref[0, -1] = logprob[0, -1] + 3.0  # k3 = e³ − 4 ≈ 16.1
    return logprob, ref


@PROPS
@given(SEEDS, SEQ_SHAPES)
def test_verl_kl_abs_mse_share_our_sign(seed, shape):
    logprob, ref = sampled_logprobs(seed, shape, extreme=True)
    with jax.enable_x64(True):
        k1 = jp.kl_estimate(logprob, ref, estimator="k1", reduction="none")
        k2 = jp.kl_estimate(logprob, ref, estimator="k2", reduction="none")
        for kind in ("kl", "k1"):
            close(k1, verl_kl_penalty(logprob, ref, kind))
        close(jnp.abs(k1), verl_kl_penalty(logprob, ref, "abs"))
        for kind in ("mse", "k2"):
            close(k2, verl_kl_penalty(logprob, ref, kind))


@PROPS
@given(SEEDS, SEQ_SHAPES)
def test_verl_low_var_kl_is_k3_with_both_clamps(seed, shape):
    logprob, ref = sampled_logprobs(seed, shape, extreme=True)
    want = verl_kl_penalty(logprob, ref, "low_var_kl")
    clamps = dict(max_log_ratio=20.0, max_value=10.0)
    with jax.enable_x64(True):
        got = jp.kl_estimate(logprob, ref, estimator="k3", reduction="none", **clamps)
        close(got, want, atol=k3_rounding(ref - logprob))
        assert got[0, -1] == 10.0
        # Unclamped by default: e³ − 4 where verl gives 10.
        plain = jp.kl_estimate(logprob, ref, estimator="k3", reduction="none")
        close(plain[0, -1], np.exp(3.0) - 4.0)
        assert plain[0, 0] > 1e12


@PROPS
@given(SEEDS, SEQ_SHAPES, st.sampled_from(["k1", "k3"]))
def test_verl_straight_through_plus(seed, shape, estimator):
    logprob, ref = sampled_logprobs(seed, shape)
    clamps = dict(max_log_ratio=20.0, max_value=10.0) if estimator == "k3" else {}

    def plus(lp):  # verl's "k1+" / "k3+": the estimator's value, k2's gradient
        k = jp.kl_estimate(lp, ref, estimator=estimator, reduction="sum", **clamps)
        k2 = jp.kl_estimate(lp, ref, estimator="k2", reduction="sum")
        return k2 + jax.lax.stop_gradient(k - k2)

    with jax.enable_x64(True):
        value, grad = jax.value_and_grad(plus)(jnp.asarray(logprob))
        close(value, verl_kl_penalty(logprob, ref, estimator).sum(), rtol=1e-11)
        close(grad, logprob - ref)  # ∂/∂logprob of ½(logprob − ref)²


@PROPS
@given(SEEDS, SHAPES)
def test_verl_full_is_the_exact_kl(seed, shape):
    rng = np.random.default_rng(seed)
    logp = log_softmax(rng.normal(size=shape) * 2)
    ref = log_softmax(rng.normal(size=shape) * 2)
    with jax.enable_x64(True):
        got = jp.kl_divergence(logp, ref, reduction="none")
        close(got, kl_rows(logp, ref))  # KL(π‖π_ref) per position


def verl_agg_loss(
    loss_mat,
    loss_mask,
    mode,
    dp_size=1,
    batch_num_tokens=None,
    global_batch_size=None,
    loss_scale_factor=None,
    eps=0.0,
):
    """verl's agg_loss; ``eps=1e-8`` is verl's guard on each sequence's token
    count in seq-mean-token-mean."""
    m = loss_mask.astype(np.float64)
    v = np.where(m > 0, loss_mat, 0.0)
    seq_tokens = m.sum(-1)
    nonempty = seq_tokens > 0
    if mode == "token-mean":
        n = m.sum() if batch_num_tokens is None else batch_num_tokens
        return (v * m).sum() / n * dp_size
    if mode == "seq-mean-token-sum-norm":  # no dp_size here
        scale = m.shape[-1] if loss_scale_factor is None else loss_scale_factor
        return (v * m).sum() / scale
    seq = (v * m).sum(-1)
    if mode == "seq-mean-token-mean":
        seq = seq / (seq_tokens + eps) if eps else seq / np.maximum(seq_tokens, 1)
    g = nonempty.sum() if global_batch_size is None else global_batch_size
    return seq[nonempty].sum() / g * dp_size


@PROPS
@given(SEEDS, SEQ_SHAPES)
def test_verl_agg_loss_modes(seed, shape):
    rng = np.random.default_rng(seed)
    mask = ragged_mask(rng, *shape)
    v = np.where(mask > 0, rng.normal(size=shape), np.nan)  # garbage when masked
    with jax.enable_x64(True):
        for mode in MODES:
            close(
                jp.aggregate(v, mode=mode, where=mask),
                verl_agg_loss(v, mask, mode),
                atol=signed_rounding(v, mask),
            )


@PROPS
@given(SEEDS, SEQ_SHAPES)
def test_verl_seq_mean_token_mean_epsilon_is_below_1e8_relative(seed, shape):
    rng = np.random.default_rng(seed)
    mask = ragged_mask(rng, *shape)
    v = rng.uniform(0.5, 2.0, shape)  # one sign: no cancellation
    mode = "seq-mean-token-mean"
    exact = verl_agg_loss(v, mask, mode)
    with_eps = verl_agg_loss(v, mask, mode, eps=1e-8)
    with jax.enable_x64(True):
        got = jp.aggregate(v, mode=mode, where=mask)
        close(got, exact, atol=signed_rounding(v, mask))
        close(got, with_eps, rtol=1e-8, atol=signed_rounding(v, mask))
        assert got != with_eps


@PROPS
@given(
    SEEDS,
    SEQ_SHAPES,
    st.sampled_from([1, 2, 8]),
    st.floats(1.0, 1e4),
)
def test_verl_agg_loss_global_counts(seed, shape, dp_size, count):
    rng = np.random.default_rng(seed)
    mask = ragged_mask(rng, *shape)
    v = rng.normal(size=shape)
    with jax.enable_x64(True):
        close(
            jp.aggregate(v, where=mask, normalizer=count / dp_size),
            verl_agg_loss(v, mask, "token-mean", dp_size, batch_num_tokens=count),
            atol=signed_rounding(v, mask),
        )
        for mode in ("seq-mean-token-mean", "seq-mean-token-sum"):
            close(
                jp.aggregate(v, mode=mode, where=mask, normalizer=count / dp_size),
                verl_agg_loss(v, mask, mode, dp_size, global_batch_size=count),
                atol=signed_rounding(v, mask),
            )
        close(
            jp.aggregate(
                v, mode="seq-mean-token-sum-norm", where=mask, normalizer=count
            ),
            verl_agg_loss(
                v, mask, "seq-mean-token-sum-norm", dp_size, loss_scale_factor=count
            ),
            atol=signed_rounding(v, mask),
        )


@PROPS
@given(SEEDS, SEQ_SHAPES, st.sampled_from(["k1", "k2", "k3"]), st.floats(0.0, 0.5))
def test_verl_apply_kl_penalty(seed, shape, estimator, beta):
    rng = np.random.default_rng(seed)
    logprob, ref = sampled_logprobs(seed, shape, extreme=True)
    mask = ragged_mask(rng, *shape)
    scores = np.where(mask > 0, rng.normal(size=shape), 0.0)
    kind = {"k1": "kl", "k2": "mse", "k3": "low_var_kl"}[estimator]
    clamps = dict(max_log_ratio=20.0, max_value=10.0) if estimator == "k3" else {}
    verl = scores - beta * verl_kl_penalty(logprob, ref, kind) * mask
    with jax.enable_x64(True):
        got = jp.kl_penalized_rewards(
            scores, logprob, ref, beta, estimator=estimator, where=mask, **clamps
        )
        rounding = beta * k3_rounding(ref - logprob)
        close(got, verl, atol=rounding)
        # A score at a masked token: verl keeps it, ours gives 0.
        masked = mask == 0
        noisy = scores + np.where(masked, 1.0, 0.0)
        got = jp.kl_penalized_rewards(
            noisy, logprob, ref, beta, estimator=estimator, where=mask, **clamps
        )
        verl = noisy - beta * verl_kl_penalty(logprob, ref, kind) * mask
        close(np.where(masked, 0.0, got), np.where(masked, 0.0, verl), atol=rounding)
        assert np.all(np.asarray(got)[masked] == 0.0)
        assert np.all(verl[masked] == 1.0)


# ---------------------------------------------------------------------------
# Liger Kernel
# ---------------------------------------------------------------------------


def liger_jsd(log_q, log_p, beta, shift_labels=None, ignore_index=-100):
    """LigerJSD(beta)(log_q, log_p): log_q the student (input), log_p the
    teacher (target), JSD_β(P‖Q) with M = βP + (1 − β)Q; β = 0 is KL(P‖Q)
    ("forward"), β = 1 is KL(Q‖P); the mean over rows whose label is kept."""
    q, p = np.exp(log_q), np.exp(log_p)
    if beta == 0:
        rows = (p * (log_p - log_q)).sum(-1)
    elif beta == 1:
        rows = (q * (log_q - log_p)).sum(-1)
    else:
        log_m = np.log(beta * p + (1 - beta) * q)
        rows = beta * (p * (log_p - log_m)).sum(-1) + (1 - beta) * (
            q * (log_q - log_m)
        ).sum(-1)
    if shift_labels is None:
        return rows.mean()
    kept = shift_labels != ignore_index
    return rows[kept].sum() / kept.sum()


def liger_inputs(seed, bt, v, ignore_index=-100):
    rng = np.random.default_rng(seed)
    student = log_softmax(rng.normal(size=(bt, v)) * rng.uniform(0.5, 3.0))
    teacher = log_softmax(rng.normal(size=(bt, v)) * rng.uniform(0.5, 3.0))
    labels = np.where(rng.random(bt) < 0.4, ignore_index, rng.integers(0, v, bt))
    labels[0], labels[-1] = 0, ignore_index  # some kept, some ignored
    return student, teacher, labels


ROWS = st.sampled_from([(6, 7), (9, 4), (3, 13)])  # BT, V


@PROPS
@given(SEEDS, ROWS, BETAS, st.sampled_from([-100, -1]))
def test_liger_jsd_beta_weights_the_teacher(seed, rows, beta, ignore_index):
    student, teacher, labels = liger_inputs(seed, *rows, ignore_index)
    kept = labels != ignore_index
    with jax.enable_x64(True):
        want = liger_jsd(student, teacher, beta, labels, ignore_index)
        close(jp.js_divergence(student, teacher, beta=1 - beta, where=kept), want)
        close(jp.js_divergence(teacher, student, beta=beta, where=kept), want)
        # No labels: the mean over all rows.
        close(
            jp.js_divergence(student, teacher, beta=1 - beta),
            liger_jsd(student, teacher, beta),
        )


@PROPS
@given(SEEDS, ROWS)
def test_liger_jsd_beta_0_and_1(seed, rows):
    student, teacher, labels = liger_inputs(seed, *rows)
    kept = labels != -100
    with jax.enable_x64(True):
        close(
            jp.kl_divergence(student, teacher, direction="reverse", where=kept),
            liger_jsd(student, teacher, 0.0, labels),
        )
        close(
            jp.kl_divergence(student, teacher, where=kept),
            liger_jsd(student, teacher, 1.0, labels),
        )


def torch_kl_div(y_pred, y_true, reduction="batchmean", log_target=False):
    """torch's kl_div (LigerKLDIVLoss): pointwise target · (log target −
    input), 0 where target = 0; batchmean = sum / rows, mean = sum / entries."""
    if log_target:
        terms = np.exp(y_true) * (y_true - y_pred)
    else:
        safe = np.where(y_true > 0, y_true, 1.0)
        terms = np.where(y_true > 0, y_true * (np.log(safe) - y_pred), 0.0)
    return torch_reduce(terms, reduction)


@PROPS
@given(SEEDS, ROWS)
def test_liger_kldiv_target_first_and_reductions(seed, rows):
    student, teacher, _ = liger_inputs(seed, *rows)
    bt, v = rows
    target = np.exp(teacher)
    target[0] = np.eye(v)[1]  # zero probabilities
    with np.errstate(divide="ignore"):
        log_target = np.log(target)
    with jax.enable_x64(True):
        for log_t, y_true, flag in (
            (log_target, target, False),
            (teacher, teacher, True),
        ):
            kl = dict(p_logprobs=log_t, q_logprobs=student)
            mean = jp.kl_divergence(**kl)
            close(mean, torch_kl_div(student, y_true, "batchmean", flag))
            close(
                jp.kl_divergence(**kl, reduction="sum"),
                torch_kl_div(student, y_true, "sum", flag),
            )
            close(mean / v, torch_kl_div(student, y_true, "mean", flag))
            none = jp.kl_divergence(**kl, reduction="none")
            terms = torch_kl_div(student, y_true, "none", flag)
            assert none.shape == (bt,) and terms.shape == (bt, v)
            close(none, terms.sum(-1))
        # torch's order (input first) in ours is the other direction.
        swapped = jp.kl_divergence(student, teacher)
        assert not np.isclose(swapped, torch_kl_div(student, teacher, log_target=True))


def liger_fused_linear_jsd(
    student_input, student_weight, teacher_input, teacher_weight, labels, beta, t
):
    """LigerFusedLinearJSD: [V, H] weights, logits / T, then LigerJSD."""
    log_q = log_softmax(student_input @ student_weight.T / t)
    log_p = log_softmax(teacher_input @ teacher_weight.T / t)
    return liger_jsd(log_q, log_p, beta, labels)


def fused_inputs(seed, bt, v):
    rng = np.random.default_rng(seed)
    h, hr = 3, 5
    x, rx = rng.normal(size=(bt, h)), rng.normal(size=(bt, hr))
    student_weight, teacher_weight = rng.normal(size=(v, h)), rng.normal(size=(v, hr))
    _, _, labels = liger_inputs(seed, bt, v)
    return x, student_weight, rx, teacher_weight, labels


@PROPS
@given(SEEDS, ROWS, st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]), TEMPERATURES)
def test_liger_fused_linear_jsd(seed, rows, beta, temperature):
    x, sw, rx, tw, labels = fused_inputs(seed, *rows)
    want = liger_fused_linear_jsd(x, sw, rx, tw, labels, beta, temperature)
    opts = dict(temperature=temperature, where=labels != -100)
    with jax.enable_x64(True):  # before stop_gradient makes float64 arrays
        heads = (x, sw.T, jax.lax.stop_gradient(rx), jax.lax.stop_gradient(tw.T))
        if beta == 0.0:
            got = jp.fused_linear_kl_divergence(*heads, direction="reverse", **opts)
        elif beta == 1.0:
            got = jp.fused_linear_kl_divergence(*heads, **opts)
        else:
            got = jp.fused_linear_js_divergence(*heads, beta=1 - beta, **opts)
        close(got, want)


@PROPS
@given(SEEDS, ROWS, BETAS)
def test_liger_labels_are_where_not_labels(seed, rows, beta):
    x, sw, rx, tw, labels = fused_inputs(seed, *rows)
    liger = liger_fused_linear_jsd(x, sw, rx, tw, labels, beta, 1.0)
    heads = (x, sw.T, rx, tw.T)
    with jax.enable_x64(True):
        right = jp.fused_linear_js_divergence(
            *heads, beta=1 - beta, where=labels != -100
        )
        close(right, liger)
        wrong, metrics = jp.fused_linear_js_divergence(
            *heads, beta=1 - beta, labels=labels, hard_weight=0.0
        )
        # labels= leaves the divergence averaged over every position.
        everywhere = liger_fused_linear_jsd(x, sw, rx, tw, None, beta, 1.0)
        close(wrong, everywhere)
        close(metrics["divergence"], everywhere)
        assert not np.isclose(wrong, liger, rtol=1e-6)


# ---------------------------------------------------------------------------
# optax
# ---------------------------------------------------------------------------


def optax_kl(log_predictions, targets, where=None):
    """optax.losses.kl_divergence: Σ targets · (log targets − log_predictions)
    over the last axis, 0 · log 0 = 0, ``where`` selecting entries."""
    safe = np.where(targets > 0, targets, 1.0)
    terms = np.where(targets > 0, targets * (np.log(safe) - log_predictions), 0.0)
    return np.sum(terms, -1, where=True if where is None else where)


def optax_kl_with_log_targets(log_predictions, log_targets):
    """optax.losses.kl_divergence_with_log_targets."""
    return np.sum(np.exp(log_targets) * (log_targets - log_predictions), -1)


def optax_generalized_kl(log_predictions, targets):
    """optax.losses.generalized_kl_divergence (and convex_kl_divergence):
    Σ t log(t / p) − t + p."""
    return optax_kl(log_predictions, targets) + np.sum(
        np.exp(log_predictions) - targets, -1
    )


def optax_inputs(seed, shape):
    rng = np.random.default_rng(seed)
    log_predictions = log_softmax(rng.normal(size=shape) * 2)
    log_targets = log_softmax(rng.normal(size=shape) * 2)
    targets = np.exp(log_targets)
    first = (0,) * (len(shape) - 1)  # the first row
    targets[first] = 0.0
    targets[first + (slice(0, 2),)] = 0.5  # zero probabilities in the first row
    with np.errstate(divide="ignore"):
        log_zeros = np.log(targets)
    return log_predictions, targets, log_zeros, log_targets


OPTAX_SHAPES = st.sampled_from([(4, 6), (3, 9), (2, 2, 5)])


@PROPS
@given(SEEDS, OPTAX_SHAPES)
def test_optax_kl_target_comes_first_in_ours(seed, shape):
    log_predictions, targets, log_zeros, log_targets = optax_inputs(seed, shape)
    with jax.enable_x64(True):
        close(
            jp.kl_divergence(log_zeros, log_predictions, reduction="none"),
            optax_kl(log_predictions, targets),
        )
        close(
            jp.kl_divergence(log_targets, log_predictions, reduction="none"),
            optax_kl_with_log_targets(log_predictions, log_targets),
        )


@PROPS
@given(SEEDS, OPTAX_SHAPES)
def test_optax_order_passed_to_ours_is_another_number(seed, shape):
    log_predictions, targets, log_zeros, log_targets = optax_inputs(seed, shape)
    optax = optax_kl(log_predictions, targets)
    with jax.enable_x64(True):
        swapped = np.asarray(
            jp.kl_divergence(log_predictions, log_zeros, reduction="none")
        )
        swapped, optax = swapped.reshape(-1), optax.reshape(-1)
        assert np.all(np.isfinite(optax))
        assert swapped[0] == np.inf  # a zero target: +inf in ours
        assert not np.any(np.isclose(swapped[1:], optax[1:], rtol=1e-6))
        reverse = kl_rows(log_predictions, log_zeros).reshape(-1)
        close(swapped[1:], reverse[1:])


@PROPS
@given(SEEDS, OPTAX_SHAPES)
def test_optax_where_of_rows(seed, shape):
    log_predictions, targets, log_zeros, _ = optax_inputs(seed, shape)
    rng = np.random.default_rng(seed)
    rows = rng.random(shape[:-1]) < 0.5
    with jax.enable_x64(True):
        got = jp.kl_divergence(log_zeros, log_predictions, reduction="none", where=rows)
        close(got, optax_kl(log_predictions, targets, where=rows[..., None]))
        assert np.all(np.asarray(got)[~rows] == 0.0)


@PROPS
@given(SEEDS, OPTAX_SHAPES, st.sampled_from([0.25, 0.5, 2.0, 3.0]))
def test_optax_generalized_kl_on_distributions_only(seed, shape, mass):
    log_predictions, targets, log_zeros, _ = optax_inputs(seed, shape)
    with jax.enable_x64(True):
        ours = jp.kl_divergence(log_zeros, log_predictions, reduction="none")
        close(ours, optax_generalized_kl(log_predictions, targets))
        # Unnormalised measures (total mass ≠ 1): no counterpart in ours, which
        # warns that the rows are not log-probabilities.
        measures = mass * targets
        with np.errstate(divide="ignore"):
            log_measures = np.log(measures)
        with pytest.warns(UserWarning, match="log-probabilities"):
            got = jp.kl_divergence(log_measures, log_predictions, reduction="none")
        want = optax_generalized_kl(log_predictions, measures)
        assert not np.any(np.isclose(got, want, rtol=1e-6))


@PROPS
@given(SEEDS, OPTAX_SHAPES)
def test_optax_softmax_cross_entropy_is_kl_plus_label_entropy(seed, shape):
    _, labels, log_labels, _ = optax_inputs(seed, shape)
    logits = np.random.default_rng(seed).normal(size=shape) * 2
    optax_ce = -np.sum(labels * log_softmax(logits), -1)

    def kl(z):
        return jp.kl_divergence(log_labels, z, from_logits=True, reduction="none")

    with jax.enable_x64(True):
        entropy = jp.entropy(log_labels, mode="penalty", reduction="none")
        close(kl(logits) + entropy, optax_ce)
        # The same gradient w.r.t. the logits: softmax(logits) − labels.
        grad = jax.grad(lambda z: kl(z).sum())(jnp.asarray(logits))
        want = np.exp(log_softmax(logits)) - labels
        np.testing.assert_allclose(grad, want, rtol=1e-10, atol=1e-14)


@PROPS
@given(SEEDS, st.sampled_from([(5, 3, 8), (2, 4, 11)]))
def test_optax_integer_label_cross_entropy(seed, shape):
    n, h, v = shape
    rng = np.random.default_rng(seed)
    x, w = rng.normal(size=(n, h)), rng.normal(size=(h, v))
    rx, rw = rng.normal(size=(n, h)), rng.normal(size=(h, v))
    ids = rng.integers(0, v, n)
    optax_ce = -np.take_along_axis(log_softmax(x @ w), ids[:, None], -1)[:, 0]
    labels = ids.copy()
    labels[0] = -100  # optax has no ignore_index: our fused labels= does
    with jax.enable_x64(True):
        close(-jp.fused_linear_token_logprobs(x, w, ids), optax_ce)
        loss, metrics = jp.fused_linear_kl_divergence(
            x, w, rx, rw, labels=labels, soft_weight=0.0, hard_weight=1.0
        )
        close(loss, optax_ce[1:].mean())
        close(metrics["cross_entropy"], optax_ce[1:].mean())
