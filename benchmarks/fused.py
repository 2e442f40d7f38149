"""Memory and speed of the fused (chunked) divergences against materialised logits.

Reproduce (from the repository root, CPU; about 4 minutes on 2 shared cores):

    .venv/bin/python benchmarks/fused.py            # all sections
    .venv/bin/python benchmarks/fused.py --mesh     # + per-device memory, 8 CPU devices

"Materialised" is ``jp.kl_divergence(log_softmax(x @ w), log_softmax(rx @ rw))``;
"fused" is ``jp.fused_linear_kl_divergence(x, w, rx, rw)`` with
``chunk_size=1024`` (bf16 heads at LLM sizes, and Liger: ``llm_heads.py``).
Memory is XLA's compiled temporary-buffer size
(``memory_analysis().temp_size_in_bytes``, compile only: nothing that large is
run) of ``jax.jit(jax.grad(f))`` or ``jax.jit(jax.value_and_grad(f))``. The
student (x, w) is differentiated and the teacher (rx, rw) is frozen, as in
distillation, unless the row says "all four". Timings are value-and-gradient
medians of interleaved rounds in one process.

Note on XLA:CPU: for ``jax.grad`` alone (loss value discarded) and 4,096 or
more positions, XLA:CPU compiles the *materialised* student gradient into one
YNNPACK fusion that streams over rows and keeps a single [positions, V] buffer
(checked against the process's peak RSS). Asking for the value too
(``value_and_grad``, what a training step logs) or for the teacher's gradient
brings back the usual 4-5 [positions, V] buffers. GPU and TPU backends have no
such fusion.

Targets (issue 5): at 16,384 positions, H = 256, V = 65,536 the fused temp memory
is ≤ 0.15 of the materialised one; fused memory grows < 10% from 8k to 64k
positions; fused wall time ≤ 1.3× materialised at 2,048 positions, V = 32k;
the fused distillation step (0.5 JS + 0.5 CE at hard labels) ≤ 1.0× the
materialised one there (issue 18).
"""

from __future__ import annotations

import argparse
import os
import sys

if "--mesh" in sys.argv:  # must precede the JAX import
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from _timing import compile_with_temp, interleaved_medians  # noqa: E402

import jaxpenalties as jp  # noqa: E402

H = 256
MIB = 2**20


def materialised(x, w, rx, rw):
    return jp.kl_divergence(jax.nn.log_softmax(x @ w), jax.nn.log_softmax(rx @ rw))


def fused(x, w, rx, rw):
    return jp.fused_linear_kl_divergence(x, w, rx, rw, chunk_size=1024)


def distillation_labels(n, v):
    return jax.random.randint(jax.random.key(1), (n,), 0, v)


def materialised_distillation(x, w, rx, rw):
    """0.5 JS + 0.5 CE at hard labels on materialised log-probs (frozen teacher)."""
    student = jax.nn.log_softmax(x @ w)
    teacher = jax.nn.log_softmax(jax.lax.stop_gradient(rx @ rw))
    labels = distillation_labels(*student.shape)
    ce = -jnp.mean(jnp.take_along_axis(student, labels[:, None], axis=-1))
    return 0.5 * jp.js_divergence(student, teacher) + 0.5 * ce


def fused_distillation(x, w, rx, rw):
    """The same step in one chunked pass (default chunk size)."""
    sg = jax.lax.stop_gradient
    labels = distillation_labels(x.shape[0], w.shape[1])
    loss, _ = jp.fused_linear_js_divergence(
        x, w, sg(rx), sg(rw), labels=labels, soft_weight=0.5, hard_weight=0.5
    )
    return loss


def fused_recompute(x, w, rx, rw):
    """The alternative design: logits recomputed in the backward pass (the
    per-position path, averaged)."""
    return jnp.mean(
        jp.fused_linear_kl_divergence(x, w, rx, rw, reduction="none", chunk_size=1024)
    )


def structs(n, v, h=H, shardings=(None,) * 4):
    shapes = [(n, h), (h, v), (n, h), (h, v)]
    return [
        jax.ShapeDtypeStruct(s, jnp.float32, sharding=sh)
        for s, sh in zip(shapes, shardings, strict=True)
    ]


def temp_mib(f, n, v, argnums=(0, 1), shardings=(None,) * 4, value=False):
    transform = jax.value_and_grad if value else jax.grad
    args = structs(n, v, shardings=shardings)
    return compile_with_temp(transform(f, argnums=argnums), *args)[1] / MIB


VARIANTS = (
    ("jax.grad, w.r.t. x, w", (0, 1), False),
    ("jax.value_and_grad, w.r.t. x, w", (0, 1), True),
    ("jax.grad, w.r.t. all four", (0, 1, 2, 3), False),
)


