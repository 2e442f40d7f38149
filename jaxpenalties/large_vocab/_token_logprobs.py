"""Sampled-token log-probabilities from hidden states (RL at 128k vocabularies).

``fused_linear_token_logprobs`` gives log π(y_t) = log_softmax(x_t W / T)[y_t] (and,
optionally, the entropy H_t of each position's distribution) without forming the
[positions, V] logits: positions go through one ``lax.scan`` in chunks (the same
layout as the fused divergences), and the backward pass recomputes each chunk's
logits. A GRPO / PPO step gets the policy's and the reference's sampled-token
log-probs this way, then the ratio objective and :func:`kl_estimate`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxpenalties._core import (
    checks,
    chunking,
    divergence_checks,
    kernel,
    normalisation,
    numerics,
)
from jaxpenalties._core.types import Array, ArrayLike, GradAccumulation
from jaxpenalties.large_vocab import _head_checks as head_checks
from jaxpenalties.large_vocab import _head_scan, _indexing
from jaxpenalties.large_vocab import _head_transform as head_transform


def _chunk_stats(
    z: Array, tokens: Array, t: Array | None
) -> tuple[Array, Array, Array, Array]:
    """Tempered log-probs a [C, V], shifted logits s, log p(y) and H [C]."""
    a, s = normalisation.log_softmax(z, t)
    logp = _indexing.take(a, tokens[:, None])[:, 0]  # NaN for ids outside [0, V)
    entropy = -kernel.neg_entropy(a)  # the entropy kernel's H ≥ 0 rule
    return a, s, logp, entropy


def _chunk_outputs(
    z: Array, parts: tuple[Array], shared: tuple[Array | None, Any]
) -> tuple[Array, Array]:
    """One chunk's log p(y) and H [C] from its raw logits z [C, V] (mapped by
    the head's bias, scale and soft-cap, ``shared[1]``, when given)."""
    z = head_transform.apply(shared[1], z)
    _, _, logp, entropy = _chunk_stats(z, parts[0], shared[0])
    return logp, entropy


@functools.partial(
    jax.jit, static_argnames=("chunk_size", "entropy", "grad_accumulation")
)
def _impl(
    x: Array,
    w: Array,
    tokens: Array,
    temperature: ArrayLike | None,
    where: ArrayLike | None,
    tr: head_transform.Transform | None,
    *,
    chunk_size: int | None,
    entropy: bool,
    grad_accumulation: str,
) -> Array | tuple[Array, Array]:
    dtype = numerics.compute_dtype(x, w)
    lay = chunking.layout(x, w, chunk_size)
    mask = checks.broadcast_where(where, lay.positions)
    xs = lay.chunked(numerics.sanitize(x, mask))
    safe = _indexing.clean(tokens, w.shape[1], mask)
    t = None if temperature is None else jnp.asarray(temperature, dtype)
    shared = (t, head_transform.prepare(tr, dtype))
    logp, ent = _head_scan.head_scan(
        _chunk_outputs, dtype, grad_accumulation, xs, w, (lay.chunked(safe),), shared
    )
    logp, ent = (
        numerics.sanitize(lay.unchunked(logp), mask),
        numerics.sanitize(lay.unchunked(ent), mask),
    )
    return (logp, ent) if entropy else logp


