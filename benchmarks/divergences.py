"""Speed of the exact divergences against optax and the naive formula.

Reproduce (from the repository root, CPU):

    .venv/bin/python benchmarks/divergences.py

Inputs are [1024, 32768] float32 log-probabilities (a 32k vocabulary). Every
function is jitted and warmed up; rounds run all contenders interleaved in one
process (in a shuffled order each round) and the table reports medians and
ratios. Targets (issue 2): forward KL
≤ 1.0× optax and ≤ 1.1× naive; symmetric KL ≤ 0.7× two optax KLs and its
gradient ≤ 0.8×; JS ≤ 2.5× our forward KL; forward-KL gradient ≤ 1.0× optax's.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import jaxpenalties as jp


def _optax_kl(p, q):
    # optax's argument order: KL(targets ‖ predictions), log targets second.
    return jnp.mean(optax.losses.kl_divergence_with_log_targets(q, p))


def _naive_kl(p, q):
    return jnp.mean(jnp.sum(jnp.exp(p) * (p - q), axis=-1))


def _two_optax_kls(p, q):
    return 0.5 * (_optax_kl(p, q) + _optax_kl(q, p))


def contenders():
    grad2 = dict(argnums=(0, 1))
    return {
        "ours forward KL": jax.jit(lambda p, q: jp.kl_divergence(p, q)),
        "optax KL": jax.jit(_optax_kl),
        "naive KL": jax.jit(_naive_kl),
        "ours symmetric KL": jax.jit(
            lambda p, q: jp.kl_divergence(p, q, symmetric=True)
        ),
        "two optax KLs": jax.jit(_two_optax_kls),
        "ours JS": jax.jit(lambda p, q: jp.js_divergence(p, q)),
        "grad ours forward KL": jax.jit(
            jax.grad(lambda p, q: jp.kl_divergence(p, q), **grad2)
        ),
        "grad optax KL": jax.jit(jax.grad(_optax_kl, **grad2)),
        "grad ours symmetric KL": jax.jit(
            jax.grad(lambda p, q: jp.kl_divergence(p, q, symmetric=True), **grad2)
        ),
        "grad two optax KLs": jax.jit(jax.grad(_two_optax_kls, **grad2)),
        # What a training step runs: the value and the gradient together.
        "value+grad ours forward KL": jax.jit(
            jax.value_and_grad(lambda p, q: jp.kl_divergence(p, q), **grad2)
        ),
        "value+grad optax KL": jax.jit(jax.value_and_grad(_optax_kl, **grad2)),
        "value+grad ours symmetric": jax.jit(
            jax.value_and_grad(
                lambda p, q: jp.kl_divergence(p, q, symmetric=True), **grad2
            )
        ),
        "value+grad two optax KLs": jax.jit(
            jax.value_and_grad(_two_optax_kls, **grad2)
        ),
    }


RATIOS = [
    ("forward KL / optax", "ours forward KL", "optax KL", 1.0),
    ("forward KL / naive", "ours forward KL", "naive KL", 1.1),
    ("symmetric / two optax", "ours symmetric KL", "two optax KLs", 0.7),
    ("grad symmetric / two optax", "grad ours symmetric KL", "grad two optax KLs", 0.8),
    ("JS / our forward KL", "ours JS", "ours forward KL", 2.5),
    ("grad forward KL / optax", "grad ours forward KL", "grad optax KL", 1.0),
    (
        "value+grad forward / optax",
        "value+grad ours forward KL",
        "value+grad optax KL",
        1.0,
    ),
    (
        "value+grad symmetric / 2 optax",
        "value+grad ours symmetric",
        "value+grad two optax KLs",
        0.8,
    ),
]


def main(rows: int = 1024, vocab: int = 32768, rounds: int = 15) -> dict[str, float]:
    kp, kq = jax.random.split(jax.random.key(0))
    p = jax.nn.log_softmax(3 * jax.random.normal(kp, (rows, vocab)))
    q = jax.nn.log_softmax(3 * jax.random.normal(kq, (rows, vocab)))
    fns = contenders()
    for fn in fns.values():  # compile and warm up
        jax.block_until_ready(fn(p, q))
    times: dict[str, list[float]] = {name: [] for name in fns}
    order = list(fns)
    rng = random.Random(0)
    for _ in range(rounds):
        rng.shuffle(order)  # no contender always runs right after another
        for name in order:
            fn = fns[name]
            start = time.perf_counter()
            jax.block_until_ready(fn(p, q))
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}

    print(f"[{rows}, {vocab}] float32 log-probs, {rounds} interleaved rounds")
    print(f"jax {jax.__version__}, optax {optax.__version__}, {jax.devices()[0]}")
    print()
    print(f"| {'function':<28} | median ms |")
    print(f"|{'-' * 30}|{'-' * 11}|")
    for name, t in medians.items():
        print(f"| {name:<28} | {1e3 * t:9.1f} |")
    print()
    print(f"| {'ratio':<30} | {'measured':>8} | {'target':>6} | ok |")
    print(f"|{'-' * 32}|{'-' * 10}|{'-' * 8}|----|")
    for label, num, den, target in RATIOS:
        ratio = medians[num] / medians[den]
        ok = "yes" if ratio <= target else "NO"
        print(f"| {label:<30} | {ratio:8.2f} | {target:6.2f} | {ok:>2} |")
    return medians


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    main(args.rows, args.vocab, args.rounds)
