"""Composing penalties into a training loss.

:class:`Penalty` is a frozen, validated description of one regularisation term
(which function, on which inputs, with which weight). :func:`regularize` turns a
task loss and a list of penalties into one pure function
``f(params, batch, *args, step=0, weights=None) -> (total, aux)`` that goes
straight into ``jax.value_and_grad(f, has_aux=True)`` and a jitted train step.

Everything happens in-graph: weights (constants, schedules on ``step`` and
per-call overrides) enter as traced arrays, so changing them never recompiles;
metrics stay arrays; nothing is sent to the host.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from jaxpenalties import _regularize_steps as steps
from jaxpenalties import _utils as u


def _callable_name(fn: Callable) -> str:
    """``fn.__name__``, looking through ``functools.partial`` wrappers."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__name__


@dataclasses.dataclass(frozen=True, eq=False, init=False)
class Penalty:
    r"""One regularisation term of a training loss: ``weight · fn(*inputs)``.

    A frozen spec, validated when it is built. :func:`regularize` resolves its
    inputs at call time and adds ``weight · value`` to the loss.

    Args:
      fn: the penalty, called as ``fn(*inputs, **kwargs)`` (plus ``where=`` when
        ``where`` is given). It returns a scalar, or ``(scalar, metrics)`` where
        ``metrics`` is a dict of arrays reported in ``aux``.
      inputs: a tuple; each entry is a **name** or a **callable**. A name is
        looked up in the loss function's ``outputs``, then in ``batch`` (a
        dict); ``"params"`` names the params pytree. A callable
        ``f(params, batch, outputs) -> array`` computes the input on demand
        (e.g. a frozen reference model's log-probabilities).
      weight: a number >= 0, or a schedule (a callable ``step -> weight``, e.g.
        any optax schedule). 0 switches the term off.
      name: unique name of the term in ``aux`` and in ``weights=`` overrides.
        Defaults to ``fn.__name__`` (of the wrapped function for a
        ``functools.partial``).
      kwargs: keyword arguments passed to ``fn`` (e.g. ``{"reduction": "sum"}``).
      where: a name or callable resolved like ``inputs`` and passed to ``fn``
        as ``where=``.

    Raises:
      TypeError: ``fn`` not callable, ``inputs`` not a tuple of names and
        callables, ``weight`` neither a number nor a callable, bad ``name``,
        ``kwargs`` or ``where`` types.
      ValueError: empty ``inputs``, negative or non-finite ``weight``, ``where``
        given both as field and in ``kwargs``.

    Example:
      >>> import functools, jaxpenalties as jp
      >>> kl = jp.Penalty(
      ...     functools.partial(jp.kl_divergence, direction="reverse"),
      ...     inputs=("logprobs", "ref_logprobs"),
      ...     weight=0.1,
      ... )
      >>> kl.name
      'kl_divergence'
    """

    fn: Callable[..., Any]
    inputs: tuple[str | Callable[..., Any], ...]
    weight: float | Callable[[Any], Any]
    name: str
    kwargs: Mapping[str, Any]
    where: str | Callable[..., Any] | None

    # An explicit __init__: ``name`` and ``kwargs`` default to None and are
    # always filled in, so the fields hold their final types.
    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        inputs: Sequence[str | Callable[..., Any]],
        weight: float | Callable[[Any], Any] = 1.0,
        name: str | None = None,
        kwargs: Mapping[str, Any] | None = None,
        where: str | Callable[..., Any] | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"Expected `fn` to be callable, got {fn!r}.")
        if isinstance(inputs, str):
            raise TypeError(
                f"Expected `inputs` to be a tuple of names (str) or callables, got "
                f"the string {inputs!r}; write `inputs=({inputs!r},)`."
            )
        if not isinstance(inputs, (tuple, list)):
            raise TypeError(
                "Expected `inputs` to be a tuple of names (str) or callables, got "
                f"{type(inputs).__name__}."
            )
        for i, entry in enumerate(inputs):
            if not (isinstance(entry, str) or callable(entry)):
                raise TypeError(
                    f"Expected every entry of `inputs` to be a name (str) or a "
                    f"callable f(params, batch, outputs), got {entry!r} at "
                    f"position {i}."
                )
        if not inputs:
            raise ValueError("Expected `inputs` to name at least one input, got ().")

        weight = u.check_weight("weight", weight, fixed=True)

        name = name if name is not None else _callable_name(fn)
        if not isinstance(name, str) or not name:
            raise TypeError(f"Expected `name` to be a non-empty str, got {name!r}.")

        kwargs = {} if kwargs is None else kwargs
        if not isinstance(kwargs, Mapping) or not all(
            isinstance(k, str) for k in kwargs
        ):
            raise TypeError(
                f"Expected `kwargs` to be a dict with str keys, got {kwargs!r}."
            )
        if "where" in kwargs and where is not None:
            raise ValueError(
                "Got `where` both as a field and in `kwargs`; give it once."
            )

        if not (where is None or isinstance(where, str) or callable(where)):
            raise TypeError(
                "Expected `where` to be None, a name (str) or a callable "
                f"f(params, batch, outputs), got {where!r}."
            )
        frozen = {
            "fn": fn,
            "inputs": tuple(inputs),
            "weight": weight,
            "name": name,
            "kwargs": types.MappingProxyType(dict(kwargs)),
            "where": where,
        }
        for field, value in frozen.items():
            object.__setattr__(self, field, value)


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
    u.check_bool("track_grad_norms", track_grad_norms)
    u.check_bool("return_outputs", return_outputs)
    config = steps.Config(loss_fn, specs, track_grad_norms, return_outputs)

    def regularized(
        params: Any, batch: Any, *args: Any, step: Any = 0, weights: Any = None
    ) -> tuple[jax.Array, dict[str, Any]]:
        return steps.call(config, params, batch, args, step, weights)

    # What ``inspect.signature`` reads (typeshed's function type has no
    # ``__signature__`` attribute, so it is set through ``__dict__``).
    regularized.__dict__["__signature__"] = _SIGNATURE
    return regularized
