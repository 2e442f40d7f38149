"""Compile time of an AdamW step with L2-SP at 50M parameters: the centre closed
over (constants XLA folds) against the centre in the optimiser state.

Reproduce (from the repository root, CPU):

    .venv/bin/python benchmarks/l2_sp_compile.py

Each variant is lowered and compiled once in this process (``lower().compile()``
of the jitted ``update``, wall time); the table reports seconds and the ratio to
the step without L2-SP. Target (issue 11): state ≤ 1.2× the plain step.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import optax

import jaxpenalties as jp


def main(millions: int = 50) -> None:
    n = millions * 1_000_000 // 4
    keys = jax.random.split(jax.random.key(0), 4)
    params = {f"w{i}": jax.random.normal(k, (n,)) for i, k in enumerate(keys)}
    base = jax.tree.map(lambda x: x + 0.01, params)
    variants = {
        "AdamW, no L2-SP": optax.adamw(1e-3),
        "L2-SP, centre closed over": optax.chain(
            jp.add_penalty_gradient(functools.partial(jp.l2, center=base), 1e-4),
            optax.adamw(1e-3),
        ),
        "L2-SP, centre in the state": optax.chain(
            jp.add_l2_sp_decay(1e-4, base), optax.adamw(1e-3)
        ),
    }
    seconds = {}
    for name, tx in variants.items():
        state = tx.init(params)
        start = time.perf_counter()
        jax.jit(tx.update).lower(params, state, params).compile()
        seconds[name] = time.perf_counter() - start
    plain = seconds["AdamW, no L2-SP"]
    print(f"{millions}M float32 parameters, jax {jax.__version__}, {jax.devices()[0]}")
    print()
    print("| step | compile s | × no L2-SP |")
    print("|---|---:|---:|")
    for name, s in seconds.items():
        print(f"| {name} | {s:.2f} | {s / plain:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--millions", type=int, default=50)
    main(parser.parse_args().millions)
