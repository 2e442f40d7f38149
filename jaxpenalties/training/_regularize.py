"""Composing penalties into a training loss.

:class:`Penalty` (:mod:`._penalty`) is a frozen, validated description of one
regularisation term (which function, on which inputs, with which weight).
:func:`regularize` turns a task loss and a list of penalties into one pure
function
``f(params, batch, *args, step=0, weights=None) -> (total, aux)`` that goes
straight into ``jax.value_and_grad(f, has_aux=True)`` and a jitted train step.

Everything happens in-graph: weights (constants, schedules on ``step`` and
per-call overrides) enter as traced arrays, so changing them never recompiles;
metrics stay arrays; nothing is sent to the host.

The steps of the call live in :mod:`._steps`, each a module-level function.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import jax

from jaxpenalties._core import checks
from jaxpenalties.training import _steps as steps
from jaxpenalties.training._penalty import Penalty


def _check_penalties(penalties: Any) -> tuple[Penalty, ...]:
    """``penalties`` as a tuple of :class:`Penalty` with unique names."""
    if isinstance(penalties, Penalty):
        raise TypeError(
            "Expected `penalties` to be a sequence of Penalty, got a single "
            "Penalty; write `[penalty]`."
        )
    if not isinstance(penalties, Sequence):
        raise TypeError(
            "Expected `penalties` to be a sequence (list or tuple) of Penalty, got "
            f"{type(penalties).__name__}."
        )
    specs = tuple(penalties)
    for i, spec in enumerate(specs):
        if not isinstance(spec, Penalty):
            raise TypeError(
                f"Expected every entry of `penalties` to be a jp.Penalty, got "
                f"{spec!r} at position {i}."
            )
    names = [spec.name for spec in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"Expected unique penalty names, got duplicates {duplicates}; give "
            "each Penalty its own `name=`."
        )
    return specs


# Advertised as (params, batch, *args, **kwargs): flax.nnx transforms bind the
# signature and reject keyword-only parameters with defaults.
_SIGNATURE = inspect.Signature(
    [
        inspect.Parameter("params", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("batch", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("args", inspect.Parameter.VAR_POSITIONAL),
        inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD),
    ]
)


def regularize(
    loss_fn: Callable[..., Any],
    penalties: Sequence[Penalty],
    *,
    track_grad_norms: bool = False,
    return_outputs: bool = False,
) -> Callable[..., tuple[jax.Array, dict[str, Any]]]:
    r"""Adds weighted penalties to a loss: ``total = loss + Σₖ wₖ · valueₖ``.

    ``loss_fn(params, batch, *args)`` returns ``loss`` or ``(loss, outputs)``
    with ``outputs`` a dict of named arrays (logits, log-probs, activations).
    Each :class:`Penalty` takes its inputs from ``outputs``, ``batch``,
    ``"params"`` or a callable ``f(params, batch, outputs)``, so a KL reference
    can be an array in the batch, a named output, or computed on demand by a
    frozen base model; the whole batch is used.

    The returned ``f(params, batch, *args, step=0, weights=None)`` gives
    ``(total, aux)`` and works in ``jax.value_and_grad(f, has_aux=True)`` and
    under ``jax.jit``:

    - ``wₖ`` is the penalty's number, or its schedule evaluated at ``step``,
      or ``weights[name]`` when given. They enter the graph as arrays, so
      changing ``step`` or the values in ``weights`` never recompiles (keep the
      same keys in ``weights`` from call to call).
    - A weight of 0 switches a term off: its contribution and its gradient are
      exactly 0, even where its value is inf or NaN. Its value is still
      computed and reported (monitoring during a warm-up at weight 0).
    - ``aux = {"loss", "penalties": {name: {"value", "weight",
      "contribution", **metrics}}}``, all arrays, plus ``"outputs"`` (the loss
      function's outputs dict) with ``return_outputs=True``: they can be
      [B, T, V] arrays that a jitted step would otherwise copy out. With
      ``track_grad_norms=True`` each entry also has ``"grad_norm"``,
      ‖∇_params (wₖ · valueₖ)‖₂ over all leaves, computed with one backward
      pass per penalty from a shared forward pass, outside the gradient of
      ``total`` (which stays exact).

    Args:
      loss_fn: the task loss, ``loss_fn(params, batch, *args)``.
      penalties: a sequence of :class:`Penalty` with unique names.
      track_grad_norms: also report each term's gradient norm (costs one extra
        backward pass per penalty).
      return_outputs: also put the loss function's outputs in ``aux``.

    Returns:
      ``f(params, batch, *args, step=0, weights=None) -> (total, aux)``. The
      total is float32 (float64 for float64 losses).

    Raises:
      TypeError or ValueError: at construction, for a non-callable ``loss_fn``,
        entries that are not :class:`Penalty`, or duplicate names. When called,
        a missing input names itself and lists the available outputs keys,
        batch keys and ``"params"``; an unknown name in ``weights`` raises
        ``KeyError``; a non-scalar loss or penalty value raises ``ValueError``.

    Example:
      >>> import jax, jax.numpy as jnp, jaxpenalties as jp
      >>> def loss_fn(params, batch):
      ...     logprobs = jax.nn.log_softmax(batch["x"] @ params["w"])
      ...     nll = -jnp.mean(logprobs[:, 0])
      ...     return nll, {"logprobs": logprobs}
      >>> ent = jp.Penalty(jp.entropy, inputs=("logprobs",), weight=0.5,
      ...                  kwargs={"mode": "penalty"})
      >>> f = jax.jit(jp.regularize(loss_fn, [ent]))
      >>> params, batch = {"w": jnp.zeros((3, 2))}, {"x": jnp.ones((4, 3))}
      >>> total, aux = f(params, batch)  # log 2 + 0.5 · log 2
      >>> print(f"{total:.4f} {aux['penalties']['entropy']['value']:.4f}")
      1.0397 0.6931
      >>> total, _ = f(params, batch, weights={"entropy": 0.0})  # off
      >>> print(f"{total:.4f}")
      0.6931
    """
    if not callable(loss_fn):
        raise TypeError(f"Expected `loss_fn` to be callable, got {loss_fn!r}.")
    specs = _check_penalties(penalties)
    checks.check_bool("track_grad_norms", track_grad_norms)
    checks.check_bool("return_outputs", return_outputs)
    config = steps.Config(loss_fn, specs, track_grad_norms, return_outputs)

    def regularized(
        params: Any, batch: Any, *args: Any, step: Any = 0, weights: Any = None
    ) -> tuple[jax.Array, dict[str, Any]]:
        return steps.call(config, params, batch, args, step, weights)

    # What ``inspect.signature`` reads (typeshed's function type has no
    # ``__signature__`` attribute, so it is set through ``__dict__``).
    regularized.__dict__["__signature__"] = _SIGNATURE
    return regularized
