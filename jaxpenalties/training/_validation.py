"""NaN/Inf validation of arrays and pytrees, eagerly and under ``jax.jit``."""

from __future__ import annotations

from typing import TypeVar

import jax.numpy as jnp
from jax.experimental import checkify

from jaxpenalties._core import checks, trees

_Tree = TypeVar("_Tree")  # any pytree; returned unchanged


def _escape(text: str) -> str:
    """Escapes braces: checkify formats its message with ``str.format``."""
    return text.replace("{", "{{").replace("}", "}}")


def check_finite(tree: _Tree, name: str = "value") -> _Tree:
    """Raises if any leaf of ``tree`` holds a NaN or an Inf; returns ``tree``.

    The report names ``name``, the leaf's path inside ``tree`` (e.g.
    ``params['w']``), whether it was NaN or Inf, and how many elements.
    Integer, boolean and non-numeric leaves cannot be NaN or Inf and are
    skipped.

    * **Eagerly** (concrete values, also inside eager ``jax.grad`` /
      ``jax.vmap``) it raises ``checkify.JaxRuntimeError`` (a ``ValueError``)
      right away.
    * **Under** ``jax.jit`` (or ``scan``, ...) it uses
      ``jax.experimental.checkify.check``: functionalise the jitted function
      with ``checkify.checkify`` and throw the returned error::

          err, out = checkify.checkify(jax.jit(step))(params, batch)
          err.throw()  # raises checkify.JaxRuntimeError with the same message

      Staging it without ``checkify.checkify`` makes JAX raise a
      ``ValueError`` ("... a `check` without functionalizing it through
      `checkify.checkify`") when the function is traced: never a silent no-op.

    Args:
      tree: an array or a pytree of arrays.
      name: what the value is called in the report. A Python string.

    Returns:
      ``tree`` unchanged, so it can be used inline: ``x = check_finite(x)``.

    Raises:
      checkify.JaxRuntimeError: eagerly, on the first NaN or Inf leaf.
      ValueError: when staged under ``jax.jit`` without ``checkify.checkify``.
      TypeError: when ``name`` is not a string.

    Example:
      >>> import jax, jax.numpy as jnp, jaxpenalties as jp
      >>> from jax.experimental import checkify
      >>> params = {"w": jnp.array([1.0, jnp.inf])}
      >>> jp.check_finite(params, "params")
      Traceback (most recent call last):
        ...
      jax...JaxRuntimeError: params['w'] contains Inf (1 of 2 elements)...
      >>> err, _ = checkify.checkify(jax.jit(jp.check_finite))(jnp.array([jnp.nan]))
      >>> print(err.get().splitlines()[0])
      value contains NaN (1 of 1 elements) (`check` failed)
    """
    checks.check_static("name", name)
    if not isinstance(name, str):
        raise TypeError(f"Expected `name` to be a str, got {name!r}.")
    for path, leaf in trees.named_leaves(tree, name):
        if not hasattr(leaf, "dtype") and not isinstance(leaf, (int, float, complex)):
            continue  # not numeric (e.g. a string leaf): cannot be NaN or Inf
        leaf = jnp.asarray(leaf)
        if not jnp.issubdtype(leaf.dtype, jnp.inexact):
            continue
        where = _escape(path)
        for kind, test in (("NaN", jnp.isnan), ("Inf", jnp.isinf)):
            count = jnp.sum(test(leaf))
            message = f"{where} contains {kind} ({{}} of {leaf.size} elements)"
            checkify.check(count == 0, message, count)
    return tree
