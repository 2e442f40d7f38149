"""Private: a function of a linear head's logits, scanned over chunks of positions.

``head_scan(f, dtype, accumulation, xs, w, chunked, shared)`` gives, for every chunk k,
``f(xs[:, k] @ w, chunked[k], shared)`` without forming the [positions, V]
logits. Its backward pass recomputes each chunk's logits, takes the cotangent
through ``f`` by autodiff, and forms dx = dz · wᵀ chunk by chunk and
dw = Σ_k x_kᵀ · dz_k by the accumulation rule every fused path shares
(:func:`jaxpenalties._core.chunking.accumulate`: float32 by default, the kernel's
dtype on request). The top-k teacher heads and the sampled-token log-probs use
it; the fused divergences have their own one-pass rule with the same
accumulation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxpenalties._core import chunking
from jaxpenalties._core.types import Array

ChunkFn = Callable[[Array, Any, Any], Any]


def _value_scan(
    f: ChunkFn, dtype: Any, xs: Array, w: Array, chunked: Any, shared: Any
) -> Any:
    def step(carry: None, k: Array) -> tuple[None, Any]:
        z = chunking.dot(chunking.chunk(xs, k), w, 1, 0, dtype)
        parts = jax.tree.map(lambda a: chunking.chunk(a, k), chunked)
        return carry, f(z, parts, shared)

    _, out = lax.scan(step, None, jnp.arange(xs.shape[1]))
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def head_scan(
    f: ChunkFn,
    dtype: Any,
    accumulation: str,
    xs: Array,
    w: Array,
    chunked: Any,
    shared: Any,
) -> Any:
    """The outputs of ``f`` for every chunk, stacked: [n_chunks, ...].

    Args:
      f: ``f(z, parts, shared)``, z the chunk's logits [C, V] in the compute
        dtype, ``parts`` the chunk's slices of ``chunked``. Static.
      dtype: the compute dtype of the logits (float32, or float64). Static.
      accumulation: the weight-gradient rule, ``"float32"`` or ``"param"``.
      xs: hidden states laid out [C, n_chunks, H]; w: the kernel [H, V].
      chunked: a pytree of arrays laid out [C, n_chunks, ...].
      shared: a pytree of arrays every chunk reads whole (e.g. a temperature).
    """
    return _value_scan(f, dtype, xs, w, chunked, shared)


def _fwd(
    f: ChunkFn,
    dtype: Any,
    accumulation: str,
    xs: Array,
    w: Array,
    chunked: Any,
    shared: Any,
) -> tuple[Any, tuple[Any, ...]]:
    del accumulation
    return _value_scan(f, dtype, xs, w, chunked, shared), (xs, w, chunked, shared)


def _is_float(a: Array) -> bool:
    return jnp.issubdtype(a.dtype, jnp.inexact)


def _bwd(
    f: ChunkFn, dtype: Any, accumulation: str, res: tuple[Any, ...], g: Any
) -> Any:
    xs, w, chunked, shared = res
    mm = jnp.result_type(xs, w)  # the backward matmuls' dtype (bf16 stays bf16)
    leaves, treedef = jax.tree.flatten(chunked)
    floats = [_is_float(a) for a in leaves]
    groups = chunking.row_groups(xs)

    def step(acc: dict[str, Any], k: Array) -> tuple[dict[str, Any], Any]:
        xc = chunking.chunk(xs, k)
        z = chunking.dot(xc, w, 1, 0, dtype)
        parts = [chunking.chunk(a, k) for a in leaves]

        def of_floats(z: Array, float_parts: list[Array], shared: Any) -> Any:
            it = iter(float_parts)
            whole = [next(it) if fl else p for p, fl in zip(parts, floats, strict=True)]
            return f(z, jax.tree.unflatten(treedef, whole), shared)

        float_parts = [p for p, fl in zip(parts, floats, strict=True) if fl]
        _, vjp = jax.vjp(of_floats, z, float_parts, shared)
        dz, d_parts, d_shared = vjp(jax.tree.map(lambda a: a[k], g))
        dz = dz.astype(mm)
        acc = dict(acc)
        dx = chunking.dot(dz, w, 1, 1, dtype, like=xc).astype(xs.dtype)
        acc["x"] = lax.dynamic_update_index_in_dim(acc["x"], dx, k, axis=1)
        acc["w"] = chunking.accumulate(acc["w"], xc, dz, groups, like=w)
        acc["shared"] = jax.tree.map(jnp.add, acc["shared"], d_shared)
        return acc, d_parts

    acc0 = {
        "x": jnp.zeros_like(xs),
        "w": chunking.accumulator_zeros(xs, w, groups, dtype, accumulation),
        "shared": jax.tree.map(jnp.zeros_like, shared),
    }
    acc, d_parts = lax.scan(step, acc0, jnp.arange(xs.shape[1]))
    # [n_chunks, C, ...] -> the [C, n_chunks, ...] layout of the inputs.
    it = iter(jnp.swapaxes(d, 0, 1) for d in d_parts)
    d_chunked = [next(it) if fl else None for fl in floats]
    dw = chunking.sum_groups(acc["w"], groups)
    assert dw is not None  # the accumulator exists
    return (
        acc["x"],
        dw.astype(w.dtype),
        jax.tree.unflatten(treedef, d_chunked),
        acc["shared"],
    )


head_scan.defvjp(_fwd, _bwd)
