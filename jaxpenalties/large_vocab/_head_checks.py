"""Private: the checks of a linear head's inputs and of token ids.

Hidden states and kernels (shapes, dtypes, vocabulary size), chunk sizes, hard
labels, sampled tokens and top-k teachers (indices and log-probs). Concrete ids
outside [0, V) are refused eagerly; traced ones are handled where they are
read (:mod:`._indexing`).
"""

from __future__ import annotations

from typing import Any, get_args

import jax
import jax.numpy as jnp
import numpy as np

from jaxpenalties._core import checks, divergence_checks
from jaxpenalties._core.types import Array, Tail

TAILS: tuple[str, ...] = get_args(Tail)


def check_linear_head(x: Any, w: Any, chunk_size: Any) -> tuple[Array, Array]:
    """Validates hidden states ``x`` [..., H], a kernel ``w`` [H, V] and the
    chunk size of a chunked linear head; returns ``x`` and ``w`` as arrays."""
    x = checks.check_floating("x", x)
    w = checks.check_floating("w", w)
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
        checks.check_int("chunk_size", chunk_size, minimum=1)


def check_integer(name: str, a: Any) -> Any:
    """Returns ``a`` as an array (a NumPy or JAX array as given), raising
    ``TypeError`` naming ``name`` unless it is one of an integer dtype (also
    for None, a dict or a ragged list)."""
    if not isinstance(a, (jax.Array, np.ndarray)):
        a = checks.as_array(name, a, "an integer array")
    if not jnp.issubdtype(a.dtype, jnp.integer):
        raise TypeError(
            f"Expected `{name}` to be an integer array, got dtype {a.dtype}."
        )
    return a


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
    x: Any, w: Any, ref_x: Any, ref_w: Any, chunk_size: Any, same_vocab: bool = True
) -> tuple[Array, Array, Array, Array]:
    """Validates the hidden states [..., H] and kernels [H, V] of both heads
    of a fused divergence and the chunk size; returns the four arrays. With
    ``same_vocab=False`` (ULD) the vocabularies may differ in size."""
    x = checks.check_floating("x", x)
    w = checks.check_floating("w", w)
    ref_x = checks.check_floating("ref_x", ref_x)
    ref_w = checks.check_floating("ref_w", ref_w)
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
    if same_vocab and w.shape[1] != ref_w.shape[1]:
        raise ValueError(
            "Expected `w` and `ref_w` to have the same vocabulary size (last "
            f"axis), got shapes {w.shape} and {ref_w.shape}."
        )
    _check_vocabulary("w", w)
    _check_vocabulary("ref_w", ref_w)
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
    checks.check_int("ignore_index", ignore_index)
    if reduction == "none":
        raise ValueError(
            "With `labels`, `reduction` must be 'mean' or 'sum' (the two parts "
            "are reported in the metrics); got 'none'."
        )
    checks.check_static("label_smoothing", label_smoothing)
    smoothing = checks.check_scalar(
        "label_smoothing", label_smoothing, low=0.0, high=1.0, open_high=True
    )
    mask = checks.broadcast_where(where, x.shape[:-1])
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
        "soft_weight": checks.check_scalar("soft_weight", soft_weight, low=0.0),
        "hard_weight": checks.check_scalar("hard_weight", hard_weight, low=0.0),
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
    checks.check_option("tail", tail, TAILS)
    checks.check_option("reduction", reduction, checks.REDUCTIONS)
    teacher = checks.check_floating("teacher_logprobs", teacher)
    if not isinstance(indices, (jax.Array, np.ndarray)):  # tracers are jax.Array
        indices = np.asarray(indices)
    check_integer("teacher_indices", indices)
    checks.check_same_shape("teacher_indices", indices, "teacher_logprobs", teacher)
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
    mask = checks.broadcast_where(where, positions)
    _check_concrete_indices(indices, vocab, mask)
    t = divergence_checks.check_temperature(temperature)
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
