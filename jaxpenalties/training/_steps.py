"""The steps of one call of a regularised loss (see :func:`~jaxpenalties.regularize`).

``regularize`` validates its arguments once and freezes them in a
:class:`Config`; the function it returns hands every call to :func:`call`,
which runs the steps below in order: resolve the weights, evaluate the loss,
evaluate each term on its (gated) inputs, weigh it, and assemble the metrics.
They all run while tracing and everything they produce is an array: metrics
stay in-graph and nothing is sent to the host.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxpenalties._core import checks, numerics
from jaxpenalties._core.trees import is_float_array
from jaxpenalties.training._penalty import Penalty

#: Keys of a term's entry in ``aux["penalties"]`` that ``regularize`` fills in.
RESERVED_METRICS = ("value", "weight", "contribution", "grad_norm")


class Config(NamedTuple):
    """What ``regularize`` fixed at construction (Python values, static under jit)."""

    loss_fn: Callable[..., Any]
    penalties: tuple[Penalty, ...]
    track_grad_norms: bool
    return_outputs: bool


def call(
    config: Config,
    params: Any,
    batch: Any,
    args: tuple[Any, ...],
    step: Any,
    weights: Any,
) -> tuple[jax.Array, dict[str, Any]]:
    """``(total, aux)`` of one call: the body of the function ``regularize`` returns."""
    ws = weights_at(config.penalties, step, weights)
    loss, outputs = split_loss(config.loss_fn(params, batch, *args))
    terms = [
        term_value(spec, w, params, batch, outputs)
        for spec, w in zip(config.penalties, ws, strict=True)
    ]
    dtype = numerics.compute_dtype(loss, *(value for value, _ in terms))
    report = {
        spec.name: term_entry(w, value, metrics, dtype)
        for spec, w, (value, metrics) in zip(config.penalties, ws, terms, strict=True)
    }
    total = sum((e["contribution"] for e in report.values()), loss.astype(dtype))
    if config.track_grad_norms:
        for spec, w in zip(config.penalties, ws, strict=True):
            norm = term_grad_norm(config, spec, w, params, batch, args, dtype)
            report[spec.name]["grad_norm"] = numerics.weighted(w, norm, dtype)
    aux = {"loss": loss, "penalties": report}
    if config.return_outputs:
        aux["outputs"] = outputs
    return total, aux


# ----------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------


def weights_at(
    penalties: Sequence[Penalty], step: Any, overrides: Any
) -> list[jax.Array]:
    """Every term's weight at ``step`` as a 0-d array (``weights=`` overrides first)."""
    names = [spec.name for spec in penalties]
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, Mapping):
        raise TypeError(
            "Expected `weights` to be a dict name -> weight, got "
            f"{type(overrides).__name__}."
        )
    unknown = sorted(set(overrides) - set(names), key=str)
    if unknown:
        raise KeyError(
            f"Unknown penalty names in `weights`: {unknown}; known names are {names}."
        )
    return [weight_of(spec, step, overrides) for spec in penalties]


def weight_of(spec: Penalty, step: Any, overrides: Mapping[str, Any]) -> jax.Array:
    """A term's weight: its override, else its schedule at ``step``, else its number."""
    if spec.name in overrides:
        # Concrete values (numbers, concrete arrays) are checked: finite and
        # >= 0. Traced ones are used as they are.
        w = checks.check_scalar(
            f"weights[{spec.name!r}]", overrides[spec.name], low=0.0
        )
    elif callable(spec.weight):
        w = spec.weight(jnp.asarray(step))
    else:
        w = spec.weight
    return as_scalar(w, f"Expected the weight of penalty {spec.name!r} to be a scalar")


def term_entry(
    w: jax.Array, value: jax.Array, metrics: Mapping[str, Any], dtype: Any
) -> dict[str, Any]:
    """A term's ``aux["penalties"]`` entry: value, weight, contribution, metrics."""
    return {
        "value": value,
        "weight": w.astype(dtype),
        "contribution": numerics.weighted(w, value, dtype),
        **metrics,
    }


# ----------------------------------------------------------------------------
# The loss and the terms
# ----------------------------------------------------------------------------


def as_scalar(x: Any, expected: str, hint: str = "") -> jax.Array:
    """``x`` as a 0-d array; else ``ValueError("{expected}, got shape ….{hint}")``."""
    x = jnp.asarray(x)
    if x.ndim != 0:
        raise ValueError(f"{expected}, got shape {x.shape}.{hint}")
    return x


def as_pair(out: Any) -> tuple[Any, Any] | None:
    """``out`` if a pair, ``(out, {})`` if not a tuple, None for other tuples."""
    if not isinstance(out, tuple):
        return out, {}
    return out if len(out) == 2 else None


def split_loss(out: Any) -> tuple[jax.Array, Mapping[str, Any]]:
    """``loss_fn``'s ``loss`` or ``(loss, outputs)`` as a 0-d loss and a dict."""
    pair = as_pair(out)
    if pair is None:
        raise TypeError(
            "Expected `loss_fn` to return `loss` or `(loss, outputs)`, got a "
            f"tuple of length {len(out)}."
        )
    loss, outputs = pair
    outputs = {} if outputs is None else outputs
    if not isinstance(outputs, Mapping):
        raise TypeError(
            "Expected the `outputs` returned by `loss_fn` to be a dict of "
            f"named arrays, got {type(outputs).__name__}."
        )
    return as_scalar(loss, "Expected `loss_fn` to return a scalar loss"), outputs