def fused_linear_token_logprobs(
    x: ArrayLike,
    w: ArrayLike,
    tokens: ArrayLike,
    *,
    temperature: float | ArrayLike = 1.0,
    where: ArrayLike | None = None,
    chunk_size: int | None = None,
    entropy: bool = False,
    grad_accumulation: GradAccumulation = "float32",
    bias: ArrayLike | None = None,
    logit_scale: float | ArrayLike | None = None,
    softcap: float | ArrayLike | None = None,
) -> Array | tuple[Array, Array]:
    r"""Log-probabilities of given tokens under a linear head, chunked.

    .. math::

        \log \pi(y_t) = \big[\mathrm{log\_softmax}(x_t W / T)\big]_{y_t}, \qquad
        H_t = -\sum_v \pi_v(t) \log \pi_v(t)

    Equal to ``jnp.take_along_axis(jax.nn.log_softmax(x @ w / T), tokens[...,
    None], -1)[..., 0]`` in value and gradient, but positions are processed
    ``chunk_size`` rows at a time, forward and backward (which recomputes each
    chunk's logits), so the extra memory is O(chunk_size · V). Matmuls
    accumulate in float32; a bf16 head stays bf16 in the backward matmuls.
    Gradients flow to ``x``, ``w`` and an array ``temperature`` (reverse mode).

    Args:
      x: hidden states [..., H].
      w: the head kernel [H, V] (flax ``Dense`` layout).
      tokens: integer token ids, shape ``x.shape[:-1]``. Concrete ids outside
        [0, V) at kept positions raise; traced ones (under ``jit``) give NaN
        at their position, in the value and the gradient, never another
        token's log-prob.
      temperature: divides the logits (a Python float or a scalar array, which
        never recompiles); 1 gives the untempered log-probs.
      where: optional mask (nonzero = kept) broadcastable to ``x.shape[:-1]``; masked
        positions give 0 and get zero gradient, and may hold garbage.
      chunk_size: positions whose logits exist at once, or None for the
        memory budget of :func:`fused_linear_kl_divergence`. Static.
      entropy: also return the per-position entropy H_t (e.g. an entropy bonus
        for RL) from the same pass. Static.
      grad_accumulation: how ``w``'s gradient is summed over chunks:
        ``"float32"`` (default) or ``"param"`` (in ``w``'s dtype), as in
        :func:`fused_linear_kl_divergence`. Static.
      bias: optional bias [V] of the head (x @ w + bias); gets its gradient.
      logit_scale: optional logit scale s, finite and nonzero (a number or a
        scalar array, which may be traced and gets its gradient).
      softcap: optional soft-cap c > 0 (a number or a scalar array, which may
        be traced and gets its gradient; a traced c ≤ 0 gives NaN). The
        logits are c · tanh(s · (x @ w + b) / c), in this order (bias, scale,
        soft-cap, as in Hugging Face's Cohere and Gemma 2), before the
        temperature.

    Returns:
      float32 log-probs of shape ``x.shape[:-1]`` (float64 for float64 inputs),
      or ``(logprobs, entropy)`` with ``entropy=True``.

    Raises:
      ValueError: mismatched shapes (also of ``where``), a non-positive
        ``chunk_size``, a bad temperature, an empty vocabulary, or concrete
        token ids outside [0, V).
      TypeError: floating ``tokens``, integer ``x``/``w``, traced static options.

    Example:
      >>> import jax, jax.numpy as jnp, jaxpenalties as jp
      >>> kx, kw, kt = jax.random.split(jax.random.key(0), 3)
      >>> x, w = jax.random.normal(kx, (2, 5, 8)), jax.random.normal(kw, (8, 50))
      >>> tokens = jax.random.randint(kt, (2, 5), 0, 50)
      >>> lp = jp.fused_linear_token_logprobs(x, w, tokens, chunk_size=4)
      >>> want = jnp.take_along_axis(jax.nn.log_softmax(x @ w), tokens[..., None],
      ...                            -1)[..., 0]
      >>> bool(jnp.allclose(lp, want, atol=1e-5))
      True

    References:
      Shao et al., DeepSeekMath: Pushing the Limits of Mathematical Reasoning
      in Open Language Models (GRPO), 2024. Hsu et al., Liger Kernel: Efficient
      Triton Kernels for LLM Training, 2024.
    """
    x, w = head_checks.check_linear_head(x, w, chunk_size)
    tokens = jnp.asarray(head_checks.check_integer("tokens", tokens))
    if tokens.shape != x.shape[:-1]:
        raise ValueError(
            f"Expected `tokens` to have the position shape {x.shape[:-1]} of `x`, "
            f"got shape {tokens.shape}."
        )
    mask = checks.broadcast_where(where, x.shape[:-1])
    head_checks.check_ids("tokens", tokens, w.shape[1], keep=mask)
    checks.check_bool("entropy", entropy)
    checks.check_option("grad_accumulation", grad_accumulation, chunking.ACCUMULATIONS)
    temperature = divergence_checks.check_temperature(temperature)
    tr = head_transform.check("", bias, logit_scale, softcap, w.shape[1])
    return _impl(
        x,
        w,
        tokens,
        temperature,
        mask,
        tr,
        chunk_size=chunk_size,
        entropy=entropy,
        grad_accumulation=grad_accumulation,
    )
