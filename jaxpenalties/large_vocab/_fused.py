"""Memory-bounded divergences between linear-head distributions (large vocabularies).

``fused_linear_kl_divergence`` and ``fused_linear_js_divergence`` take hidden
states and the head's kernel instead of log-probabilities: P = softmax(x @ w / T),
Q = softmax(ref_x @ ref_w / T). The [positions, V] logits are never formed for all
positions at once, neither in the forward nor in the backward pass: positions are
processed in chunks of at most ``chunk_size`` rows inside one ``lax.scan``, so the
peak extra memory is O(chunk_size · V) (plus one float32 [H, V] accumulator per
head whose gradient is requested, and one float32 [H, V] partial product per
chunk on backends that do not accumulate a matmul in place).

Precision: the logits are bf16 × bf16 products accumulated in float32 for a bf16
head; the backward matmuls take the float32 logit cotangent rounded to the
input dtype (as autodiff of a bf16 matmul does), accumulate in float32, and the
weight gradient is summed over chunks in float32 (costing H · V · 4 bytes,
2 GiB for a 4,096 × 128k head, instead of half that in bf16, and sparing the
bf16 rounding error of each chunk's partial sum).

With integer ``labels`` the same pass also gives the student's cross-entropy
(distillation with hard labels): per chunk, its gradient is added to the
divergence's logit cotangent before the backward matmuls.

The gradient: with ``reduction="mean"`` / ``"sum"`` a custom JVP rule forms the
value and the gradients in one pass over the chunks (a frozen head costs no
gradient work); with ``"none"`` the backward pass recomputes each chunk's
logits (see :mod:`._fused_kernel`, measured in ``benchmarks/fused.py``).

Sharding: positions are split into chunks *strided* across the flattened
position axis (position i belongs to chunk i mod n_chunks), so each chunk holds a
slice of every shard when positions are sharded over devices and the scan never
runs over a sharded axis; a vocabulary-sharded kernel gives vocabulary-sharded
logits. Under explicit sharding the sharded position axes are flattened first,
the chunk size is chosen to split evenly over the position shards, and each
shard keeps its own partial weight gradient until after the loop (one
all-reduce instead of one per chunk).
"""

from __future__ import annotations

from jaxpenalties._core import divergence_checks
from jaxpenalties._core.types import (
    Array,
    ArrayLike,
    Direction,
    GradAccumulation,
    Reduction,
)
from jaxpenalties.large_vocab import _fused_run