def split_result(result: Any, penalty: str) -> tuple[jax.Array, dict[str, Any]]:
    """A penalty's ``value`` or ``(value, metrics)`` as a 0-d value and metrics."""
    pair = as_pair(result)
    if pair is None or not isinstance(pair[1], Mapping):
        raise TypeError(
            f"Penalty {penalty!r}: expected `fn` to return a scalar or "
            "`(scalar, metrics_dict)`, got a tuple that is not of that form."
        )
    value, metrics = pair
    value = as_scalar(
        value,
        f"Penalty {penalty!r}: expected `fn` to return a scalar",
        " Reduce it (e.g. kwargs={'reduction': 'mean'}).",
    )
    checked = {}
    for key, metric in metrics.items():
        if key in RESERVED_METRICS:
            raise ValueError(
                f"Penalty {penalty!r}: metric name {key!r} is reserved; "
                f"{RESERVED_METRICS} are filled in by `regularize`."
            )
        try:
            checked[key] = jnp.asarray(metric)
        except TypeError as err:
            raise TypeError(
                f"Penalty {penalty!r}: metric {key!r} must be an array or number "
                f"(metrics stay in-graph), got {metric!r}."
            ) from err
    return value, checked


class MissingInputError(KeyError):
    """A penalty input name found nowhere; str() is the plain message."""

    def __str__(self) -> str:
        return str(self.args[0])


def resolve(
    entry: Any,
    params: Any,
    batch: Any,
    outputs: Mapping[str, Any],
    penalty: str,
    role: str,
) -> Any:
    """An input by callable, or by name in ``outputs``, ``batch``, then ``"params"``."""
    if callable(entry):
        return entry(params, batch, outputs)
    if entry in outputs:
        return outputs[entry]
    if isinstance(batch, Mapping) and entry in batch:
        return batch[entry]
    if entry == "params":
        return params
    batch_keys = (
        f"batch keys {sorted(map(str, batch))}"
        if isinstance(batch, Mapping)
        else f"no batch keys (batch is a {type(batch).__name__}, not a dict)"
    )
    raise MissingInputError(
        f"Penalty {penalty!r}: {role} {entry!r} not found. Available: outputs keys "
        f"{sorted(map(str, outputs))}, {batch_keys}, and 'params'."
    )


def gate(tree: Any, off: jax.Array) -> Any:
    """Identity in value; drops the cotangent (NaN included) when ``off``.

    ``where(off, stop_gradient(x), x)``: the gradient of a switched-off term is
    exactly 0 even where the term's own gradient is inf or NaN.
    """

    def leaf(x: Any) -> Any:
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.inexact):
            return jnp.where(off, jax.lax.stop_gradient(x), x)
        return x

    return jax.tree.map(leaf, tree)


def term_value(
    spec: Penalty, w: jax.Array, params: Any, batch: Any, outputs: Mapping[str, Any]
) -> tuple[jax.Array, dict[str, Any]]:
    """One term's ``(value, metrics)`` on its resolved inputs, gated by ``w == 0``."""
    off = w == 0
    inputs = [
        gate(resolve(e, params, batch, outputs, spec.name, "input"), off)
        for e in spec.inputs
    ]
    kwargs = dict(spec.kwargs)
    if spec.where is not None:
        kwargs["where"] = resolve(
            spec.where, params, batch, outputs, spec.name, "where"
        )
    return split_result(spec.fn(*inputs, **kwargs), spec.name)


# ----------------------------------------------------------------------------
# Gradient norms
# ----------------------------------------------------------------------------


def term_grad_norm(
    config: Config,
    spec: Penalty,
    w: jax.Array,
    params: Any,
    batch: Any,
    args: tuple[Any, ...],
    dtype: Any,
) -> jax.Array:
    """‖∇_params valueₖ‖₂ of one term, by its own backward pass."""

    def value(p: Any) -> jax.Array:
        _, outputs = split_loss(config.loss_fn(p, batch, *args))
        return term_value(spec, w, p, batch, outputs)[0].astype(dtype)

    return grad_norm(value, params, dtype)


def grad_norm(fn: Callable[[Any], jax.Array], params: Any, dtype: Any) -> jax.Array:
    """‖∇ fn(params)‖₂ over the floating array leaves of ``params``, as a metric.

    Other leaves (such as the activation functions of an equinox module) are
    held fixed, and no gradient flows through the result.

    One backward pass per term, so a NaN in one term's gradient never reaches
    another term's norm (a shared pass with zero cotangents would give 0 · NaN).
    """
    leaves, treedef = jax.tree.flatten(params)
    idx = [i for i, x in enumerate(leaves) if is_float_array(x)]

    def of(diff: list[jax.Array]) -> jax.Array:
        full = list(leaves)
        for i, d in zip(idx, diff, strict=True):
            full[i] = d
        return fn(jax.tree.unflatten(treedef, full))

    grads = jax.grad(of)([leaves[i] for i in idx])
    grads = jax.lax.stop_gradient(grads)
    return optax.tree.norm([g.astype(dtype) for g in grads]).astype(dtype)
