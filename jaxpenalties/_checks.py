"""Private: the input checks of the divergence family.

The options shared by the divergences over a distribution axis, the top-k
(sparse) ones and the linear-head (fused) ones, and the checks of their array
inputs, built on the generic validators of :mod:`jaxpenalties._utils`. Every
check runs eagerly, at trace time; a traced value that cannot be checked is
passed on as it is.
"""

from __future__ import annotations

import numbers
from typing import Any, get_args

import jax
import jax.numpy as jnp
import numpy as np

from jaxpenalties import _utils as u
from jaxpenalties._types import Array, Direction, EntropyMode, Tail

DIRECTIONS: tuple[str, ...] = get_args(Direction)
ENTROPY_MODES: tuple[str, ...] = get_args(EntropyMode)
TAILS: tuple[str, ...] = get_args(Tail)


def check_temperature(temperature: Any) -> Any:
    """Returns None for a Python temperature of exactly 1 (no re-normalisation).

    A concrete temperature (a number or a concrete array) must be finite and
    > 0; a tiny one is the greedy limit (argmax), never NaN. Any other value
    than the Python 1 (including an array, traced or not) is kept dynamic so
    that changing it never recompiles. A traced T ≤ 0 or non-finite T cannot
    be checked and gives NaN (so may a traced subnormal T on a backend that
    flushes subnormals to 0; a concrete one is raised to the smallest normal).
    """
    temperature = u.check_scalar("temperature", temperature, low=0.0, open_low=True)
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
    u.check_static("beta", beta)
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
    u.check_option("direction", direction, DIRECTIONS)
    u.check_bool("symmetric", symmetric)
    if symmetric:
        return "symmetric", False
    return "forward", direction == "reverse"


def check_linear_head(x: Any, w: Any, chunk_size: Any) -> tuple[Array, Array]:
    """Validates hidden states ``x`` [..., H], a kernel ``w`` [H, V] and the
    chunk size of a chunked linear head; returns ``x`` and ``w`` as arrays."""
    x = u.check_floating("x", x)
    w = u.check_floating("w", w)
    if w.ndim != 2 or x.ndim == 0 or x.shape[-1] != w.shape[0]:
        raise ValueError(
            "Expected `x` [..., H] and a 2-D kernel `w` [H, V], got shapes "
            f"{x.shape} and {w.shape}."
        )
    _check_vocabulary("w", w)
    check_chunk_size(chunk_size)
    return x, w


def _check_vocabulary(name: str, kernel: Array) -> None:
    """A head kernel [H, V] needs V ≥ 1: a softmax over no entry is no
    distribution."""
    if kernel.shape[1] == 0:
        raise ValueError(
            f"Expected `{name}` [H, V] to have a vocabulary of at least one "
            f"entry, got shape {kernel.shape}."
        )


def check_chunk_size(chunk_size: Any) -> None:
    """None (the memory budget's default) or a positive Python int."""
    if chunk_size is not None:
        u.check_int("chunk_size", chunk_size, minimum=1)


def check_integer(name: str, a: Any) -> Any:
    """Returns ``a`` as an array (a NumPy or JAX array as given), raising
    ``TypeError`` naming ``name`` unless it is one of an integer dtype (also
    for None, a dict or a ragged list)."""
    if not isinstance(a, (jax.Array, np.ndarray)):
        a = u.as_array(name, a, "an integer array")
    if not jnp.issubdtype(a.dtype, jnp.integer):
        raise TypeError(
            f"Expected `{name}` to be an integer array, got dtype {a.dtype}."
        )
    return a


def check_pair(
    p: Any, q: Any, axis: Any, names: tuple[str, str] = ("p_logprobs", "q_logprobs")
) -> tuple[Array, Array, int]:
    """Validates a pair of log-prob arrays; returns them and the positive axis."""
    p = u.check_floating(names[0], p)
    q = u.check_floating(names[1], q)
    u.check_same_shape(names[0], p, names[1], q)
    axis = u.normalize_axis(axis, p.ndim)
    return p, q, axis


def check_ids(
    name: str, ids: Any, size: int, *, keep: Any = None, allowed: str = ""
) -> None:
    """Raises ``ValueError`` if concrete integer ``ids`` fall outside [0,
    ``size``) where ``keep`` (a concrete mask broadcastable to ``ids``, or None)
    holds. Traced ids or masks cannot be checked at trace time: nothing is done.
    ``allowed`` names other accepted values for the message."""
    if isinstance(ids, jax.core.Tracer) or isinstance(keep, jax.core.Tracer):
        return
    values = np.asarray(ids)
    bad = (values < 0) | (values >= size)
    if keep is not None:
        bad = bad & np.broadcast_to(np.asarray(keep) != 0, bad.shape)
    if bad.any():
        raise ValueError(
            f"Expected `{name}` in [0, {size}){allowed}, got "
            f"{values[bad].ravel()[:5].tolist()}."
        )


