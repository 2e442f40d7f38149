"""The core shared by :func:`~jaxpenalties.kl_divergence`,
:func:`~jaxpenalties.js_divergence` and :func:`~jaxpenalties.entropy`: the
options every one of them has are validated eagerly (at trace time), then one
jitted function moves the distribution axis last, runs the divergence kernel on
the arrays as given, and reduces over positions.

Called eagerly on concrete inputs that it would use as log-probabilities as
given (no ``from_logits``, no temperature), it first checks that they are:
a kept row whose logsumexp is far from 0 is not a distribution, most likely
raw logits, and the value computed from it would be silently wrong, so it
warns (:class:`NotLogProbabilitiesWarning`). One logsumexp per input, never
under ``jit``, ``grad`` or ``vmap`` (traced inputs are not checked).
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpenalties._core import checks, divergence_checks, kernel, numerics
from jaxpenalties._core.types import Array, ArrayLike
from jaxpenalties._core.types import WithExtremes as _WithExtremes


class NotLogProbabilitiesWarning(UserWarning):
    """Inputs taken as log-probabilities are not normalised: raw logits given
    without ``from_logits=True``."""


#: How far from 0 (in nats) a row's logsumexp may be before its input is
#: taken for raw logits: log-probabilities rounded to bfloat16 (or computed in
#: it) over a 128k vocabulary stay within about 0.03; 8-bit floats are wider
#: (8 · their machine epsilon). Logits of a language model are off by ~log V.
LOGSUMEXP_TOLERANCE = 0.1

# The function and the arguments each kind's inputs come from (forward KL's
# pair is (q, p) under direction="reverse", which a caller can name exactly).
_FUNCTIONS = {
    "forward": "kl_divergence",
    "symmetric": "kl_divergence",
    "js": "js_divergence",
    "entropy": "entropy",
    "tv": "total_variation",
    "alpha": "alpha_divergence",
    "skew": "skew_kl_divergence",
}
_NAMES_SWAPPABLE = (
    "p_logprobs` (`q_logprobs` with direction='reverse')",
    "q_logprobs` (`p_logprobs` with direction='reverse')",
)
_NAMES = {
    "forward": _NAMES_SWAPPABLE,
    "symmetric": ("p_logprobs`", "q_logprobs`"),
    "js": ("p_logprobs`", "q_logprobs`"),
    "entropy": ("logprobs`",),
    "tv": ("p_logprobs`", "q_logprobs`"),
    "alpha": _NAMES_SWAPPABLE,
    "skew": _NAMES_SWAPPABLE,
}


def run(
    kind: str,
    xs: tuple[Array, ...],
    beta: Any,
    temperature: Any,
    where: ArrayLike | None,
    reduction: str,
    axis: int,
    **options: bool,
) -> Array | _WithExtremes:
    """Validates the options every function has, warns where concrete inputs
    used as log-probabilities are not, then runs the jitted core.

    ``options`` are the core's remaining static ones
    (``from_logits``, ``extremes``, and entropy's ``normalize`` and
    ``negate``). Called by the public functions directly (the warning's
    ``stacklevel`` counts on it)."""
    checks.check_option("reduction", reduction, checks.REDUCTIONS)
    if xs[0].shape[axis] == 0:  # a (log-)softmax over no entry: no distribution
        raise ValueError(
            "Expected the log-probabilities (or logits) to have at least one "
            f"entry along the distribution axis (`axis` = {axis}), got shape "
            f"{xs[0].shape}."
        )
    temperature = divergence_checks.check_temperature(temperature)
    checks.check_bool("from_logits", options["from_logits"])
    checks.check_bool("extremes", options["extremes"])
    if not options["from_logits"] and _at_unit_temperature(temperature):
        warn_if_not_logprobs(_FUNCTIONS[kind], _NAMES[kind], xs, where, axis)
    return _impl(
        xs,
        temperature,
        beta,
        where,
        kind=kind,
        reduction=reduction,
        axis=axis,
        **options,
    )


@functools.partial(
    jax.jit,
    static_argnames=(
        "kind",
        "reduction",
        "axis",
        "from_logits",
        "extremes",
        "normalize",
        "negate",
    ),
)
def _impl(
    xs: tuple[Array, ...],
    temperature: ArrayLike | None,
    beta: float | None,
    where: ArrayLike | None,
    *,
    kind: str,
    reduction: str,
    axis: int,
    from_logits: bool,
    extremes: bool,
    normalize: bool = False,
    negate: bool = False,
) -> Array | _WithExtremes:
    """Moves ``axis`` last and runs the kernel on the arrays as given: the
    upcast, the mask and the temperature happen inside its fusions."""
    xs = tuple(jnp.moveaxis(v, axis, -1) for v in xs)
    mask = checks.broadcast_where(where, xs[0].shape[:-1])
    dtype = numerics.compute_dtype(*xs)
    t = None if temperature is None else jnp.asarray(temperature, dtype)
    b_ = None if beta is None else jnp.asarray(beta, dtype)
    b = xs[1] if len(xs) > 1 else None
    values = kernel.divergence(kind, from_logits, xs[0], b, mask, t, b_)
    if normalize:
        values = values / jnp.log(jnp.asarray(xs[0].shape[-1], values.dtype))
    if negate:
        values = -values
    return numerics.reduce_with_extremes(values, reduction, mask, extremes)


def _at_unit_temperature(temperature: Any) -> bool:
    """Whether the inputs are used as given: no temperature (Python 1), or a
    concrete one equal to 1. A traced one cannot be told (no check)."""
    if temperature is None:
        return True
    if isinstance(temperature, jax.core.Tracer):
        return False
    return bool(np.all(np.asarray(temperature) == 1))


def warn_if_not_logprobs(
    function: str,
    labels: tuple[str, ...],
    xs: tuple[Array, ...],
    where: ArrayLike | None,
    axis: int,
    stacklevel: int = 4,
) -> None:
    """Warns, naming the argument, for each concrete input with a kept row
    whose logsumexp is finite and farther than the tolerance from 0
    (``stacklevel``: 4 from :func:`run`, which a public function calls)."""
    if any(isinstance(v, jax.core.Tracer) for v in (*xs, where)):
        return  # under jit, grad or vmap: nothing is known yet
    if not all(x.is_fully_addressable for x in xs):
        return  # spread over processes: no host sees every row
    counts, examples, kept = jax.device_get(_row_check(xs, where, axis=axis))
    for label, count, example in zip(labels, counts, examples, strict=True):
        if count:
            warnings.warn(
                f"{function}: `{label} does not hold log-probabilities: "
                f"{int(count)} of {int(kept)} kept rows have a logsumexp far "
                f"from 0 (|logsumexp| up to {float(example):.4g}): raw logits? "
                "Pass from_logits=True (or normalise with jax.nn.log_softmax): "
                "the value computed from unnormalised rows is wrong.",
                NotLogProbabilitiesWarning,
                stacklevel=stacklevel,
            )


@functools.partial(jax.jit, static_argnames=("axis",))
def _row_check(
    xs: tuple[Array, ...], where: ArrayLike | None, *, axis: int
) -> tuple[Array, Array, Array]:
    """Per input: the number of kept rows whose logsumexp is finite and off
    by more than the tolerance, and the largest |logsumexp| of a kept row;
    and the number of kept rows."""
    positions = xs[0].shape[:axis] + xs[0].shape[axis + 1 :]
    mask = checks.broadcast_where(where, positions)
    counts, examples = [], []
    for x in xs:
        dtype = numerics.compute_dtype(x)
        tol = max(LOGSUMEXP_TOLERANCE, 8 * float(jnp.finfo(x.dtype).eps))
        lse = jax.nn.logsumexp(x.astype(dtype), axis=axis)
        off = jnp.where(jnp.isfinite(lse), jnp.abs(lse), jnp.zeros((), dtype))
        if mask is not None:
            off = jnp.where(mask, off, jnp.zeros((), dtype))
        counts.append(jnp.sum(off > tol))
        examples.append(jnp.max(off, initial=0))
    kept = jnp.sum(mask) if mask is not None else jnp.asarray(math.prod(positions))
    return jnp.stack(counts), jnp.stack(examples), kept
