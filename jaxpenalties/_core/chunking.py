"""Private: how the fused functions lay positions out in chunks.

Positions are split into chunks *strided* across the flattened position axis
(position i belongs to chunk i mod n_chunks), so each chunk holds a slice of
every shard when positions are sharded over devices and the scan never runs over
a sharded axis; a vocabulary-sharded kernel gives vocabulary-sharded logits.
Under explicit sharding the sharded position axes are flattened first, the chunk
size is chosen to split evenly over the position shards, and each shard keeps its
own partial weight gradient until after the loop (one all-reduce instead of one
per chunk).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, get_args

import jax
import jax.numpy as jnp
from jax import lax

from jaxpenalties._core.types import Array, GradAccumulation


def dot(
    a: Array,
    b: Array,
    contract_a: int,
    contract_b: int,
    dtype: Any,
    like: Array | None = None,
) -> Array:
    """``a`` · ``b`` contracting one axis each, accumulated in ``dtype``.

    ``like``: an array whose sharding the result takes (needed under explicit
    sharding when the contracted axis is sharded on both sides).
    """
    dims = (((contract_a,), (contract_b,)), ((), ()))
    out_sharding = None if like is None else jax.typeof(like).sharding
    return lax.dot_general(
        a, b, dims, preferred_element_type=dtype, out_sharding=out_sharding
    )


def like(a: Array, ref: Array) -> Array:
    """``a`` resharded as ``ref`` when its mesh has explicit axes (e.g. a
    cotangent built from an unsharded mask, for the sharded values of a
    chunk); ``a`` itself otherwise."""
    sharding = jax.typeof(ref).sharding
    if not getattr(getattr(sharding, "mesh", None), "explicit_axes", ()):
        return a
    return jax.sharding.reshard(a, sharding)


def chunk(a: Array, k: Array) -> Array:
    """Chunk ``k`` of an array laid out as [C, n_chunks, ...]."""
    return lax.dynamic_index_in_dim(a, k, axis=1, keepdims=False)


# Weight gradients under explicitly sharded rows: xᵀ · dz sums over the rows of
# a chunk, which live on different devices. Summing them inside the loop would
# all-reduce an [H, V] partial sum for every chunk; instead each row shard keeps
# its own partial sum ([shards, H, V], one slice per device) and they are added
# once, after the loop.


def row_groups(chunked: Array) -> int:
    """Explicit shard count of the rows of a [C, n_chunks, H] array (1 when
    unsharded, automatically sharded, or not dividing C)."""
    _, shards = position_sharding(chunked)
    return shards if shards > 1 and chunked.shape[0] % shards == 0 else 1


def kernel_grad_zeros(chunked: Array, kernel: Array, groups: int, dtype: Any) -> Array:
    if groups == 1:
        return jnp.zeros_like(kernel, dtype=dtype)
    rows = jax.typeof(chunked).sharding
    cols = tuple(jax.typeof(kernel).sharding.spec)
    cols += (None,) * (kernel.ndim - len(cols))
    spec = jax.sharding.PartitionSpec(tuple(rows.spec)[0], *cols)
    sharding = jax.sharding.NamedSharding(rows.mesh, spec)
    return jnp.zeros((groups,) + kernel.shape, dtype, out_sharding=sharding)


def kernel_grad(rows: Array, d: Array, groups: int, dtype: Any, like: Array) -> Array:
    """rowsᵀ · d [H, V], or its per-row-shard partial sums [groups, H, V]."""
    if groups == 1:
        return dot(rows, d, 0, 0, dtype, like=like)
    c = rows.shape[0]
    rows = rows.reshape(groups, c // groups, rows.shape[1])
    d = d.reshape(groups, c // groups, d.shape[1])
    dims = (((1,), (1,)), ((0,), (0,)))
    return lax.dot_general(rows, d, dims, preferred_element_type=dtype)


def accumulate(acc: Array, rows: Array, d: Array, groups: int, like: Array) -> Array:
    """acc + rowsᵀ · d, the weight-gradient rule of every fused path.

    A float32 ``acc`` (the default, ``grad_accumulation="float32"``) takes the
    float32 product of each chunk and is rounded once, at the end. An ``acc``
    in the parameter dtype (``"param"``, e.g. bf16) takes the product rounded
    to that dtype (float32 inside the matmul) and is rounded at every chunk,
    as a bf16 ``dw += xᵀ @ dz`` is: no float32 [H, V] buffer exists at all,
    and XLA updates the accumulator in place, in the output's own buffer.
    """
    return acc + kernel_grad(rows, d, groups, acc.dtype, like=like)


ACCUMULATIONS: tuple[str, ...] = get_args(GradAccumulation)


def accumulator_zeros(
    chunked: Array, kernel: Array, groups: int, compute: Any, accumulation: str
) -> Array:
    """The zero weight-gradient accumulator of ``kernel`` under the rule
    ``accumulation`` (:data:`ACCUMULATIONS`): in ``compute`` (float32, or
    float64) or in the kernel's own dtype."""
    dtype = kernel.dtype if accumulation == "param" else compute
    return kernel_grad_zeros(chunked, kernel, groups, dtype)


def sum_groups(acc: Array | None, groups: int) -> Array | None:
    return acc if acc is None or groups == 1 else jnp.sum(acc, axis=0)