def check_heads(
    x: Any, w: Any, ref_x: Any, ref_w: Any, chunk_size: Any
) -> tuple[Array, Array, Array, Array]:
    """Validates the hidden states [..., H] and kernels [H, V] of both heads
    of a fused divergence and the chunk size; returns the four arrays."""
    x = u.check_floating("x", x)
    w = u.check_floating("w", w)
    ref_x = u.check_floating("ref_x", ref_x)
    ref_w = u.check_floating("ref_w", ref_w)
    for name, kernel in (("w", w), ("ref_w", ref_w)):
        if kernel.ndim != 2:
            raise ValueError(
                f"Expected `{name}` to be a 2-D [H, V] kernel, got shape "
                f"{kernel.shape}."
            )
    for name, h, kname, kernel in (("x", x, "w", w), ("ref_x", ref_x, "ref_w", ref_w)):
        if h.ndim == 0 or h.shape[-1] != kernel.shape[0]:
            raise ValueError(
                f"Expected the last axis of `{name}` to match the first axis of "
                f"`{kname}` (the hidden size H), got shapes {h.shape} and "
                f"{kernel.shape}."
            )
    if w.shape[1] != ref_w.shape[1]:
        raise ValueError(
            "Expected `w` and `ref_w` to have the same vocabulary size (last "
            f"axis), got shapes {w.shape} and {ref_w.shape}."
        )
    _check_vocabulary("w", w)
    if x.shape[:-1] != ref_x.shape[:-1]:
        raise ValueError(
            "Expected `x` and `ref_x` to have the same position shape (all axes "
            f"but the last), got shapes {x.shape} and {ref_x.shape}."
        )
    check_chunk_size(chunk_size)
    return x, w, ref_x, ref_w


def check_hard(
    hard: tuple[Any, Any, Any, Any, Any],
    x: Array,
    w: Array,
    reduction: str,
    where: Any = None,
) -> dict[str, Any]:
    """Validates the hard-label options of the fused divergences, ``hard =
    (labels, ignore_index, soft_weight, hard_weight, label_smoothing)``; returns
    them by name, or {} when ``labels`` is None. Concrete labels are checked
    where a concrete ``where`` keeps them (masked ones may be garbage)."""
    labels, ignore_index, soft_weight, hard_weight, label_smoothing = hard
    if labels is None:
        return {}
    labels = jnp.asarray(check_integer("labels", labels))
    if labels.shape != x.shape[:-1]:
        raise ValueError(
            "Expected `labels` to have the position shape of `x` "
            f"{x.shape[:-1]}, got shape {labels.shape}."
        )
    u.check_int("ignore_index", ignore_index)
    if reduction == "none":
        raise ValueError(
            "With `labels`, `reduction` must be 'mean' or 'sum' (the two parts "
            "are reported in the metrics); got 'none'."
        )
    u.check_static("label_smoothing", label_smoothing)
    smoothing = u.check_scalar(
        "label_smoothing", label_smoothing, low=0.0, high=1.0, open_high=True
    )
    mask = u.broadcast_where(where, x.shape[:-1])
    if not isinstance(labels, jax.core.Tracer) and not isinstance(
        mask, jax.core.Tracer
    ):  # concrete: check the range where kept
        keep = np.asarray(labels) != ignore_index
        check_ids(
            "labels",
            labels,
            w.shape[1],
            keep=keep if mask is None else keep & np.asarray(mask),
            allowed=f" or `ignore_index` ({ignore_index})",
        )
    return {
        "labels": labels,
        "soft_weight": u.check_scalar("soft_weight", soft_weight, low=0.0),
        "hard_weight": u.check_scalar("hard_weight", hard_weight, low=0.0),
        "ignore_index": ignore_index,
        "label_smoothing": smoothing,
    }


def check_teacher(
    student_shape: tuple[int, ...],
    indices: Any,
    teacher: Any,
    tail: Any,
    temperature: Any,
    reduction: Any,
    where: Any,
) -> tuple[Array, Array, Any, Array | None]:
    """Validates a top-k teacher against a student of ``student_shape`` [..., V]
    (also for the fused student, whose log-probs never exist as an array)."""
    u.check_option("tail", tail, TAILS)
    u.check_option("reduction", reduction, u.REDUCTIONS)
    teacher = u.check_floating("teacher_logprobs", teacher)
    if not isinstance(indices, (jax.Array, np.ndarray)):  # tracers are jax.Array
        indices = np.asarray(indices)
    check_integer("teacher_indices", indices)
    u.check_same_shape("teacher_indices", indices, "teacher_logprobs", teacher)
    shape, positions = jnp.shape(indices), tuple(student_shape[:-1])
    if len(student_shape) == 0 or len(shape) == 0 or shape[:-1] != positions:
        raise ValueError(
            "Expected `teacher_indices` [..., k] to have the position shape of "
            f"the student [..., V], got {shape} and {tuple(student_shape)}."
        )
    k, vocab = shape[-1], student_shape[-1]
    if not 1 <= k <= vocab:
        raise ValueError(
            f"Expected at least 1 and at most V = {vocab} teacher entries, got k = {k}."
        )
    mask = u.broadcast_where(where, positions)
    _check_concrete_indices(indices, vocab, mask)
    t = check_temperature(temperature)
    if tail == "bucket" and t is not None:
        if isinstance(t, jax.core.Tracer) or float(t) != 1:
            raise ValueError(
                'Expected temperature=1 with tail="bucket" (the teacher\'s tail '
                "mass cannot be tempered without its full distribution), got "
                f'{temperature!r}. Use tail="renormalize".'
            )
        t = None
    return jnp.asarray(indices), teacher, t, mask


def _check_concrete_indices(indices: Any, vocab: int, mask: Array | None) -> None:
    """Range and distinctness of concrete indices, where a concrete mask keeps."""
    if isinstance(indices, jax.core.Tracer) or isinstance(mask, jax.core.Tracer):
        return
    rows = np.asarray(indices)
    rows = rows.reshape(-1, rows.shape[-1])
    if mask is not None:
        rows = rows[np.asarray(mask).reshape(-1)]
    check_ids("teacher_indices", rows, vocab, allowed=" (the student's V)")
    ordered = np.sort(rows, axis=-1)
    if np.any(ordered[:, 1:] == ordered[:, :-1]):
        raise ValueError(
            "Expected the `teacher_indices` of each position to be distinct; a "
            "duplicate would count its entry twice."
        )