def headline():
    n, v = 16_384, 65_536
    print(f"## Temp memory, fwd+bwd, {n} positions, H={H}, V={v} (compile only)\n")
    print("| transform | materialised MiB | fused MiB | fused / materialised |")
    print("|---|---:|---:|---:|")
    for label, argnums, value in VARIANTS:
        m = temp_mib(materialised, n, v, argnums, value=value)
        f = temp_mib(fused, n, v, argnums, value=value)
        print(f"| {label} | {m:,.0f} | {f:,.0f} | {f / m:.3f} |")
    print(f"\n(one float32 [{n}, {v}] logits array is {n * v * 4 / MIB:,.0f} MiB)\n")


def flatness():
    v = 65_536
    print(f"## Fused temp memory vs positions (H={H}, V={v}, chunk 1024)\n")
    print("| positions | grad MiB | growth vs 8k | value_and_grad MiB | growth vs 8k |")
    print("|---:|---:|---:|---:|---:|")
    base = None
    for n in (8_192, 16_384, 32_768, 65_536):
        row = [temp_mib(fused, n, v), temp_mib(fused, n, v, value=True)]
        base = base or row
        cells = " | ".join(
            f"{r:,.1f} | {100 * (r / b - 1):+.1f}%"
            for r, b in zip(row, base, strict=True)
        )
        print(f"| {n:,} | {cells} |")
    print()


def table():
    print(f"## Temp memory, value_and_grad w.r.t. x, w, H={H} (compile only)\n")
    print("| V | positions | materialised MiB | fused MiB | ratio |")
    print("|---:|---:|---:|---:|---:|")
    for v in (32_768, 65_536, 131_072, 262_144):
        for n in (4_096, 16_384, 65_536):
            m = temp_mib(materialised, n, v, value=True)
            f = temp_mib(fused, n, v, value=True)
            print(f"| {v:,} | {n:,} | {m:,.0f} | {f:,.0f} | {f / m:.3f} |")
    print()


def timing(rounds):
    n, v = 2_048, 32_768
    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (n, H))
    w = jax.random.normal(keys[1], (H, v)) / 16
    rx = jax.random.normal(keys[2], (n, H))
    rw = jax.random.normal(keys[3], (H, v)) / 16
    contenders = {
        "materialised": materialised,
        "fused (grads in forward pass)": fused,
        "fused, recompute in backward": fused_recompute,
        "materialised distillation (0.5 JS + 0.5 CE)": materialised_distillation,
        "fused distillation (0.5 JS + 0.5 CE)": fused_distillation,
    }
    fns = {
        name: jax.jit(jax.value_and_grad(f, argnums=(0, 1)))
        for name, f in contenders.items()
    }
    values = {name: fn(x, w, rx, rw) for name, fn in fns.items()}  # compile + warm
    jax.block_until_ready(values)
    medians = interleaved_medians(fns, x, w, rx, rw, rounds=rounds)
    print(f"## Wall time, value + grad w.r.t. (x, w), {n} positions, H={H}, V={v}")
    print(f"   (medians of {rounds} interleaved rounds)\n")
    print("| contender | median s | vs materialised |")
    print("|---|---:|---:|")
    for name, med in medians.items():
        base = "materialised distillation" if "distillation" in name else "materialised"
        base = next(k for k in medians if k.startswith(base))
        print(f"| {name} | {med:.3f} | {med / medians[base]:.2f}× |")
    kl = [k for k in values if "distillation" not in k]
    ref = values["materialised"][0]
    drift = max(abs(float(values[k][0] - ref)) for k in kl)
    print(f"\n(largest value difference between contenders: {drift:.2e})\n")


def per_device():
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    n, v = 16_384, 65_536
    mesh = jax.make_mesh((4, 2), ("data", "model"))
    rows = NamedSharding(mesh, P("data"))
    cols = NamedSharding(mesh, P(None, "model"))
    shardings = (rows, cols, rows, cols)
    print(f"## Per-device temp memory, value_and_grad, {n} × {v}, H={H}\n")
    print("| | materialised MiB | fused MiB |")
    print("|---|---:|---:|")
    one = [temp_mib(f, n, v, value=True) for f in (materialised, fused)]
    sharded = [
        temp_mib(f, n, v, shardings=shardings, value=True)
        for f in (materialised, fused)
    ]
    print(f"| 1 device | {one[0]:,.0f} | {one[1]:,.0f} |")
    label = "4 (data) × 2 (model) mesh, per device"
    print(f"| {label} | {sharded[0]:,.0f} | {sharded[1]:,.0f} |\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mesh", action="store_true")
    args = parser.parse_args()
    print(
        f"jax {jax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} cpus\n"
    )
    headline()
    flatness()
    table()
    timing(args.rounds)
    if args.mesh:
        per_device()


if __name__ == "__main__":
    main()
