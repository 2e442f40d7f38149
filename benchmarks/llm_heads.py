"""bf16 fused heads at LLM sizes: ours vs materialised logits vs Liger Kernel.

Reproduce (from the repository root):

    .venv/bin/python benchmarks/llm_heads.py           # CPU, toy sizes
    python benchmarks/llm_heads.py --sizes llm         # GPU: H = 4,096, V = 128,256
    python benchmarks/llm_heads.py --sizes llm --liger # + Liger, if installed

The step is ``jax.value_and_grad`` w.r.t. the student (x, w), bf16 inputs, with
a frozen bf16 teacher (rx, rw), as in distillation. Each contender runs in its
own process, so that its peak device memory is its own (``memory_stats`` where
the backend has them; XLA's compiled temporary size elsewhere). The table
reports medians, peak extra memory, ratios to ours, and the achieved matmul rate:
the step needs four [N, H] × [H, V] matmuls (student and teacher logits, dx, dw),
so TFLOP/s = 8 N H V / time, beside one bf16 matmul of that shape timed in the
same process. Liger rows (``--liger``) need torch, a CUDA device and
``liger_kernel``; without them they are skipped with the reason. Neither torch
nor Liger is a dependency of this project.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from _timing import compile_with_temp, median_seconds

SIZES = {"cpu": (64, 4096, [512, 2048]), "llm": (4096, 128256, [8192, 32768])}
JAX_CONTENDERS = ["ours_js", "ours_kl", "materialised_js", "matmul"]
LIGER_CONTENDERS = ["liger_js", "liger_js_f32acc"]


def run_jax(who, n, h, v, reps):
    import jax
    import jax.numpy as jnp

    import jaxpenalties as jp

    k = jax.random.split(jax.random.key(0), 4)
    x = (0.5 * jax.random.normal(k[0], (n, h))).astype(jnp.bfloat16)
    w = (0.02 * jax.random.normal(k[1], (h, v))).astype(jnp.bfloat16)
    rx = (0.5 * jax.random.normal(k[2], (n, h))).astype(jnp.bfloat16)
    rw = (0.02 * jax.random.normal(k[3], (h, v))).astype(jnp.bfloat16)

    def logprobs(a, b):
        return jax.nn.log_softmax(jnp.dot(a, b, preferred_element_type=jnp.float32))

    if who == "matmul":
        step = jax.jit(
            lambda a, b, c, d: jnp.dot(a, b, preferred_element_type=jnp.float32)
        )
    else:
        fn = {
            "ours_js": jp.fused_linear_js_divergence,
            "ours_kl": jp.fused_linear_kl_divergence,
            "materialised_js": lambda a, b, c, d: jp.js_divergence(
                logprobs(a, b), logprobs(c, d)
            ),
        }[who]
        step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))
    out = {}
    compiled, temp_bytes = compile_with_temp(step, x, w, rx, rw)
    if temp_bytes is not None:
        out["temp_MiB"] = temp_bytes / 2**20
    stats = jax.devices()[0].memory_stats
    base = stats()["bytes_in_use"] if stats() else 0
    jax.block_until_ready(compiled(x, w, rx, rw))
    if stats():
        out["peak_MiB"] = (stats()["peak_bytes_in_use"] - base) / 2**20
    out["ms"] = 1e3 * median_seconds(compiled, x, w, rx, rw, reps=reps)
    out["device"] = str(jax.devices()[0])
    return out


def run_liger(who, n, h, v, reps):
    try:
        import torch
        from liger_kernel.transformers import LigerFusedLinearJSD
    except ImportError as err:
        return {"skipped": f"needs torch and liger_kernel ({err.name} missing)"}
    if not torch.cuda.is_available():
        return {"skipped": "needs a CUDA device"}
    dev = "cuda"
    g = torch.Generator(device=dev).manual_seed(0)
    x = (torch.randn(n, h, device=dev, generator=g) * 0.5).bfloat16().requires_grad_()
    w = (torch.randn(v, h, device=dev, generator=g) * 0.02).bfloat16().requires_grad_()
    rx = (torch.randn(n, h, device=dev, generator=g) * 0.5).bfloat16()
    rw = (torch.randn(v, h, device=dev, generator=g) * 0.02).bfloat16()
    kwargs = {"accum_dtype": torch.float32} if who == "liger_js_f32acc" else {}
    loss_fn = LigerFusedLinearJSD(jsd_beta=0.5, temperature=1.0, **kwargs)

    def step():
        x.grad = w.grad = None
        loss_fn(x, w, rx, rw, None).backward()
        torch.cuda.synchronize()

    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    out = {"peak_MiB": (torch.cuda.max_memory_allocated() - base) / 2**20}
    out["ms"] = 1e3 * median_seconds(step, reps=reps)
    out["device"] = torch.cuda.get_device_name()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--liger", action="store_true")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    h, v, positions = SIZES[args.sizes]
    if args.one:
        who, n = args.one[0], int(args.one[1])
        runner = run_liger if who.startswith("liger") else run_jax
        print(json.dumps(runner(who, n, h, v, args.reps)))
        return

    contenders = JAX_CONTENDERS + (LIGER_CONTENDERS if args.liger else [])
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    print(f"bf16 value_and_grad w.r.t. the student, H = {h}, V = {v}")
    print()
    print("| contender | N | ms | × ours_js | peak extra MiB | TFLOP/s | matmul rate |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for n in positions:
        results = {}
        for who in contenders:
            cmd = [sys.executable, __file__, "--sizes", args.sizes, "--reps"]
            cmd += [str(args.reps), "--one", who, str(n)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            lines = proc.stdout.strip().splitlines()
            results[who] = (
                json.loads(lines[-1])
                if proc.returncode == 0 and lines
                else {"skipped": proc.stderr.strip().splitlines()[-1][:120]}
            )
        ours = results["ours_js"].get("ms")
        matmul = results["matmul"].get("ms")
        flops = 2 * n * h * v
        for who in contenders:
            r = results[who]
            if who == "matmul" or "ms" not in r:
                if "skipped" in r:
                    print(f"| {who} | {n} | skipped: {r['skipped']} | | | | |")
                continue
            mem = r.get("peak_MiB", r.get("temp_MiB", float("nan")))
            rate = 4 * flops / (r["ms"] * 1e-3) / 1e12
            peak = flops / (matmul * 1e-3) / 1e12
            print(
                f"| {who} | {n} | {r['ms']:.1f} | {r['ms'] / ours:.2f} | {mem:,.0f} "
                f"| {rate:.1f} | {rate / peak:.0%} of {peak:.1f} |"
            )


if __name__ == "__main__":
    main()
