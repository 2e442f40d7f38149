"""Speed and memory of the exact divergences against optax, the naive formula
and the memory floor.

Reproduce (from the repository root):

    .venv/bin/python benchmarks/divergences.py                   # CPU, float32
    .venv/bin/python benchmarks/divergences.py --dtype bfloat16  # CPU, bf16
    .venv/bin/python benchmarks/divergences.py --sizes llm --dtype bfloat16  # GPU

Inputs are [1024, 32768] log-probabilities (a 32k vocabulary; ``--sizes llm``:
[8192, 128256]). Every function is jitted and warmed up; rounds run all
contenders interleaved in one process (in a shuffled order each round) and the
tables report medians, ratios, and each program's compiled temporary memory
(XLA's ``memory_analysis``) in units of one input array. The floors read both
inputs once (value) and also write both gradients once (value and gradient).
Targets: forward KL ≤ 1.0× optax and ≤ 1.1× naive; symmetric KL ≤ 0.7× two
optax KLs and its gradient ≤ 0.8×; JS ≤ 3× our forward KL and ≤ 1.0× the
plain ``logaddexp`` formula (exact-zero care included); forward-KL
gradient and value+grad ≤ 1.0× optax's, also in bf16.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import optax
from _timing import compile_with_temp, interleaved_medians

import jaxpenalties as jp


def _optax_kl(p, q):
    # optax's argument order: KL(targets ‖ predictions), log targets second.
    return jnp.mean(optax.losses.kl_divergence_with_log_targets(q, p))


def _naive_kl(p, q):
    return jnp.mean(jnp.sum(jnp.exp(p) * (p - q), axis=-1))


def _plain_js(p, q, beta=0.5):
    # The textbook formula: log M by logaddexp, no exact-zero or -inf care.
    m = jnp.logaddexp(p + jnp.log(beta), q + jnp.log(1 - beta))
    terms = beta * jnp.exp(p) * (p - m) + (1 - beta) * jnp.exp(q) * (q - m)
    return jnp.mean(jnp.sum(terms, axis=-1))


def _two_optax_kls(p, q):
    return 0.5 * (_optax_kl(p, q) + _optax_kl(q, p))


def _floor(p, q):  # reads both inputs once
    return jnp.sum(p, dtype=jnp.float32) + jnp.sum(q, dtype=jnp.float32)


def _floor_grad(p, q):  # reads both inputs once and writes two arrays once
    return _floor(p, q), (p * 2, q * 2)


def contenders():
    grad2 = dict(argnums=(0, 1))
    return {
        "floor: read both": jax.jit(_floor),
        "floor: read both, write both": jax.jit(_floor_grad),
        "ours forward KL": jax.jit(lambda p, q: jp.kl_divergence(p, q)),
        "optax KL": jax.jit(_optax_kl),
        "naive KL": jax.jit(_naive_kl),
        "ours symmetric KL": jax.jit(
            lambda p, q: jp.kl_divergence(p, q, symmetric=True)
        ),
        "two optax KLs": jax.jit(_two_optax_kls),
        "ours JS": jax.jit(lambda p, q: jp.js_divergence(p, q)),
        "plain logaddexp JS": jax.jit(_plain_js),
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


# (label, contender, baseline, target): the contender's median time over the
# baseline's should be at most the target.
RATIOS = [
    ("forward KL / optax", "ours forward KL", "optax KL", 1.0),
    ("forward KL / naive", "ours forward KL", "naive KL", 1.1),
    ("symmetric / two optax", "ours symmetric KL", "two optax KLs", 0.7),
    ("grad symmetric / two optax", "grad ours symmetric KL", "grad two optax KLs", 0.8),
    ("JS / our forward KL", "ours JS", "ours forward KL", 3.0),
    ("JS / plain logaddexp JS", "ours JS", "plain logaddexp JS", 1.0),
    ("grad forward KL / optax", "grad ours forward KL", "grad optax KL", 1.0),
]
RATIOS += [
    (f"value+grad {label}", f"value+grad {num}", f"value+grad {den}", target)
    for label, num, den, target in [
        ("forward / optax", "ours forward KL", "optax KL", 1.0),
        ("symmetric / 2 optax", "ours symmetric", "two optax KLs", 0.8),
    ]
]
# Against the memory floors: within 5% of reading (and writing) the arrays once.
RATIOS += [
    (f"{label} / floor", num, f"floor: {floor}", 1.05)
    for label, num, floor in [
        ("forward KL", "ours forward KL", "read both"),
        ("symmetric", "ours symmetric KL", "read both"),
        ("JS", "ours JS", "read both"),
        ("value+grad forward", "value+grad ours forward KL", "read both, write both"),
    ]
]

SIZES = {"cpu": (1024, 32768), "llm": (8192, 128256)}


def main(
    rows: int = 1024, vocab: int = 32768, rounds: int = 21, dtype: str = "float32"
) -> dict[str, float]:
    kp, kq = jax.random.split(jax.random.key(0))
    p = jax.nn.log_softmax(3 * jax.random.normal(kp, (rows, vocab))).astype(dtype)
    q = jax.nn.log_softmax(3 * jax.random.normal(kq, (rows, vocab))).astype(dtype)
    fns = contenders()
    temp = {}
    for name, fn in fns.items():  # compile and warm up
        _, temp_bytes = compile_with_temp(fn, p, q)
        if temp_bytes is not None:
            temp[name] = temp_bytes / p.nbytes
        jax.block_until_ready(fn(p, q))
    # In a shuffled order each round: no contender always runs after another.
    medians = interleaved_medians(fns, p, q, rounds=rounds, shuffle=True)

    print(f"[{rows}, {vocab}] {dtype} log-probs, {rounds} interleaved rounds")
    print(f"jax {jax.__version__}, optax {optax.__version__}, {jax.devices()[0]}")
    print()
    print(f"| {'function':<28} | median ms | temp memory (inputs) |")
    print(f"|{'-' * 30}|{'-' * 11}|{'-' * 22}|")
    for name, t in medians.items():
        mem = f"{temp[name]:20.2f}" if name in temp else f"{'n/a':>20}"
        print(f"| {name:<28} | {1e3 * t:9.2f} | {mem} |")
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
    parser.add_argument("--sizes", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--rows", type=int, help="overrides --sizes")
    parser.add_argument("--vocab", type=int, help="overrides --sizes")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args()
    rows, vocab = SIZES[args.sizes]
    main(args.rows or rows, args.vocab or vocab, args.rounds, args.dtype)
