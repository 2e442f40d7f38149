"""Cost of `jp.regularize` inside a jitted train step.

A small causal-free token model (embedding -> 2-layer MLP -> vocabulary
log-probs, batch 16 x 64 tokens, vocabulary 512) trained with AdamW. For
N = 0, 1, 4, 8 penalties (KL to reference log-probs, entropy bonus, L2, L1,
JS, reverse KL, L2-SP, activity L2, added in that order), the script times:

- ``regularize``: the step with ``jp.regularize(loss_fn, penalties)``;
- ``hand-written``: the same penalties summed by hand in the loss (what
  regularize saves you from writing), to separate the combinator's own cost
  from the cost of the penalties themselves;
- ``+grad norms``: ``track_grad_norms=True`` (one extra backward per penalty).

Every configuration is compiled first; then rounds of ``--steps`` steps run
interleaved across configurations in one process, and each configuration's
time per step is the median over rounds. Ratios are relative to the bare step
(the loss alone, no regularize).

Reproduce:

    .venv/bin/python benchmarks/regularize.py            # ~1 min on 2 CPU cores
    .venv/bin/python benchmarks/regularize.py --rounds 5 --steps 5   # quick
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxpenalties as jp

BATCH, SEQ, VOCAB, EMBED, HIDDEN = 16, 64, 512, 64, 128


def init_params(seed: int) -> dict:
    rng = np.random.default_rng(seed)

    def normal(*shape):
        return jnp.asarray(rng.normal(size=shape) / np.sqrt(shape[0]), jnp.float32)

    return {
        "embed": normal(VOCAB, EMBED),
        "w1": normal(EMBED, HIDDEN),
        "b1": jnp.zeros((HIDDEN,)),
        "w2": normal(HIDDEN, HIDDEN),
        "b2": jnp.zeros((HIDDEN,)),
        "out": normal(HIDDEN, VOCAB),
    }


def forward(params, tokens):
    x = params["embed"][tokens]
    h = jax.nn.gelu(x @ params["w1"] + params["b1"][None, None, :])
    h = jax.nn.gelu(h @ params["w2"] + params["b2"][None, None, :])
    return h, jax.nn.log_softmax(h @ params["out"], axis=-1)


def loss_fn(params, batch):
    hidden, logprobs = forward(params, batch["tokens"])
    targets = batch["targets"][..., None]
    nll = -jnp.mean(jnp.take_along_axis(logprobs, targets, axis=-1))
    return nll, {"logprobs": logprobs, "hidden": hidden}


def penalty_pool(pretrained) -> list[jp.Penalty]:
    lp_ref = ("logprobs", "ref_logprobs")
    return [
        jp.Penalty(jp.kl_divergence, inputs=lp_ref, weight=0.1, name="kl"),
        jp.Penalty(jp.entropy, inputs=("logprobs",), weight=0.01, name="entropy"),
        jp.Penalty(jp.l2, inputs=("params",), weight=1e-4, name="l2"),
        jp.Penalty(jp.l1, inputs=("params",), weight=1e-5, name="l1"),
        jp.Penalty(jp.js_divergence, inputs=lp_ref, weight=0.1, name="js"),
        jp.Penalty(
            jp.kl_divergence,
            inputs=lp_ref,
            weight=0.05,
            kwargs={"direction": "reverse"},
            name="kl_reverse",
        ),
        jp.Penalty(
            functools.partial(jp.l2, center=pretrained),
            inputs=("params",),
            weight=1e-3,
            name="l2_sp",
        ),
        jp.Penalty(
            jp.l2,
            inputs=("hidden",),
            weight=1e-3,
            kwargs={"reduction": "mean"},
            name="activity",
        ),
    ]


def hand_written(penalties):
    """The same total written out by hand (no regularize)."""

    def total(params, batch):
        loss, outputs = loss_fn(params, batch)
        for p in penalties:
            args = [
                outputs[e] if e in outputs else (params if e == "params" else batch[e])
                for e in p.inputs
            ]
            loss = loss + p.weight * p.fn(*args, **p.kwargs)
        return loss, outputs

    return total


def make_step(f, opt):
    @jax.jit
    def step(params, opt_state, batch):
        (total, aux), grads = jax.value_and_grad(f, has_aux=True)(params, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, total

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    params, pretrained = init_params(0), init_params(1)
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, VOCAB, size=(BATCH, SEQ))
    batch = {
        "tokens": jnp.asarray(tokens),
        "targets": jnp.asarray(np.roll(tokens, -1, axis=1)),
        "ref_logprobs": forward(pretrained, jnp.asarray(tokens))[1],
    }
    pool = penalty_pool(pretrained)
    opt = optax.adamw(1e-3)

    configs = {"bare step": make_step(loss_fn, opt)}
    configs["regularize N=0"] = make_step(jp.regularize(loss_fn, []), opt)
    for n in (1, 4, 8):
        configs[f"hand-written N={n}"] = make_step(hand_written(pool[:n]), opt)
        configs[f"regularize N={n}"] = make_step(jp.regularize(loss_fn, pool[:n]), opt)
        configs[f"+grad norms N={n}"] = make_step(
            jp.regularize(loss_fn, pool[:n], track_grad_norms=True), opt
        )

    opt_state = opt.init(params)
    for step in configs.values():  # compile everything first
        jax.block_until_ready(step(params, opt_state, batch))

    times: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, step in configs.items():
            p, s = params, opt_state
            start = time.perf_counter()
            for _ in range(args.steps):
                p, s, total = step(p, s, batch)
            jax.block_until_ready(total)
            times[name].append((time.perf_counter() - start) / args.steps)

    median = {name: statistics.median(t) for name, t in times.items()}
    bare = median["bare step"]
    print(
        f"jax {jax.__version__}, {jax.devices()[0].platform}, batch {BATCH}x{SEQ}, "
        f"vocab {VOCAB}; median of {args.rounds} interleaved rounds x "
        f"{args.steps} steps"
    )
    print()
    print("| configuration | ms / step | vs bare step |")
    print("|---|---:|---:|")
    for name, t in median.items():
        print(f"| {name} | {1e3 * t:.2f} | {t / bare:.2f}x |")
    print()
    print("| N | regularize / hand-written | grad norms / regularize |")
    print("|---:|---:|---:|")
    for n in (1, 4, 8):
        reg = median[f"regularize N={n}"]
        hand = median[f"hand-written N={n}"]
        tracked = median[f"+grad norms N={n}"]
        print(f"| {n} | {reg / hand:.2f}x | {tracked / reg:.2f}x |")


if __name__ == "__main__":
    main()
