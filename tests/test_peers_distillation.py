"""Total variation, ULD and the α-divergence against their peers' own formulas
and test cases, ported to NumPy float64 (no peer code is imported; torch is
not needed), asserted at rtol 1e-12 under x64.

The peers, read at these commits:

* Liger Kernel (``linkedin/Liger-Kernel`` at ead96b618e5c67bddc6a6e9bcb99bfe6b5ab661c):
  ``src/liger_kernel/ops/tvd.py`` (last changed in 5c9cecc85c20),
  ``src/liger_kernel/transformers/tvd.py`` (fe1ea95ff56a) and
  ``test/transformers/test_tvd.py`` (1cc9c5083ab4): ``LigerTVDLoss``, its four
  reductions, ``shift_labels``/``ignore_index``, its gradient, and its test's
  shapes, label scheme and float32 tolerance.
* TRL (``huggingface/trl`` at f2cd57710ae345ea6428ae95363267fcf38a3dc8):
  ``trl/experimental/gold/gold_trainer.py`` (66741b1b0e1d), ``ULDLoss`` on its
  positional path (``use_extended_uld=False``, no hybrid loss), and the ULD
  cases of ``tests/experimental/test_gold_trainer.py`` (9a7518a5c1e4);
  ``trl/trainer/dpo_trainer.py`` (d2b72b720286) and ``dpo_config.py``
  (df887458b307): the f-DPO scores of ``f_divergence_type``.

What does not map is stated where it arises: Liger's TVD is an elementwise
½|x − y| of any tensors (its own test feeds ``randn``, not distributions),
ours takes log-probabilities; GOLD's alignment of answer spans across
tokenizers, its byte-offset merging (``use_extended_uld``) and its hybrid
JSD + ULD loss are not ours; TRL's DPO ``alpha_divergence`` is a reward
transform f′(π/π_ref), not a divergence between two distributions.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxpenalties as jp
from tests.helpers import close

RTOL = 1e-12
EPS = np.finfo(np.float64).eps
PROPS = settings(max_examples=8, deadline=None)
SEEDS = st.integers(0, 2**32 - 1)


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def softmax(x):
    return np.exp(log_softmax(x))


# ---------------------------------------------------------------------------
# Liger Kernel: LigerTVDLoss
# ---------------------------------------------------------------------------


def liger_scale(reduction, n_non_ignore, v):
    """ops/tvd.py's ``scale``, applied to the loss and to the gradient. As in
    Liger, ``1.0 / 0`` raises ZeroDivisionError when every row is ignored."""
    if reduction == "batchmean":
        return 1.0 / n_non_ignore
    if reduction == "mean":
        return 1.0 / (n_non_ignore * v)
    return 1.0


def liger_tvd(p, q, shift_labels=None, reduction="batchmean", ignore_index=-100):
    """LigerTVDLoss(reduction, ignore_index)(p, q, shift_labels), p and q
    [BT, V]: 0.5·|p − q| per entry; a row whose label is ``ignore_index``
    gives 0; batchmean = sum / n_non_ignore, mean = sum / (n_non_ignore·V),
    sum = sum, none = the [BT, V] terms."""
    bt, v = p.shape
    terms = 0.5 * np.abs(p - q)
    n_non_ignore = bt
    if shift_labels is not None:
        kept = shift_labels != ignore_index
        terms = np.where(kept[:, None], terms, 0.0)
        n_non_ignore = int(kept.sum())
    scale = liger_scale(reduction, n_non_ignore, v)
    if reduction == "none":
        return terms
    return terms.sum(-1).sum() * scale  # per-row sums, then over rows


def liger_tvd_grad(p, q, shift_labels=None, reduction="batchmean", ignore_index=-100):
    """The gradient Liger's kernel stores for p: ``where(p > q, 0.5, -0.5)``
    times the scale, 0 on ignored rows. None for q."""
    bt, v = p.shape
    n_non_ignore, kept = bt, np.ones(bt, bool)
    if shift_labels is not None:
        kept = shift_labels != ignore_index
        n_non_ignore = int(kept.sum())
    scale = liger_scale(reduction, n_non_ignore, v)
    grad = np.where(p > q, 0.5 * scale, -0.5 * scale)
    return np.where(kept[:, None], grad, 0.0)


def liger_labels(rng, bt, v, ignore_index):
    """test_tvd.py's labels: uniform in [0, V), then 1 to BT//2 − 1 rows set
    to ``ignore_index`` (torch.randint's upper bound is exclusive)."""
    label = rng.integers(0, v, bt)
    n = rng.integers(1, bt // 2)
    label[rng.permutation(bt)[:n]] = ignore_index
    return label


def tvd_inputs(seed, bt, v, dtype=np.float64):
    """Two distributions [BT, V]. Liger's test has ``target`` =
    ``randn(BT, V).softmax(-1)`` and feeds ``randn`` itself as p; ours takes
    log-probabilities, so p is a softmax here too."""
    rng = np.random.default_rng(seed)
    p = softmax(rng.normal(size=(bt, v)) * rng.uniform(0.5, 3.0)).astype(dtype)
    q = softmax(rng.normal(size=(bt, v))).astype(dtype)
    return rng, p, q


@functools.partial(jax.jit, static_argnames="reduction")
def tv_of_probs(p, log_q, where, reduction):
    """Ours on Liger's arguments: TV of the probabilities p and exp(log_q)."""
    return jp.total_variation(jnp.log(p), log_q, where=where, reduction=reduction)


tv_grad_of_probs = jax.jit(jax.grad(tv_of_probs), static_argnames="reduction")

LIGER_SHAPES = st.sampled_from([(4, 7), (6, 11), (9, 5)])  # BT, V
IGNORE_INDICES = st.sampled_from([-100, 0, 1])  # test_tvd.py's


def our_reduction(reduction):
    """Liger's batchmean is our mean over the kept rows; Liger's mean is that
    divided by V (our values are per row, summed over V)."""
    return {"batchmean": "mean", "mean": "mean", "sum": "sum", "none": "none"}[
        reduction
    ]


@PROPS
@given(SEEDS, LIGER_SHAPES, IGNORE_INDICES, st.booleans())
def test_liger_tvd_reductions(seed, shape, ignore_index, with_labels):
    bt, v = shape
    rng, p, q = tvd_inputs(seed, bt, v)
    labels = liger_labels(rng, bt, v, ignore_index) if with_labels else None
    where = None if labels is None else labels != ignore_index
    with jax.enable_x64(True):
        for reduction in ("batchmean", "sum", "mean", "none"):
            want = liger_tvd(p, q, labels, reduction, ignore_index)
            got = tv_of_probs(p, np.log(q), where, our_reduction(reduction))
            if reduction == "mean":
                got = got / v
            if reduction == "none":  # Liger [BT, V], ours [BT]: its sum over V
                assert want.shape == (bt, v) and got.shape == (bt,)
                want = want.sum(-1)
            close(got, want)


@PROPS
@given(SEEDS, LIGER_SHAPES, IGNORE_INDICES, st.booleans())
def test_liger_tvd_gradient(seed, shape, ignore_index, not_last_layer):
    bt, v = shape
    rng, p, q = tvd_inputs(seed, bt, v)
    labels = liger_labels(rng, bt, v, ignore_index)
    where = labels != ignore_index
    grad_output = 2.0 if not_last_layer else 1.0  # test_correctness_not_last
    with jax.enable_x64(True):
        for reduction in ("batchmean", "sum", "mean"):
            want = grad_output * liger_tvd_grad(p, q, labels, reduction, ignore_index)
            got = tv_grad_of_probs(p, np.log(q), where, our_reduction(reduction))
            if reduction == "mean":
                got = got / v
            # ∂/∂p through log p: (½ sign(p − q) p) / p, one rounding of p·(1/p).
            close(grad_output * got, want, atol=4 * EPS * np.abs(want))


def test_liger_tvd_gradient_at_a_tie():
    """Where p = q exactly, Liger's kernel takes the ``p > q`` else branch,
    −½·scale; ours is 0 (the subgradient of least norm). Both lie in the
    subdifferential [−½, ½]·scale; elsewhere they agree."""
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    q = np.array([[0.5, 0.1, 0.4], [0.1, 0.6, 0.3]])  # ties: (0, 0) and row 1
    with jax.enable_x64(True):
        got = np.asarray(tv_grad_of_probs(p, np.log(q), None, "sum"))
    want = liger_tvd_grad(p, q, reduction="sum")
    tie = p == q
    assert (want[tie] == -0.5).all() and (got[tie] == 0.0).all()
    close(got[~tie], want[~tie], atol=4 * EPS)


def test_liger_tvd_no_row_kept():
    """Every label ignored: test_tvd.py's TorchTVDLoss returns 0, and so does
    our mean; Liger's kernel computes ``1.0 / n_non_ignore`` and raises for
    batchmean and mean. Sum and none are 0 in both."""
    rng, p, q = tvd_inputs(0, 4, 5)
    labels = np.full(4, -100)
    where = labels != -100
    with jax.enable_x64(True):
        assert tv_of_probs(p, np.log(q), where, "mean") == 0.0
        assert tv_of_probs(p, np.log(q), where, "sum") == 0.0
        assert (np.asarray(tv_of_probs(p, np.log(q), where, "none")) == 0.0).all()
    for reduction in ("batchmean", "mean"):
        with pytest.raises(ZeroDivisionError):
            liger_tvd(p, q, labels, reduction)
    assert liger_tvd(p, q, labels, "sum") == 0.0


@pytest.mark.parametrize("bt, v", [(4, 32000), (8, 1271)])  # test_tvd.py's V
def test_liger_tvd_float32_at_liger_tolerance(bt, v):
    """float32, the dtype of test_tvd.py, at its tolerance (atol 1e-8, rtol
    1e-6), against the float64 formula on the same float32 probabilities."""
    rng, p, q = tvd_inputs(1, bt, v, np.float32)
    labels = liger_labels(rng, bt, v, -100)
    where = labels != -100
    p64, q64 = p.astype(np.float64), q.astype(np.float64)
    for reduction in ("batchmean", "sum", "mean", "none"):
        got = tv_of_probs(p, np.log(q), where, our_reduction(reduction))
        assert got.dtype == jnp.float32
        want = liger_tvd(p64, q64, labels, reduction)
        if reduction == "mean":
            got = got / v
        if reduction == "none":
            want = want.sum(-1)
        close(got, want, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------
# TRL GOLD: ULDLoss
# ---------------------------------------------------------------------------


def gold_start_and_size_answers(labels, ignore_index=-100):
    """ULDLoss._get_start_and_size_answers: each row's first kept index and its
    number of kept labels (0, 0 for a row with none). The span scored is
    [start, start + size): a hole in the labels shifts its end."""
    starts, sizes = [], []
    for answer in labels:
        kept = answer != ignore_index
        if not kept.any():
            starts.append(0)
            sizes.append(0)
            continue
        starts.append(int(np.flatnonzero(kept)[0]))
        sizes.append(int(kept.sum()))
    return starts, sizes


def gold_uld(
    student_logits,
    teacher_logits,
    student_labels,
    teacher_labels,
    *,
    student_temperature=1.0,
    teacher_temperature=1.0,
    skip_student_eos=False,
    skip_teacher_eos=False,
    token_merge_strategy="observed",
    distillation_weight=1.0,
):
    """ULDLoss._compute_distillation_loss on the positional path
    (``use_extended_uld=False``), without the hybrid loss, times
    ``distillation_weight`` (``uld_crossentropy_weight=0``). The defaults are
    the test file's ``build_config``; GOLDConfig's own are
    ``skip_*_eos=True``."""
    s_start, s_size = gold_start_and_size_answers(student_labels)
    t_start, t_size = gold_start_and_size_answers(teacher_labels)
    if skip_student_eos:
        s_size = [size - 1 for size in s_size]
    if skip_teacher_eos:
        t_size = [size - 1 for size in t_size]
    if not s_size or not t_size or max(max(s_size), max(t_size)) <= 0:
        return 0.0
    bayesian = token_merge_strategy == "bayesian"
    losses = []
    for i in range(student_logits.shape[0]):
        ss, sn, ts, tn = s_start[i], s_size[i], t_start[i], t_size[i]
        if sn <= 0 or tn <= 0:
            losses.append(0.0)
            continue
        if bayesian and (ss == 0 or ts == 0):  # no predictor logit: drop one
            ss, sn, ts, tn = ss + 1, sn - 1, ts + 1, tn - 1
            if sn <= 0 or tn <= 0:
                losses.append(0.0)
                continue
        shift = 1 if bayesian else 0  # "bayesian": probs[k] predicts token k
        s_ans = student_logits[i, ss - shift : ss + sn - shift]
        t_ans = teacher_logits[i, ts - shift : ts + tn - shift]
        s_probs = softmax(s_ans / student_temperature)
        t_probs = softmax(t_ans / teacher_temperature)
        n = min(sn, tn)  # min(len(student_token_ids), len(teacher_token_ids))
        s_sorted = -np.sort(-s_probs[:n], axis=-1)
        t_sorted = -np.sort(-t_probs[:n], axis=-1)
        width = max(s_sorted.shape[-1], t_sorted.shape[-1])
        s_sorted = np.pad(s_sorted, ((0, 0), (0, width - s_sorted.shape[-1])))
        t_sorted = np.pad(t_sorted, ((0, 0), (0, width - t_sorted.shape[-1])))
        losses.append(np.abs(s_sorted - t_sorted).sum() / n)  # l1 "sum" / n
    return distillation_weight * np.mean(losses)


def gold_rows(labels, skip_eos, other_labels, other_skip_eos, bayesian):
    """Which rows GOLD scores on one side, as (first row, count) per sequence:
    the answer span, less the EOS, shifted one earlier for "bayesian" (whose
    zero-start spans lose their first token), cropped to the shorter side.
    This alignment is GOLD's, not the library's: it builds our ``where``."""
    starts, sizes = gold_start_and_size_answers(labels)
    other_starts, other_sizes = gold_start_and_size_answers(other_labels)
    rows = []
    for s, n, os_, on in zip(starts, sizes, other_starts, other_sizes, strict=True):
        n, on = n - skip_eos, on - other_skip_eos
        if n > 0 and on > 0 and bayesian and (s == 0 or os_ == 0):
            s, n, on = s + 1, n - 1, on - 1
        count = min(n, on) if n > 0 and on > 0 else 0
        rows.append((s - (1 if bayesian else 0), count))
    return rows


def ours_gold(
    student_logits,
    teacher_logits,
    student_labels,
    teacher_labels,
    *,
    student_temperature=1.0,
    teacher_temperature=1.0,
    skip_student_eos=False,
    skip_teacher_eos=False,
    token_merge_strategy="observed",
    distillation_weight=1.0,
):
    """GOLD's number from ours: gather each side's scored rows into [B, N, V]
    (vocabularies of their own sizes), ULD per row with ``where``, then the
    mean per sequence and over all B sequences (an empty one counts 0)."""
    bayesian = token_merge_strategy == "bayesian"
    s_rows = gold_rows(
        student_labels, skip_student_eos, teacher_labels, skip_teacher_eos, bayesian
    )
    t_rows = gold_rows(
        teacher_labels, skip_teacher_eos, student_labels, skip_student_eos, bayesian
    )
    b = student_logits.shape[0]
    width = max(1, max(n for _, n in s_rows))
    s = np.zeros((b, width, student_logits.shape[-1]))
    t = np.zeros((b, width, teacher_logits.shape[-1]))
    mask = np.zeros((b, width), bool)
    for i, ((s0, n), (t0, _)) in enumerate(zip(s_rows, t_rows, strict=True)):
        s[i, :n], t[i, :n] = (
            student_logits[i, s0 : s0 + n],
            teacher_logits[i, t0 : t0 + n],
        )
        mask[i, :n] = True
    # Separate temperatures: divide each side's logits before normalising.
    per_row = uld_rows(
        log_softmax(s / student_temperature), log_softmax(t / teacher_temperature), mask
    )
    mode = "seq-mean-token-mean"
    return distillation_weight * jp.aggregate(
        per_row, mode=mode, where=mask, normalizer=b
    )


@jax.jit
def uld_rows(log_p, log_q, where):
    return jp.uld_distance(log_p, log_q, where=where, reduction="none")


def gold_batch(rng, b, t, v_student, v_teacher):
    """Logits and label rows: prompts of their own lengths per side (the two
    tokenizers), answers of their own lengths, some sequence empty."""
    student = rng.normal(size=(b, t, v_student)) * rng.uniform(0.5, 3.0)
    teacher = rng.normal(size=(b, t + 1, v_teacher)) * rng.uniform(0.5, 3.0)

    def labels(length):
        rows = np.full((b, length), -100)
        for i in range(b):
            start = rng.integers(0, 3)
            end = rng.integers(start, length + 1)
            rows[i, start:end] = rng.integers(0, 50, end - start)
        return rows

    return student, teacher, labels(t), labels(t + 1)


@PROPS
@given(
    SEEDS,
    st.sampled_from([(3, 6, 5, 8), (2, 5, 9, 4), (4, 4, 7, 7)]),  # B, T, V_s, V_t
    st.sampled_from([(1.0, 1.0), (2.0, 0.5), (0.7, 1.0)]),
    st.booleans(),
    st.booleans(),
    st.sampled_from(["observed", "bayesian"]),
)
def test_gold_uld_positional(seed, shape, temperatures, skip_s, skip_t, strategy):
    rng = np.random.default_rng(seed)
    student, teacher, s_labels, t_labels = gold_batch(rng, *shape)
    opts = dict(
        student_temperature=temperatures[0],
        teacher_temperature=temperatures[1],
        skip_student_eos=skip_s,
        skip_teacher_eos=skip_t,
        token_merge_strategy=strategy,
        distillation_weight=0.7,
    )
    want = gold_uld(student, teacher, s_labels, t_labels, **opts)
    with jax.enable_x64(True):
        close(ours_gold(student, teacher, s_labels, t_labels, **opts), want)


@PROPS
@given(SEEDS, st.sampled_from([(2, 5, 6, 9), (3, 4, 8, 5)]), st.sampled_from([1, 2]))
def test_gold_uld_shared_positions_are_where_labels(seed, shape, temperature):
    """The common case: both sides on the same positions with contiguous
    answers and ``skip_*_eos=False``: GOLD's loss is our ``where=labels !=
    -100``, averaged per sequence over all B; with one temperature,
    ``temperature=T, from_logits=True`` on the logits."""
    b, t, v_s, v_t = shape
    rng = np.random.default_rng(seed)
    student = rng.normal(size=(b, t, v_s)) * 2
    teacher = rng.normal(size=(b, t, v_t)) * 2
    labels = np.full((b, t), -100)
    for i in range(1, b):  # sequence 0 has no answer
        labels[i, rng.integers(0, t) :] = 7
    kept = labels != -100
    want = gold_uld(
        student,
        teacher,
        labels,
        labels,
        student_temperature=temperature,
        teacher_temperature=temperature,
    )
    with jax.enable_x64(True):
        per_row = jp.uld_distance(
            student,
            teacher,
            temperature=temperature,
            from_logits=True,
            where=kept,
            reduction="none",
        )
        mode = "seq-mean-token-mean"
        close(jp.aggregate(per_row, mode=mode, where=kept, normalizer=b), want)
        # Without normalizer: the mean over the b − 1 non-empty sequences.
        close(jp.aggregate(per_row, mode=mode, where=kept), want * b / (b - 1))
        # One sequence: GOLD's number is our plain mean over its kept rows.
        one = gold_uld(
            student[1:2],
            teacher[1:2],
            labels[1:2],
            labels[1:2],
            student_temperature=temperature,
            teacher_temperature=temperature,
        )
        ours = jp.uld_distance(
            student[1], teacher[1], temperature=temperature, from_logits=True
        )
        if kept[1].all():
            close(ours, one)
        close(
            jp.uld_distance(
                student[1:2],
                teacher[1:2],
                temperature=temperature,
                from_logits=True,
                where=kept[1:2],
            ),
            one,
        )


def test_gold_test_file_cases():
    """test_gold_trainer.py's ULD cases (their random logits come from
    ``torch.manual_seed(0)``; these are NumPy's). The expected values are the
    test file's own formula, sorted L1 summed over the number of rows (with
    the padding of ULDLoss where the vocabularies differ: that test of theirs
    only asserts a finite loss)."""

    def expected(s_rows, t_rows):
        s_sorted = -np.sort(-softmax(s_rows), -1)
        t_sorted = -np.sort(-softmax(t_rows), -1)
        pad = t_sorted.shape[-1] - s_sorted.shape[-1]  # F.pad of the shorter
        s_sorted = np.pad(s_sorted, ((0, 0), (0, max(pad, 0))))
        t_sorted = np.pad(t_sorted, ((0, 0), (0, max(-pad, 0))))
        return np.abs(s_sorted - t_sorted).sum() / s_rows.shape[0]

    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(1, 3, 4)), rng.normal(size=(1, 3, 4))
    with jax.enable_x64(True):
        # bayesian_shifts_answer_logits: labels [[-100, 1, 2]] score rows 0:2.
        labels = np.array([[-100, 1, 2]])
        bayes = dict(token_merge_strategy="bayesian")
        want = expected(s[0, 0:2], t[0, 0:2])
        close(gold_uld(s, t, labels, labels, **bayes), want)
        close(ours_gold(s, t, labels, labels, **bayes), want)
        close(jp.uld_distance(s[0, 0:2], t[0, 0:2], from_logits=True), want)
        observed = ours_gold(s, t, labels, labels)  # rows 1:3
        close(observed, expected(s[0, 1:3], t[0, 1:3]))
        assert not np.isclose(observed, want)
        # bayesian_skips_zero_start_span_positional: [[1, 2, 3]] -> rows 0:2.
        labels = np.array([[1, 2, 3]])
        close(gold_uld(s, t, labels, labels, **bayes), want)
        close(ours_gold(s, t, labels, labels, **bayes), want)
        # bayesian_zero_loss_when_only_token_dropped: [[5, -100]] -> 0.
        labels = np.array([[5, -100]])
        s2, t2 = rng.normal(size=(1, 2, 4)), rng.normal(size=(1, 2, 4))
        assert gold_uld(s2, t2, labels, labels, **bayes) == 0.0
        assert ours_gold(s2, t2, labels, labels, **bayes) == 0.0
        # positional_mode_does_not_require_byte_offsets: V 5 and 6, rows 1:3.
        s3, t3 = rng.normal(size=(1, 4, 5)), rng.normal(size=(1, 4, 6))
        s_labels = np.array([[-100, 1, 2, -100]])
        t_labels = np.array([[-100, 3, 4, -100]])
        want = expected(s3[0, 1:3], t3[0, 1:3])
        close(gold_uld(s3, t3, s_labels, t_labels), want)
        close(ours_gold(s3, t3, s_labels, t_labels), want)
        close(jp.uld_distance(s3, t3, from_logits=True, where=s_labels != -100), want)
    # get_start_and_size_answers_skips_prompt_tokens.
    answers = np.array(
        [
            [-100, -100, -100, 10, 20, 30, -100, -100],
            [-100, 5, 6, 7, -100, -100, -100, -100],
            [-100] * 8,
        ]
    )
    assert gold_start_and_size_answers(answers) == ([3, 1, 0], [3, 3, 0])


def test_gold_label_hole_is_a_span_not_a_mask():
    """GOLD scores [first kept, first kept + number kept): with a hole in the
    labels that span covers the hole and stops short of the last label.
    ``where=labels != -100`` scores the labelled rows instead: another number."""
    rng = np.random.default_rng(3)
    s, t = rng.normal(size=(1, 5, 6)), rng.normal(size=(1, 5, 4))
    labels = np.array([[-100, 5, -100, 6, 7]])  # GOLD scores rows 1, 2, 3
    want = gold_uld(s, t, labels, labels)
    span = np.array([[False, True, True, True, False]])
    with jax.enable_x64(True):
        close(jp.uld_distance(s, t, from_logits=True, where=span), want)
        masked = jp.uld_distance(s, t, from_logits=True, where=labels != -100)
        assert not np.isclose(masked, want, rtol=1e-6)


@PROPS
@given(SEEDS, st.sampled_from([(4, 6, 9), (3, 11, 5)]))  # T, V_s, V_t
def test_gold_has_no_top_k(seed, shape):
    """GOLD sorts the whole vocabularies. ``top_k`` ≥ both sizes is GOLD's
    number; a smaller k (ours only) is a lower bound of it."""
    t, v_s, v_t = shape
    rng = np.random.default_rng(seed)
    s, q = rng.normal(size=(1, t, v_s)) * 2, rng.normal(size=(1, t, v_t)) * 2
    labels = np.zeros((1, t), int)
    want = gold_uld(s, q, labels, labels)
    with jax.enable_x64(True):
        full = jp.uld_distance(s, q, from_logits=True, top_k=max(v_s, v_t))
        close(full, want)
        low = jp.uld_distance(s, q, from_logits=True, top_k=2)
        assert low <= want * (1 + 1e-12)


# ---------------------------------------------------------------------------
# TRL DPO: f_divergence_type
# ---------------------------------------------------------------------------


def trl_dpo_scores(logratios, f_divergence_type, f_alpha_divergence_coef=0.5):
    """DPOTrainer's chosen/rejected scores from log(π/π_ref) (sequence
    level), in float64. TRL computes the α branch's exp in float32 after a
    clamp of (α − 1)·logratio at 80 (its dtype table has no float64 entry);
    no value here comes near it."""
    if f_divergence_type == "reverse_kl":
        return logratios
    if f_divergence_type == "forward_kl":  # f'(t) = 1 − 1/t, constant dropped
        return -np.exp(-logratios)
    if f_divergence_type == "js_divergence":  # f'(t) = log(2t/(t+1)), log 2 dropped
        return -np.logaddexp(0.0, -logratios)  # logsigmoid
    if f_divergence_type == "alpha_divergence":
        a = f_alpha_divergence_coef
        if abs(a - 1.0) < 1e-6:  # limit case: reverse_kl
            return logratios
        coef = 1.0 / (a - 1.0)
        return np.exp(np.minimum((a - 1.0) * logratios, 80.0)) * coef
    raise ValueError(f_divergence_type)


def ours_f(f_divergence_type, alpha=0.5):
    """D_f(π ‖ π_ref) from log-probabilities, the divergence whose generator's
    derivative f′ TRL's score is (up to an additive constant)."""
    if f_divergence_type == "reverse_kl":
        return lambda lp, lq: jp.kl_divergence(lp, lq, reduction="sum")
    if f_divergence_type == "forward_kl":
        return lambda lp, lq: jp.kl_divergence(
            lp, lq, direction="reverse", reduction="sum"
        )
    if f_divergence_type == "js_divergence":  # f(u) = u log u − (u+1) log((u+1)/2)
        return lambda lp, lq: 2 * jp.js_divergence(lp, lq, beta=0.5, reduction="sum")
    return lambda lp, lq: jp.alpha_divergence(lp, lq, alpha=alpha, reduction="sum")


@functools.partial(jax.jit, static_argnames=("kind",))
def f_prime(p, log_q, alpha, kind):
    """∂D_f(P ‖ Q)/∂p_v = f′(p_v / q_v): our gradient with respect to the
    policy's probabilities (through log p)."""
    return jax.grad(lambda p: ours_f(kind, alpha)(jnp.log(p), log_q))(p)


KINDS = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


@PROPS
@given(SEEDS, st.sampled_from([0.0, 0.2, 0.5, 0.9, 1.0]))
def test_trl_dpo_alpha_score_is_our_generator_derivative(seed, alpha):
    """TRL's alpha score t^(α−1)/(α−1) is f′(t) + 1/(α − 1) with f Amari's
    generator of ``jp.alpha_divergence(policy, ref, alpha=α)``, D = Σ q f(p/q),
    f(u) = (u^α − αu − (1 − α))/(α(α − 1)), f′(u) = (u^(α−1) − 1)/(α − 1).
    TRL's ``f_alpha_divergence_coef`` is our α (config's "u^-α" wording
    notwithstanding: the code raises t to α − 1). α = 1 is TRL's reverse_kl
    fallback (f′ = log t); α = 0 is f′(t) = 1 − 1/t, TRL's forward_kl + 1."""
    rng = np.random.default_rng(seed)
    v = 7
    p, q = rng.dirichlet(np.ones(v)), rng.dirichlet(np.ones(v))
    logratios = np.log(p) - np.log(q)  # log(π/π_ref) of each of the v outcomes
    if alpha == 0.0:
        score, constant = trl_dpo_scores(logratios, "forward_kl"), -1.0
    elif alpha == 1.0:
        score, constant = trl_dpo_scores(logratios, "alpha_divergence", alpha), 0.0
    else:
        score = trl_dpo_scores(logratios, "alpha_divergence", alpha)
        constant = 1.0 / (alpha - 1.0)
    want = score - constant
    # score − constant cancels near t = 1: rounding of both, not of want.
    rounding = 8 * EPS * (np.abs(score) + abs(constant))
    with jax.enable_x64(True):
        got = f_prime(p, np.log(q), alpha, "alpha_divergence")
        close(got, want, atol=rounding)


@PROPS
@given(SEEDS, st.sampled_from(KINDS), st.sampled_from([0.3, 0.5, 0.8]))
def test_trl_dpo_delta_score_is_our_f_prime_difference(seed, kind, alpha):
    """DPO uses chosen − rejected scores, where additive constants cancel:
    for each ``f_divergence_type``, TRL's delta_score is the difference of our
    divergence's f′ at the chosen and the rejected outcome. The divergences:
    reverse_kl = KL(π‖π_ref), forward_kl = KL(π_ref‖π), js_divergence =
    2·JS(π, π_ref) with β = ½, alpha_divergence = D_α(π‖π_ref)."""
    rng = np.random.default_rng(seed)
    v = 6
    p, q = rng.dirichlet(np.ones(v)), rng.dirichlet(np.ones(v))
    scores = trl_dpo_scores(np.log(p) - np.log(q), kind, alpha)
    chosen, rejected = rng.permutation(v)[:2]
    want = scores[chosen] - scores[rejected]
    with jax.enable_x64(True):
        f = np.asarray(f_prime(p, np.log(q), alpha, kind))
    rounding = 8 * EPS * (np.abs(scores).max() + np.abs(f).max())
    close(f[chosen] - f[rejected], want, atol=rounding)