def position_sharding(x: Array) -> tuple[list[int], int]:
    """The position axes of ``x`` that are explicitly sharded, and into how many
    shards in all (([], 1) when unsharded or under automatic sharding, where
    the sharding is XLA's to choose and unknown at trace time)."""
    sharding = jax.typeof(x).sharding
    spec = getattr(sharding, "spec", None)
    if spec is None:
        return [], 1
    sizes = dict(getattr(sharding.mesh, "shape", {}))
    axes, shards = [], 1
    for axis, entry in enumerate(tuple(spec)[: x.ndim - 1]):
        names = [n for n in (entry if isinstance(entry, tuple) else (entry,)) if n]
        if names:
            axes.append(axis)
            shards *= math.prod(sizes.get(name, 1) for name in names)
    return axes, shards


def _twos(k: int) -> int:
    """The exponent of 2 in ``k`` (how many times it halves evenly)."""
    return (k & -k).bit_length() - 1 if k else 0


def plan(n: int, chunk_size: int, shards: int = 1) -> tuple[int, int]:
    """(number of chunks, rows per chunk), rows ≤ ``chunk_size``.

    Prefers a number of chunks that divides the rows of each shard (no padding,
    and every chunk splits evenly over the shards) as long as it is at most
    twice the fewest number of chunks. When the sharding is not known at trace
    time (``shards == 1``: unsharded or automatic sharding), chunks whose row
    count has the most factors of 2 are preferred, so that they split evenly
    over power-of-two device counts. Otherwise pads fewer than n_chunks rows;
    explicitly sharded rows cannot be padded and take smaller chunks instead
    (at least one row per shard, so more than ``chunk_size`` rows when
    ``chunk_size`` < shards).
    """
    fewest = max(1, -(-n // chunk_size))
    if n % shards == 0:
        per_shard = n // shards
        candidates = [k for k in range(fewest, 2 * fewest + 1) if per_shard % k == 0]
        if candidates:
            if shards == 1:
                best = max(_twos(n // k) for k in candidates)
                candidates = [k for k in candidates if _twos(n // k) == best]
            return candidates[0], n // candidates[0]
        if shards > 1:
            smaller = (
                k for k in range(2 * fewest + 1, per_shard) if per_shard % k == 0
            )
            k = next(smaller, per_shard)
            return k, n // k
    return fewest, max(1, -(-n // fewest))


# One chunk's working memory takes at most this fraction of the memory of the
# trained head's kernel, and its float32 logits at least _MIN_CHUNK_ELEMENTS
# elements (16 MiB).
_KERNEL_FRACTION = 3
_MIN_CHUNK_ELEMENTS = 2**22


def default_chunk_size(w: Array) -> int:
    """Rows per chunk for ``chunk_size=None``, from the kernel [H, V].

    A chunk's working memory, as measured in the compiled programs for the GPU
    and TPU (``benchmarks/accelerator_memory.py``), is the float32 logits of both
    heads and the logit cotangent in the kernel's dtype: (8 + itemsize) bytes per
    row and vocabulary entry. It takes a third of the kernel's own memory:
    C = H · itemsize / (3 · (8 + itemsize)), 273 rows for a bf16 H = 4,096 head
    (256 once split evenly) and 455 for a float32 one; or 16 MiB of logits
    for a small head, where more rows cost nothing.
    """
    hidden, vocab = w.shape
    itemsize = jnp.dtype(w.dtype).itemsize
    by_kernel = hidden * itemsize // (_KERNEL_FRACTION * (8 + itemsize))
    return max(1, by_kernel, _MIN_CHUNK_ELEMENTS // max(vocab, 1))


def to_chunks(a: Array, n: int, n_chunks: int, c: int) -> Array:
    """[n, ...] -> [C, n_chunks, ...] with zero padding: chunk k holds rows
    k, k + n_chunks, ... (strided, so a sharded row axis stays sharded)."""
    a = jnp.pad(a, [(0, n_chunks * c - n)] + [(0, 0)] * (a.ndim - 1))
    return a.reshape((c, n_chunks) + a.shape[1:])


class Layout(NamedTuple):
    """How [..., H] inputs with position shape ``positions`` become chunks."""

    positions: tuple[int, ...]
    order: list[int]  # position axes, explicitly sharded ones first
    n: int  # positions in all
    n_chunks: int
    c: int  # rows per chunk

    def flatten(self, a: Array) -> Array:
        """[*positions, ...] -> [n, ...] rows in ``order``."""
        k = len(self.positions)
        if self.order != sorted(self.order):
            a = jnp.transpose(a, self.order + list(range(k, a.ndim)))
        return a.reshape((self.n,) + a.shape[k:])

    def chunked(self, a: Array) -> Array:
        """[*positions, ...] -> [C, n_chunks, ...] (zero padded)."""
        return to_chunks(self.flatten(a), self.n, self.n_chunks, self.c)

    def unchunked(self, values: Array) -> Array:
        """Per-position values [n_chunks, C] -> [*positions]."""
        values = values.T.reshape(self.n_chunks * self.c)[: self.n]
        values = values.reshape(tuple(self.positions[i] for i in self.order))
        back = [self.order.index(i) for i in range(len(self.positions))]
        return jnp.transpose(values, back)


def layout(x: Array, w: Array, chunk_size: int | None) -> Layout:
    """The chunk layout for hidden states ``x`` [..., H] and kernel ``w``."""
    positions = tuple(x.shape[:-1])
    sharded_axes, shards = position_sharding(x)
    if chunk_size is None:
        chunk_size = default_chunk_size(w)
    n = math.prod(positions)
    n_chunks, c = plan(n, chunk_size, shards)
    # Explicitly sharded position axes go first, so that flattening the
    # positions keeps one contiguous block of rows per shard.
    order = sharded_axes + [i for i in range(len(positions)) if i not in sharded_axes]
    return Layout(positions, order, n, n_chunks, c)
