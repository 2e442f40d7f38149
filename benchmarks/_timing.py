"""Timing and compiled-memory helpers shared by the benchmark scripts.

Every time is wall time until the outputs are ready (``jax.block_until_ready``),
taken after a warm-up call so that compilation is never timed.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Mapping

import jax


def seconds(fn: Callable, *args) -> float:
    """Wall time of one call ``fn(*args)``, until its outputs are ready."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def median_seconds(fn: Callable, *args, reps: int) -> float:
    """Median of ``reps`` calls after one warm-up call."""
    jax.block_until_ready(fn(*args))
    return statistics.median(seconds(fn, *args) for _ in range(reps))


def interleaved_medians(
    fns: Mapping[str, Callable], *args, rounds: int, shuffle: bool = False
) -> dict[str, float]:
    """Median seconds of each contender over ``rounds`` interleaved rounds.

    Each round calls every contender once, so that slow drifts of the machine
    reach all of them alike: in a fresh shuffled order each round with
    ``shuffle`` (seeded), else in the given order and reversed on odd rounds.
    The contenders must be warmed up (compiled) already.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    rng = random.Random(0)
    for r in range(rounds):
        if shuffle:
            rng.shuffle(order)  # no contender always runs right after another
        else:
            order = list(fns) if r % 2 == 0 else list(reversed(fns))
        for name in order:
            times[name].append(seconds(fns[name], *args))
    return {name: statistics.median(t) for name, t in times.items()}


def compile_with_temp(fn: Callable, *args):
    """``jax.jit(fn)`` compiled for ``args`` (arrays or ``jax.ShapeDtypeStruct``s)
    and its temporary-buffer bytes from XLA's ``memory_analysis`` (None where
    the backend reports none). Compiling allocates nothing."""
    compiled = jax.jit(fn).lower(*args).compile()
    analysis = compiled.memory_analysis()
    return compiled, None if analysis is None else analysis.temp_size_in_bytes
