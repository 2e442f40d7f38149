""":class:`Penalty`: one regularisation term, validated when it is made.

Which function, on which inputs (named entries of the params, the batch or the
loss's outputs), with which weight (a number or a schedule of the step), under
which name in the metrics. :func:`jaxpenalties.regularize` composes them.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jaxpenalties._core import checks


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

        weight = checks.check_weight("weight", weight, fixed=True)

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
