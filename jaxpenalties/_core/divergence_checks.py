"""Private: the options every divergence shares, checked once.

Temperature, JS β, KL direction (with ``symmetric``) and a pair of
log-probability arrays over one axis: the dense divergences, the top-k ones and
the fused heads all read these options the same way, through these checks
(built on :mod:`.checks`). Every check runs eagerly, at trace time; a traced
value that cannot be checked is passed on as it is.
"""

from __future__ import annotations

import numbers
from typing import Any, get_args

import jax
import numpy as np

from jaxpenalties._core import checks
from jaxpenalties._core.types import Array, Direction, EntropyMode

DIRECTIONS: tuple[str, ...] = get_args(Direction)


ENTROPY_MODES: tuple[str, ...] = get_args(EntropyMode)


def check_temperature(temperature: Any) -> Any:
    """Returns None for a Python temperature of exactly 1 (no re-normalisation).

    A concrete temperature (a number or a concrete array) must be finite and
    > 0; a tiny one is the greedy limit (argmax), never NaN. Any other value
    than the Python 1 (including an array, traced or not) is kept dynamic so
    that changing it never recompiles. A traced T ≤ 0 or non-finite T cannot
    be checked and gives NaN (so may a traced subnormal T on a backend that
    flushes subnormals to 0; a concrete one is raised to the smallest normal).
    """
    temperature = checks.check_scalar(
        "temperature", temperature, low=0.0, open_low=True
    )
    if isinstance(temperature, float):
        if temperature == 1:
            return None
        # A strongly typed scalar in the default float width: Python floats and
        # float32 arrays share one compiled version, and x64 keeps all digits.
        temperature = np.asarray(temperature, np.float64 if _x64() else np.float32)
    if isinstance(temperature, jax.core.Tracer):
        return temperature
    # A concrete subnormal T is raised to the smallest normal number here, on
    # the host: a backend that flushes subnormals would read it as T = 0, which
    # the kernels turn into NaN (the greedy limit is the same either way).
    concrete = np.asarray(temperature)
    return np.maximum(concrete, np.finfo(concrete.dtype).tiny).astype(concrete.dtype)


def _x64() -> bool:
    """Whether float64 is enabled here (also inside ``jax.enable_x64``)."""
    return jax.dtypes.canonicalize_dtype(np.float64) == np.float64


def check_beta(beta: Any) -> float:
    """The JS mixture weight: a static Python number in the open interval (0, 1),
    returned as a ``float`` (an array, traced or not, is refused)."""
    checks.check_static("beta", beta)
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
        raise ValueError(f"Expected `beta` to be a Python float, got {beta!r}.")
    if not 0.0 < float(beta) < 1.0:
        raise ValueError(
            f"Expected `beta` to be in the open interval (0, 1), got {beta!r}. "
            "At the ends JS_beta is identically 0; use `kl_divergence` for those "
            "limits."
        )
    return float(beta)


def check_kl_direction(direction: Any, symmetric: Any) -> tuple[str, bool]:
    """Validates KL's ``direction`` and ``symmetric``; returns the kernel's kind
    ("forward" or "symmetric") and whether to swap P and Q (reverse KL)."""
    checks.check_option("direction", direction, DIRECTIONS)
    checks.check_bool("symmetric", symmetric)
    if symmetric:
        return "symmetric", False
    return "forward", direction == "reverse"


def check_pair(
    p: Any, q: Any, axis: Any, names: tuple[str, str] = ("p_logprobs", "q_logprobs")
) -> tuple[Array, Array, int]:
    """Validates a pair of log-prob arrays; returns them and the positive axis."""
    p = checks.check_floating(names[0], p)
    q = checks.check_floating(names[1], q)
    checks.check_same_shape(names[0], p, names[1], q)
    axis = checks.normalize_axis(axis, p.ndim)
    return p, q, axis


def check_unit(name: str, value: Any) -> Any:
    """A parameter in the closed interval [0, 1] (α, skew λ): a number or a
    scalar array, which may be traced (a traced value outside [0, 1] gives
    NaN in the kernel); changing it never recompiles."""
    return checks.check_scalar(name, value, low=0.0, high=1.0)


def check_direction(direction: Any) -> bool:
    """Validates ``direction``; returns whether to swap P and Q."""
    checks.check_option("direction", direction, DIRECTIONS)
    return bool(direction == "reverse")


def check_top_k(top_k: Any) -> int | None:
    """None, or a static positive Python int (ULD's truncation)."""
    if top_k is None:
        return None
    checks.check_static("top_k", top_k)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(
            f"Expected `top_k` to be None or a positive Python int, got {top_k!r}."
        )
    return top_k