def fused_linear_kl_divergence(
    x: ArrayLike,
    w: ArrayLike,
    ref_x: ArrayLike,
    ref_w: ArrayLike,
    *,
    direction: Direction = "forward",
    symmetric: bool = False,
    temperature: float | ArrayLike = 1.0,
    reduction: Reduction = "mean",
    where: ArrayLike | None = None,
    chunk_size: int | None = None,
    labels: ArrayLike | None = None,
    ignore_index: int = -100,
    soft_weight: float | ArrayLike = 1.0,
    hard_weight: float | ArrayLike = 1.0,
    label_smoothing: float = 0.0,
    grad_accumulation: GradAccumulation = "float32",
    bias: ArrayLike | None = None,
    ref_bias: ArrayLike | None = None,
    logit_scale: float | ArrayLike | None = None,
    ref_logit_scale: float | ArrayLike | None = None,
    softcap: float | ArrayLike | None = None,
    ref_softcap: float | ArrayLike | None = None,
) -> Array | tuple[Array, dict[str, Array]]:
    r"""KL divergence between two linear heads, without materialising the logits.

    .. math::

        P = \mathrm{softmax}(x W / T), \quad Q = \mathrm{softmax}(x_{ref} W_{ref} / T),
        \quad \mathrm{KL}(P \| Q) = \sum_v p_v (\log p_v - \log q_v)

    Same value as ``kl_divergence(log_softmax(x @ w), log_softmax(ref_x @ ref_w),
    ...)``, but positions are processed ``chunk_size`` rows at a time, forward
    and backward, so the extra memory is O(chunk_size · V) instead of
    O(positions · V). Matmuls accumulate in float32 (also for bfloat16 inputs);
    gradients flow to ``x``, ``w``, ``ref_x`` and ``ref_w`` (wrap the reference
    in ``jax.lax.stop_gradient`` to freeze it: its gradient work is then
    skipped). First derivatives in reverse mode (``jax.grad``, ``jax.vjp``),
    and in forward mode (``jax.jvp``) for ``"mean"`` and ``"sum"``. Runs on
    sharded inputs: positions over a data axis, the kernels' vocabulary over a
    model axis, with the single-device result.

    Args:
      x: hidden states [..., H] of the trained model (P).
      w: its head kernel [H, V] (flax ``Dense`` layout; a bias is ``bias``).
      ref_x: hidden states [..., H_ref] of the reference model (Q), same
        position shape as ``x``.
      ref_w: the reference head kernel [H_ref, V].
      direction: ``"forward"`` (KL(P‖Q)) or ``"reverse"`` (KL(Q‖P)). Static.
      symmetric: ½(KL(P‖Q) + KL(Q‖P)) in one pass. Static.
      temperature: divides both heads' logits; no T² factor is applied.
      reduction: ``"mean"`` over True positions, ``"sum"`` or ``"none"``. Static.
      where: optional mask (nonzero = kept) broadcastable to ``x.shape[:-1]``;
        masked positions may hold garbage (NaN) and get zero gradient.
        Liger's ``shift_labels`` is ``where=shift_labels != ignore_index``.
      chunk_size: maximum number of positions whose logits exist at once; a
        positive Python int, or None (default) for one from a memory budget:
        one chunk's working memory (both heads' float32 logits and the logit
        cotangent, as measured in the compiled GPU and TPU programs) takes a
        third of the memory of ``w`` (273 rows, 256 once split evenly, for a
        bf16 4,096 × 128k head), or 16 MiB of logits for small heads. Static.
      labels: optional integer hard labels of shape ``x.shape[:-1]``: the
        result is then ``soft_weight · divergence + hard_weight · CE`` with
        CE the cross-entropy of the untempered student logits at ``labels``,
        from the same pass over each chunk (``"mean"`` or ``"sum"`` only).
        Labels where ``where`` masks may be anything. Concrete labels
        outside [0, V) and other than ``ignore_index`` raise; traced ones
        give NaN in their position's CE and gradient (the loss is then NaN),
        never another token's loss.
      ignore_index: label value that is left out of the cross-entropy. Static.
      soft_weight, hard_weight: weights ≥ 0 of the two parts: numbers or scalar
        arrays, which may be traced (a new value never recompiles).
      label_smoothing: ε in [0, 1): CE = (1 − ε) CE(labels) + ε CE(uniform).
        Static.
      grad_accumulation: how the weight gradients (of ``w`` and ``ref_w``) are
        summed over chunks. ``"float32"`` (default): in a float32 [H, V]
        buffer, rounded to the kernel's dtype once (2 GiB for a bf16 4,096 ×
        128k head). ``"param"``: in the kernel's own dtype, rounded at every
        chunk (as a bf16 ``dw += xᵀ @ dz`` is, and as Liger Kernel does by
        default): no float32 [H, V] buffer, the sum updated in place in the
        output. For bf16, its error against float64 grows with the number of
        chunks (see ``docs/large_vocab.md``); float32 heads are unaffected.
        Static.
      bias, ref_bias: optional biases [V] and [V_ref] of the two heads
        (x @ w + bias); gradients flow to them as to ``w``.
      logit_scale, ref_logit_scale: optional logit scales s (Cohere's
        ``logit_scale``): finite and nonzero numbers or scalar arrays, which
        may be traced (a new value never recompiles) and get their gradients.
      softcap, ref_softcap: optional soft-caps c > 0 (Gemma 2's
        ``final_logit_softcapping``): numbers or scalar arrays, which may be
        traced and get their gradients (a traced c ≤ 0 gives NaN). Each head's
        logits are z = c · tanh(s · (x @ w + b) / c), in this order (bias,
        scale, soft-cap, as in Hugging Face's Cohere and Gemma 2), before the
        temperature; the hard-label CE uses the student's z.

    Returns:
      A float32 scalar (float64 for float64 inputs), or the per-position values
      of shape ``x.shape[:-1]`` for ``reduction="none"``. With ``labels``,
      ``(loss, {"divergence": ..., "cross_entropy": ...})``: each part's own
      mean (or sum) over its positions, as metrics that carry no gradient.

    Raises:
      ValueError: for an unknown option, a non-positive ``chunk_size``,
        mismatched shapes (hidden size of ``x`` vs ``w``, vocabulary of ``w``
        vs ``ref_w``, positions of ``x`` vs ``ref_x``, a bias not [V]), an
        empty vocabulary, concrete ``labels`` out of range at kept positions,
        a soft-cap ≤ 0 or a scale of 0 (or not finite).
      TypeError: for a traced value given as a static option, or integer input.

    Example:
      >>> import jax, jax.numpy as jnp, jaxpenalties as jp
      >>> kx, kw, krx, krw = jax.random.split(jax.random.key(0), 4)
      >>> x, w = jax.random.normal(kx, (8, 4)), jax.random.normal(kw, (4, 32))
      >>> rx, rw = jax.random.normal(krx, (8, 6)), jax.random.normal(krw, (6, 32))
      >>> fused = jp.fused_linear_kl_divergence(x, w, rx, rw, chunk_size=3)
      >>> plain = jp.kl_divergence(jax.nn.log_softmax(x @ w),
      ...                          jax.nn.log_softmax(rx @ rw))
      >>> bool(jnp.allclose(fused, plain, rtol=1e-5))
      True

    References:
      Hsu et al., Liger Kernel: Efficient Triton Kernels for LLM Training, 2024
      (fused linear cross-entropy / JSD). Hinton et al., Distilling the
      Knowledge in a Neural Network, 2015.
    """
    kind, swap = divergence_checks.check_kl_direction(direction, symmetric)
    heads = (x, w, ref_x, ref_w)
    hard = (labels, ignore_index, soft_weight, hard_weight, label_smoothing)
    return _fused_run.run(
        heads,
        kind,
        swap,
        None,
        temperature,
        reduction,
        where,
        chunk_size,
        hard,
        grad_accumulation,
        transforms=(bias, logit_scale, softcap, ref_bias, ref_logit_scale, ref_softcap),
    )


