"""Benchmark: `jp.orthogonality` vs the n×n Gram-matrix formulation.

For n rows of dimension d = 64 (n ≫ d), `jp.orthogonality` works on the d×d
matrix Xᵀ X; the textbook formulation builds G = X Xᵀ (n×n). Both are timed
(median of interleaved runs in one process, after compilation) and their
compiled temporary memory is read from XLA
(``jax.jit(f).lower(x).compile().memory_analysis().temp_size_in_bytes``).
The n×n version is compiled at every size (compiling allocates nothing) but
only run where its temporaries stay under ~4 GiB.

Reproduce (CPU, a few minutes at most)::

    .venv/bin/python benchmarks/constraints.py
"""

from __future__ import annotations

import functools
import statistics

import jax
import jax.numpy as jnp
import numpy as np
from _timing import compile_with_temp, seconds

import jaxpenalties as jp

D = 64
SIZES = (2_000, 8_000, 16_000, 32_000, 64_000)
REPEATS = 5  # interleaved rounds; each round times ours OURS_PER_ROUND times
OURS_PER_ROUND = 3
MAX_RUN_BYTES = 4 * 2**30  # do not run the n×n version above this


def gram_nxn_soft(x):
    """Σ_{i≠j} G_ij² with the full n×n Gram matrix of the normalised rows."""
    x = x / jnp.linalg.norm(x, axis=1, keepdims=True)
    g = jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.sum(jnp.square(g)) - jnp.sum(jnp.square(jnp.diagonal(g)))


def mib(n_bytes):
    return n_bytes / 2**20


def main():
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, d = {D}")
    rng = np.random.default_rng(0)
    rows = []
    for n in SIZES:
        x = jnp.asarray(rng.normal(size=(n, D)).astype(np.float32))
        ours = {
            mode: compile_with_temp(functools.partial(jp.orthogonality, mode=mode), x)
            for mode in ("soft", "hard", "spectral")
        }
        base, base_temp = compile_with_temp(gram_nxn_soft, x)
        run_base = base_temp <= MAX_RUN_BYTES
        # Warm up, check the values agree, then interleave the timed runs.
        value = float(ours["soft"][0](x))
        for compiled, _ in ours.values():
            compiled(x).block_until_ready()
        rel_diff = None
        if run_base:
            ref = float(base(x))
            rel_diff = abs(value - ref) / abs(ref)
        times = {k: [] for k in ("soft", "hard", "spectral", "nxn")}
        for _ in range(REPEATS):
            for mode, (compiled, _) in ours.items():
                times[mode] += [seconds(compiled, x) for _ in range(OURS_PER_ROUND)]
            if run_base:
                times["nxn"].append(seconds(base, x))
        med = {k: statistics.median(v) if v else None for k, v in times.items()}
        rows.append((n, med, ours["soft"][1], base_temp, rel_diff))

    header = (
        f"{'n':>7} | {'ours soft':>10} {'growth':>6} | {'n×n soft':>10} "
        f"{'growth':>6} | {'speedup':>8} | {'ours temp':>10} | {'n×n temp':>11} | "
        f"{'mem ratio':>9} | {'ours hard':>9} | {'spectral':>9} | {'rel diff':>8}"
    )
    print(header)
    print("-" * len(header))
    prev = None
    for n, med, temp, base_temp, rel_diff in rows:
        ours_ms = med["soft"] * 1e3
        base_ms = None if med["nxn"] is None else med["nxn"] * 1e3
        g_ours = g_base = "  "
        if prev is not None:
            g_ours = f"{med['soft'] / prev['soft']:5.1f}x"
            if base_ms is not None and prev["nxn"] is not None:
                g_base = f"{med['nxn'] / prev['nxn']:5.1f}x"
        prev = med
        base_col = "skipped" if base_ms is None else f"{base_ms:8.1f}ms"
        speed = "-" if base_ms is None else f"{base_ms / ours_ms:7.0f}x"
        diff = "-" if rel_diff is None else f"{rel_diff:.1e}"
        print(
            f"{n:>7} | {ours_ms:8.2f}ms {g_ours:>6} | {base_col:>10} {g_base:>6} | "
            f"{speed:>8} | {mib(temp):7.1f}MiB | {mib(base_temp):8.1f}MiB | "
            f"{base_temp / max(temp, 1):8.0f}x | {med['hard'] * 1e3:7.2f}ms | "
            f"{med['spectral'] * 1e3:7.2f}ms | {diff:>8}"
        )
    print(
        f"times: median over {REPEATS} interleaved rounds after compilation; temp: "
        "XLA compiled temporary buffers; growth: vs the previous row; n×n runs "
        f"skipped above {mib(MAX_RUN_BYTES):.0f} MiB of temporaries; rel diff: "
        "|ours − n×n| / n×n for mode='soft'."
    )


if __name__ == "__main__":
    main()
