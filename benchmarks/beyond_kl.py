"""CPU time of the divergences beyond KL against KL, side by side: the cost of
ULD's sort, and of the α and skew-KL terms.

Reproduce (from the repository root, CPU; about 2 minutes on 2 shared cores)::

    .venv/bin/python benchmarks/beyond_kl.py
    .venv/bin/python benchmarks/beyond_kl.py --rounds 5   # quicker, noisier

Two sections, each value-and-gradient medians of interleaved rounds in one
process, as ratios to KL:

* dense, float32 logits [1,024, 32,768] (``from_logits=True``), gradient
  w.r.t. the student's logits: ``kl_divergence`` against ``total_variation``,
  ``alpha_divergence`` (α = 0.5), ``skew_kl_divergence`` (λ = 0.1) and
  ``uld_distance`` (the full sort, and ``top_k=64``);
* fused, bf16 heads, 2,048 positions, H = 256, V = 32,768, gradient w.r.t. the
  student (x, w), frozen teacher: ``fused_linear_kl_divergence`` against
  ``fused_linear_divergence`` with each name, default chunks (α, skew KL and
  ULD take fewer rows per chunk: see ``large_vocab/_fused_run.py``).

The accelerator memory of the fused steps (each within 1.05× the fused KL
step on an H100 and a TPU v5e) is ``benchmarks/accelerator_memory.py
--only fused-``.
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
from _timing import interleaved_medians

import jaxpenalties as jp


def _dense_contenders():
    def vg(fn):
        return jax.jit(jax.value_and_grad(lambda s, t: fn(s, t, from_logits=True)))

    return {
        "kl": vg(jp.kl_divergence),
        "total_variation": vg(jp.total_variation),
        "alpha 0.5": vg(functools.partial(jp.alpha_divergence, alpha=0.5)),
        "skew_kl 0.1": vg(functools.partial(jp.skew_kl_divergence, skew=0.1)),
        "uld (sort)": vg(jp.uld_distance),
        "uld top_k=64": vg(functools.partial(jp.uld_distance, top_k=64)),
    }


def _fused_contenders():
    sg = jax.lax.stop_gradient

    def vg(name, **kw):
        def f(x, w, rx, rw):
            if name == "kl":
                return jp.fused_linear_kl_divergence(x, w, sg(rx), sg(rw))
            return jp.fused_linear_divergence(
                x, w, sg(rx), sg(rw), divergence=name, **kw
            )

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))

    return {
        "kl": vg("kl"),
        "total_variation": vg("total_variation"),
        "alpha 0.5": vg("alpha"),
        "skew_kl 0.1": vg("skew_kl"),
        "uld (sort)": vg("uld"),
        "uld top_k=64": vg("uld", top_k=64),
    }


def _table(title, fns, args, rounds):
    for f in fns.values():  # compile (never timed)
        jax.block_until_ready(f(*args))
    times = interleaved_medians(fns, *args, rounds=rounds, shuffle=True)
    base = times["kl"]
    print(f"\n## {title}")
    print(f"{'contender':<16} {'ms':>9} {'/ KL':>7}")
    for name, t in times.items():
        print(f"{name:<16} {1e3 * t:>9.1f} {t / base:>7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    k = jax.random.split(jax.random.key(0), 6)
    n, v = 1024, 32768
    s = 3 * jax.random.normal(k[0], (n, v), jnp.float32)
    t = 3 * jax.random.normal(k[1], (n, v), jnp.float32)
    _table(
        f"dense, float32 logits [{n}, {v}], value and grad",
        _dense_contenders(),
        (s, t),
        args.rounds,
    )
    n, h, v = 2048, 256, 32768
    x = jax.random.normal(k[2], (n, h), jnp.bfloat16)
    rx = jax.random.normal(k[3], (n, h), jnp.bfloat16)
    w = (jax.random.normal(k[4], (h, v)) / 4).astype(jnp.bfloat16)
    rw = (jax.random.normal(k[5], (h, v)) / 4).astype(jnp.bfloat16)
    _table(
        f"fused, bf16 heads N={n}, H={h}, V={v}, value and grad w.r.t. (x, w)",
        _fused_contenders(),
        (x, w, rx, rw),
        args.rounds,
    )


if __name__ == "__main__":
    main()
