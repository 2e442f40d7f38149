"""Private: a head's bias, logit scale and soft-cap, applied to a chunk's logits.

Real heads are not always plain ``x @ W``: some add a bias, Cohere-style models
scale the logits (``logit_scale``), Gemma 2 soft-caps them
(``final_logit_softcapping``). The fused paths form each chunk's raw logits
x @ W and map them here to the model's logits, in the order of those models,

    z = c · tanh(s · (x @ W + b) / c)      (bias, then scale, then soft-cap),

before any temperature. :func:`forward` also gives the pull-back of the logit
cotangent: dz_raw = dz · s · (1 − tanh²(s · (x @ W + b) / c)), the bias
gradient Σ_rows dz_raw, and the gradients of a scale and soft-cap as row
sums, so the backward matmuls (dx = dz_raw · Wᵀ, dW += xᵀ · dz_raw) take
dz_raw. A head with none of them is ``None`` and adds no operation at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpenalties._core import checks, normalisation
from jaxpenalties._core.types import Array


class Transform(NamedTuple):
    """A head's bias [V], logit scale and soft-cap (scalars); None where
    absent. A pytree: the arrays are differentiable inputs of the scans."""

    bias: Any = None
    scale: Any = None
    cap: Any = None


def check(
    prefix: str, bias: Any, logit_scale: Any, softcap: Any, vocab: int
) -> Transform | None:
    """Validates one head's options (``prefix`` "" or "ref_" names them) for
    a vocabulary of ``vocab`` entries; None when none is given."""
    if bias is None and logit_scale is None and softcap is None:
        return None
    if bias is not None:
        bias = checks.check_floating(f"{prefix}bias", bias)
        if bias.shape != (vocab,):
            raise ValueError(
                f"Expected `{prefix}bias` to have shape [V] = ({vocab},), the "
                f"vocabulary of `{prefix}w`, got shape {bias.shape}."
            )
    if logit_scale is not None:
        name = f"{prefix}logit_scale"
        logit_scale = checks.check_scalar(name, logit_scale)
        if not isinstance(logit_scale, jax.core.Tracer) and float(logit_scale) == 0:
            raise ValueError(
                f"Expected `{name}` to be a finite nonzero number, got 0.0."
            )
        logit_scale = _dynamic(logit_scale)
    if softcap is not None:
        name = f"{prefix}softcap"
        softcap = _dynamic(checks.check_scalar(name, softcap, low=0.0, open_low=True))
    return Transform(bias, logit_scale, softcap)


def _dynamic(value: Any) -> Any:
    """A checked Python number as a strongly typed scalar in the default float
    width (Python floats and float32 arrays share one compiled version)."""
    if isinstance(value, float):
        return np.asarray(value, jax.dtypes.canonicalize_dtype(np.float64))
    return value


def prepare(tr: Transform | None, dtype: Any) -> Transform | None:
    """The transform in the compute dtype (a bf16 bias is upcast once, so its
    gradient is summed over chunks in float32 and cast back by autodiff)."""
    if tr is None:
        return None
    return Transform(*(None if a is None else jnp.asarray(a).astype(dtype) for a in tr))


def apply(tr: Transform | None, z: Array) -> Array:
    """A chunk's model logits c · tanh(s · (z + b) / c) from its raw logits z
    [C, V]. A soft-cap ≤ 0 (only possible traced) gives NaN."""
    if tr is None:
        return z
    if tr.bias is not None:
        z = z + tr.bias[None, :]
    if tr.scale is not None:
        z = z * tr.scale
    if tr.cap is not None:
        cap = normalisation.at_least_tiny(tr.cap)
        z = cap * jnp.tanh(z / cap)
    return z


Pullback = Callable[[Array], tuple[Array, Any]]


def forward(tr: Transform | None, z: Array) -> tuple[Array, Pullback]:
    """The model logits of the raw logits z [C, V], and the map from their
    cotangent to (the raw logits' cotangent, the transform's gradients:
    bias [V] and scalars, each summed over the chunk's rows)."""
    if tr is None:
        return z, lambda dz: (dz, None)
    out, vjp = jax.vjp(apply, tr, z)

    def pullback(dz: Array) -> tuple[Array, Any]:
        d_tr, d_z = vjp(dz)
        return d_z, d_tr

    return out, pullback