def fused_linear_js_divergence(
    x: ArrayLike,
    w: ArrayLike,
    ref_x: ArrayLike,
    ref_w: ArrayLike,
    *,
    beta: float = 0.5,
    temperature: float | ArrayLike = 1.0,
    reduction: Reduction = "mean",
    where: ArrayLike | None = None,
    chunk_size: int | None = None,
    labels: ArrayLike | None = None,
    ignore_index: int = -100,
    soft_weight: float | ArrayLike = 1.0,
    hard_weight: float | ArrayLike = 1.0,
    label_smoothing: float = 0.0,
    grad_accumulation: GradAccumulation = "float32",
    bias: ArrayLike | None = None,
    ref_bias: ArrayLike | None = None,
    logit_scale: float | ArrayLike | None = None,
    ref_logit_scale: float | ArrayLike | None = None,
    softcap: float | ArrayLike | None = None,
    ref_softcap: float | ArrayLike | None = None,
) -> Array | tuple[Array, dict[str, Array]]:
    r"""Generalised Jensen–Shannon divergence between two linear heads, chunked.

    .. math::

        M = \beta P + (1 - \beta) Q, \qquad
        \mathrm{JS}_\beta(P \| Q) = \beta\,\mathrm{KL}(P \| M)
            + (1 - \beta)\,\mathrm{KL}(Q \| M)

    with P = softmax(x @ w / T), Q = softmax(ref_x @ ref_w / T). Same value as
    ``js_divergence`` on the materialised log-softmax logits, with O(chunk_size ·
    V) extra memory forward and backward (see
    :func:`fused_linear_kl_divergence`).

    Args:
      x: hidden states [..., H] of the trained model (P, e.g. the student).
      w: its head kernel [H, V].
      ref_x: reference hidden states [..., H_ref] (Q, e.g. the teacher).
      ref_w: the reference head kernel [H_ref, V].
      beta: mixture weight in the open interval (0, 1), a Python float (an
        array, traced or not, is refused). Called outside ``jax.jit``, a new
        value does not recompile.
      temperature: divides both heads' logits; no T² factor.
      reduction: ``"mean"``, ``"sum"`` or ``"none"``. Static.
      where: optional mask (nonzero = kept) broadcastable to ``x.shape[:-1]``.
        Liger's ``shift_labels`` is ``where=shift_labels != ignore_index``.
      chunk_size: maximum number of positions whose logits exist at once, or
        None (default) for one from a memory budget (see
        :func:`fused_linear_kl_divergence`). Static.
      labels, ignore_index, soft_weight, hard_weight, label_smoothing: hard
        labels in the same pass, as in :func:`fused_linear_kl_divergence`.
      grad_accumulation: ``"float32"`` or ``"param"``, as in
        :func:`fused_linear_kl_divergence`. Static.
      bias, ref_bias, logit_scale, ref_logit_scale, softcap, ref_softcap: each
        head's logits c · tanh(s · (x @ w + b) / c) before the temperature,
        as in :func:`fused_linear_kl_divergence`.

    Returns:
      A scalar, or per-position values of shape ``x.shape[:-1]``; with
      ``labels``, ``(loss, {"divergence": ..., "cross_entropy": ...})``.

    Raises:
      ValueError: β outside (0, 1), unknown option, mismatched shapes.
      TypeError: traced static option, integer input.

    Example:
      >>> import jax.numpy as jnp, jaxpenalties as jp
      >>> x, rx = jnp.ones((2, 1)), jnp.ones((2, 1))
      >>> w = jnp.array([[50.0, -50.0]])  # P ≈ one-hot on token 0
      >>> rw = jnp.array([[-50.0, 50.0]])  # Q ≈ one-hot on token 1
      >>> print(f"{jp.fused_linear_js_divergence(x, w, rx, rw):.6f}")  # log 2
      0.693147

    References:
      Agarwal et al., On-Policy Distillation of Language Models: Learning from
      Self-Generated Mistakes (GKD), 2024. Hsu et al., Liger Kernel: Efficient
      Triton Kernels for LLM Training, 2024.
    """
    beta = divergence_checks.check_beta(beta)
    heads = (x, w, ref_x, ref_w)
    hard = (labels, ignore_index, soft_weight, hard_weight, label_smoothing)
    return _fused_run.run(
        heads,
        "js",
        False,
        beta,
        temperature,
        reduction,
        where,
        chunk_size,
        hard,
        grad_accumulation,
        transforms=(bias, logit_scale, softcap, ref_bias, ref_logit_scale, ref_softcap),
    )
