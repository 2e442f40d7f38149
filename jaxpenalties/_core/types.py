"""Type aliases shared by the package: option values, numbers, pytrees, schedules.

The ``Literal`` aliases name the valid values of each static string option, so
a type checker catches ``reduction="avg"`` before the code runs. They do not
replace the runtime checks: a caller without a type checker (or with a plain
``str`` variable) still gets the ``ValueError`` that names the argument and the
valid values. The tuples the runtime checks use are ``typing.get_args`` of
these aliases (or are tested against them), so both say the same thing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeAlias, TypedDict

import jax

# --- Arrays and numbers --------------------------------------------------------

Array: TypeAlias = jax.Array
"""A JAX array (also a tracer inside ``jax.jit``, ``jax.grad``, ...)."""

ArrayLike: TypeAlias = jax.typing.ArrayLike
"""Anything ``jnp.asarray`` accepts as one array: a JAX or NumPy array, a NumPy
scalar or a Python number."""

Scalar: TypeAlias = float | int
"""A Python number."""

Numeric: TypeAlias = jax.Array | float | int
"""A Python number or an array (a scalar array where one value is expected),
e.g. a coefficient that may be traced."""

# --- Pytrees -------------------------------------------------------------------

PyTree: TypeAlias = Any
"""Any pytree of arrays (a dict, list, tuple, dataclass ... of arrays, or one
array). ``Any``: the pytree's structure is not something a checker can see."""

Params: TypeAlias = PyTree
"""A model's parameters: a pytree of floating arrays."""

Batch: TypeAlias = Any
"""A training batch as the loss function takes it (a dict for name look-ups)."""

Outputs: TypeAlias = Mapping[str, Any]
"""The named auxiliary outputs of a loss function (logits, activations, ...)."""

# --- Schedules -----------------------------------------------------------------

Schedule: TypeAlias = Callable[[Any], ArrayLike]
"""A function ``step -> value`` (e.g. any optax schedule), evaluated in-graph on
a step given as an array (the count in an optax state, or the ``step`` passed to
a regularised loss), traced under ``jax.jit``."""

ScalarOrSchedule: TypeAlias = ArrayLike | Schedule
"""A weight: a number, a scalar array, or a :data:`Schedule`."""

# --- Static string options -----------------------------------------------------

Reduction: TypeAlias = Literal["mean", "sum", "none"]
"""How a function reduces over positions: mean over kept positions, sum, or
none (per-position values)."""

ParamReduction: TypeAlias = Literal["sum", "mean"]
"""How a penalty reduces over every element of every leaf of a pytree."""

Direction: TypeAlias = Literal["forward", "reverse"]
"""Which KL: ``"forward"`` KL(P‖Q) or ``"reverse"`` KL(Q‖P)."""

EntropyMode: TypeAlias = Literal["bonus", "penalty"]
"""The sign of :func:`jaxpenalties.entropy`: ``"bonus"`` −H, ``"penalty"`` +H."""

Estimator: TypeAlias = Literal["k1", "k2", "k3"]
"""A sampled-token estimator of KL(π‖π_ref) (Schulman, 2020)."""

Tail: TypeAlias = Literal["renormalize", "bucket"]
"""What a top-k (sparse) divergence does with the probability outside the
kept tokens."""

GradAccumulation: TypeAlias = Literal["float32", "param"]
"""How a fused head sums its weight gradient over chunks: in float32 (rounded
once) or in the parameter dtype (rounded at every chunk, no float32 [H, V]
buffer)."""

AggregationMode: TypeAlias = Literal[
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
]
"""How :func:`jaxpenalties.aggregate` reduces per-token values [..., B, T]."""

OrthogonalityMode: TypeAlias = Literal["soft", "hard", "spectral"]
"""Which norm of G − I :func:`jaxpenalties.orthogonality` penalises."""

OrthogonalityAxis: TypeAlias = Literal["rows", "sequence", "vocabulary"]
"""Which rows of a 3-D input :func:`jaxpenalties.orthogonality` constrains."""

ConsistencyMetric: TypeAlias = Literal["mse", "l1", "cosine", "kl"]
"""How :func:`jaxpenalties.consistency` compares paired outputs."""

# --- Keyword options, for the overloads on ``extremes`` ------------------------
# The public functions spell every option out; their ``typing.overload`` stubs
# (one array without ``extremes``, ``(value, metrics)`` with it) take the other
# options as ``**options: Unpack[...]`` of these.

WithExtremes: TypeAlias = tuple[jax.Array, dict[str, jax.Array]]
"""A value and its ``{"max", "min"}`` over kept positions (``extremes=True``)."""


class _PositionOptions(TypedDict, total=False):
    reduction: Reduction
    where: ArrayLike | None


class _DistributionOptions(_PositionOptions, total=False):
    temperature: float | ArrayLike
    axis: int
    from_logits: bool


class KLOptions(_DistributionOptions, total=False):
    """The options of :func:`jaxpenalties.kl_divergence` but ``extremes``."""

    direction: Direction
    symmetric: bool


class JSOptions(_DistributionOptions, total=False):
    """The options of :func:`jaxpenalties.js_divergence` but ``extremes``."""

    beta: float


class EntropyOptions(_DistributionOptions, total=False):
    """The options of :func:`jaxpenalties.entropy` but ``extremes``."""

    mode: EntropyMode
    normalize: bool


class EstimateOptions(_PositionOptions, total=False):
    """The options of :func:`jaxpenalties.kl_estimate` but ``extremes``."""

    estimator: Estimator
    max_log_ratio: float | None
    max_value: float | None
